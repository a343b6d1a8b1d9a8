"""VIM-NAS: one ViT supernet for joint image and video recognition (METHODS.md §3; ``method=vim_nas``).

* train    — the weight-entangled ViT supernet (``space=vit_*``) on a joint data module (``data=joint_image_video``
             or any mapping of data sets), one head per data set: random subnets train their slices with AdamW,
             architecture parameters α step on validation batches (:mod:`nasx.training.vim`) → ``train/``
             (``last.ckpt`` holds the weights and α; ``alpha.json`` the final softmax(α)).
* search   — (1) perturbation-based selection on the α-mixed supernet [seed]: ``search/selection.json``;
             (2) constrained evolution under the budget (``search=constrained_evolution``, parameters by default)
             [seed Alg. 2], every candidate scored on every data set with inherited weights:
             ``search/history.jsonl``, ``state.pt``. ``search.final`` (evolution | selection) names the arch that is
             retrained; its record goes to ``search/best.json``.
* retrain  — that arch as a static multi-head ViT, trained jointly on the same data (``retrain=vim``) →
             ``retrain/model.pt``.
* evaluate — test top-1 on every data set (multi-view clips averaged), and the supernet's validation top-1 of both
             the selected and the evolved archs (as the search scored them) → ``results.json``, ``report.md``.
"""
from __future__ import annotations

import lightning as L
from omegaconf import DictConfig, OmegaConf

from nasx import artifacts
from nasx.arch import Arch
from nasx.errors import ConfigError
from nasx.evaluation.joint import JointEvaluator, top1_per_head
from nasx.methods.base import ResultsTable
from nasx.methods.spos import SPOS, check_int
from nasx.search.loop import run_search
from nasx.search.perturbation import perturbation_select
from nasx.search.plots import plot_search
from nasx.stages import chosen_arch, finished, fit, load_weights, optim_kwargs, read_artifact, read_torch
from nasx.training.joint import JointTraining
from nasx.training.vim import VIMTraining

FINALS = ("evolution", "selection")


def _plain(node) -> dict:
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else dict(node or {})


class VIMNAS(SPOS):
    name = "vim_nas"

    def __init__(self, alpha_batches: int = 4, selection_batches: int = 4, final: str = "evolution",
                 selection_embed: str = "largest_feasible"):
        if final not in FINALS:
            raise ConfigError(f"method.final must be one of {', '.join(FINALS)}, got {final!r}")
        if selection_embed not in ("largest_feasible", "largest", "smallest"):
            raise ConfigError(f"method.selection_embed must be largest_feasible, largest or smallest, got "
                              f"{selection_embed!r}")
        for key, v in (("alpha_batches", alpha_batches), ("selection_batches", selection_batches)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"method.{key} must be a positive integer, got {v!r}")
        self.alpha_batches, self.selection_batches = alpha_batches, selection_batches
        self.final, self.selection_embed = final, selection_embed

    # -- checks and set-up ---------------------------------------------------------------------------------------
    def check_config(self, cfg: DictConfig) -> None:
        for key, minimum in (("train.epochs", 0), ("retrain.epochs", 0)):
            check_int(cfg, key, minimum)
        if not str(OmegaConf.select(cfg, "space._target_", default="")).endswith("ViTSpace"):
            raise ConfigError("method vim_nas searches a ViT space: choose space=vit_cpu or space=vit_autoformer_t|s|b")
        if not str(OmegaConf.select(cfg, "data._target_", default="")).endswith("JointDataModule"):
            raise ConfigError("method vim_nas trains one supernet on several data sets: choose data=joint_image_video "
                              "or a nasx.data.joint.JointDataModule (one data set is allowed)")
        if cfg.retrain.get("init", "fresh") not in ("fresh", "inherited"):
            raise ConfigError(f"retrain.init must be 'fresh' or 'inherited', got '{cfg.retrain.init}'")

    def metrics(self, run) -> list[str]:
        return ["top1", *(f"top1/{n}" for n in run.data.names)]

    def setup(self, run) -> None:
        run.reward.check(self.metrics(run) + ["mflops", "params"])
        run.strategy = self.make_strategy(run)
        saved = run.dir / self.search_dir / "state.pt"
        if saved.exists():
            run.strategy.load_state_dict(read_torch(saved)["strategy"])

    # -- pieces --------------------------------------------------------------------------------------------------
    def _alpha(self, run):
        from nasx.spaces.vit import ArchParameters

        return ArchParameters(run.space)

    def _validation(self, run, n_batches: int | None) -> dict[str, list]:
        """The first ``n_batches`` (all: None) validation batches of every data set, as the model takes them."""
        run.data.setup("fit")
        out = {}
        for name, loader in zip(run.data.names, run.data.val_dataloader()):
            batches = []
            for x, y in loader:
                batches.append((run.data._as_video(x), y))
                if n_batches is not None and len(batches) >= n_batches:
                    break
            out[name] = batches
        return out

    def _test(self, run) -> dict[str, list]:
        run.data.setup("test")
        return {name: [(run.data._as_video(x) if x.dim() == 4 else x, y) for x, y in loader]
                for name, loader in zip(run.data.names, run.data.test_dataloader())}

    def _supernet_and_alpha(self, run):
        supernet, alpha = run.space.supernet(), self._alpha(run)
        state = read_torch(run.dir / "train" / "last.ckpt")["state_dict"]
        supernet.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        alpha.load_state_dict({k.removeprefix("alpha."): v for k, v in state.items() if k.startswith("alpha.")})
        return supernet.to(run.device).eval(), alpha.to(run.device)

    # -- stages --------------------------------------------------------------------------------------------------
    def train(self, run) -> None:
        stage_dir = run.dir / "train"
        if finished(stage_dir, "train"):
            return
        c = run.cfg.train
        L.seed_everything(run.cfg.seed, workers=True, verbose=False)
        alpha_batches = self._validation(run, self.alpha_batches)
        supernet = run.space.supernet()
        alpha = self._alpha(run)
        system = VIMTraining(supernet, run.space, alpha, run.data.names, seed=run.cfg.seed,
                             label_smoothing=_plain(c.get("label_smoothing")),
                             alpha_lr=c.alpha_lr, alpha_weight_decay=c.alpha_weight_decay,
                             alpha_start_epoch=c.get("alpha_start_epoch", 0),
                             alpha_batches=[alpha_batches[n] for n in run.data.names],
                             augment=_plain(c.get("augment")),
                             checkpoint_dir=str(stage_dir), **optim_kwargs(c))
        trainer = fit(run, system, stage_dir, c.epochs)
        if trainer.global_rank == 0:
            weights = {k: v.tolist() for k, v in alpha.weights().items()}
            artifacts.write_json(stage_dir / "alpha.json", {"softmax": weights, "space": run.space.name})
            artifacts.write_json(stage_dir / "done.json", {"epochs": c.epochs, "global_step": trainer.global_step,
                                                           "world_size": trainer.world_size})

    def _selection_embed(self, run) -> int:
        """The embedding-dim gene of the selected arch: α has no embedding dim (its logits are per layer) [nasx]."""
        n = len(run.space.embed_dims)
        if self.selection_embed == "largest":
            return n - 1
        if self.selection_embed == "smallest":
            return 0
        for e in reversed(range(n)):  # the largest whose smallest arch meets the budget
            smallest = run.space.arch([e] + [0] * (len(run.space.genes) - 1))
            if run.budget.admits(run.space.cost(smallest)):
                return e
        return 0

    def search(self, run) -> dict:
        out = run.dir / "search"
        supernet, alpha = self._supernet_and_alpha(run)
        validation = self._validation(run, None)
        evaluator = JointEvaluator(supernet, validation, run.data.names, run.device)
        selection_path = out / "selection.json"
        if selection_path.exists():
            selection = read_artifact(selection_path)
        else:
            batches = {n: b[:self.selection_batches] for n, b in validation.items()}
            arch, records = perturbation_select(supernet, alpha, run.space, batches, self._selection_embed(run),
                                                names=run.data.names)
            cost = run.space.cost(arch)
            selection = {"arch": arch.to_dict(), "arch_str": str(arch), "describe": run.space.describe(arch),
                         "mflops": cost.mflops, "params": cost.params, "within_budget": run.budget.admits(cost),
                         "metrics": evaluator.evaluate(arch), "decisions": records}
            artifacts.write_json(selection_path, selection)
        plot = lambda gen, records: plot_search(records, out / "search.png", run.budget.mflops,  # noqa: E731
                                                title=f"{run.cfg.name}: {run.reward!r}")
        result = run_search(run.strategy, run.space, evaluator, run.reward, run.budget, out,
                            progress=run.cfg.progress, on_generation=plot)
        plot(None, result.records)
        if self.final == "selection":
            rec = {**selection, "reward": run.reward.scalar({**selection["metrics"], "mflops": selection["mflops"],
                                                             "params": selection["params"]}), "source": "selection"}
            artifacts.write_json(out / "best.json", rec)
            return rec
        return result.best

    def retrain(self, run) -> None:
        arch, _ = chosen_arch(run)
        stage_dir = run.dir / "retrain"
        if finished(stage_dir, "retrain"):
            return
        c = run.cfg.retrain
        L.seed_everything(run.cfg.seed + 1, workers=True, verbose=False)
        if c.init == "inherited":
            model = load_weights(run.space.supernet(), run.dir / "train" / "last.ckpt", "retrain").extract(arch)
        else:
            model = run.space.supernet().extract(arch)  # a fresh supernet's initialisation, sliced
        system = JointTraining(model, run.data.names, checkpoint_dir=str(stage_dir), loss=self.retrain_loss(run),
                               **optim_kwargs(c))
        fit(run, system, stage_dir, c.epochs, distributed=False)
        artifacts.torch_save({"arch": arch.to_dict(), "state_dict": model.state_dict()}, stage_dir / "model.pt")
        artifacts.write_json(stage_dir / "done.json", {"epochs": c.epochs, "arch": arch.to_dict()})

    def evaluate(self, run) -> dict:
        arch, best = chosen_arch(run)
        names = run.data.names
        model = run.space.supernet().extract(arch)
        model.load_state_dict(read_torch(run.dir / "retrain" / "model.pt")["state_dict"])
        test = top1_per_head(model.to(run.device).eval(), self._test(run), names)
        found = {}  # both archs as the search scored them (validation top-1 per data set with inherited weights)
        selection_path = run.dir / "search" / "selection.json"
        history = run.dir / "search" / "best.json"
        sources = {"selection": selection_path} if selection_path.exists() else {}
        if self.final == "evolution" and history.exists():
            sources["evolution"] = history
        for source, path in sources.items():
            rec = read_artifact(path)
            a = run.space.validate(Arch.from_dict(rec["arch"], where=str(path)), where=str(path))
            cost = run.space.cost(a)
            found[source] = {"arch": a.to_dict(), "arch_str": str(a), "describe": run.space.describe(a),
                             "params": cost.params, "mflops": cost.mflops, "supernet_val": rec["metrics"]}
        results = {**self.summary(run, arch, best), "datasets": names, "final": self.final, "found": found,
                   "retrain": {"test_top1": {n: test[f"top1/{n}"] for n in names}, "test_top1_mean": test["top1"],
                               "epochs": run.cfg.retrain.epochs, "init": run.cfg.retrain.init}}
        self.write_results(run, results)
        return results

    # -- output --------------------------------------------------------------------------------------------------
    def table(self, r: dict) -> ResultsTable:
        rows = []
        for source, f in r["found"].items():
            sv = f["supernet_val"]
            rows.append([f"{source} (supernet, val)", f"{f['params'] / 1e6:.3f} M",
                         *(f"{100 * sv[f'top1/{n}']:.1f} %" for n in r["datasets"])])
        rows.append([f"{r['final']}, retrained (test)", f"{r['params'] / 1e6:.3f} M",
                     *(f"{100 * r['retrain']['test_top1'][n]:.1f} %" for n in r["datasets"])])
        return ResultsTable(f"nasx · {r['experiment']} · VIM-NAS", ["arch", "params", *r["datasets"]], rows,
                            notes=[f"{k}: {f['describe']}" for k, f in r["found"].items()])

    def report(self, run, r: dict) -> str:
        t = self.table(r)
        lines = [f"# nasx run: {r['experiment']} (VIM-NAS)", "",
                 f"- space: `{r['space']}`, budget: {r['budget']}, reward: `{r['reward']}`, seed: {r['seed']}",
                 *(f"- {note}" for note in t.notes), "",
                 "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns),
                 *("| " + " | ".join(row) + " |" for row in t.rows), ""]
        if (run.dir / "search" / "search.png").exists():
            lines += ["![search](search/search.png)", ""]
        return "\n".join(lines)
