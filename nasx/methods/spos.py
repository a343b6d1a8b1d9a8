"""SPOS, the plain one-shot pipeline (``method=spos``; ``experiment=quickstart``), and the base most methods extend.

* train    — uniform single-path supernet training with warm-up (:func:`nasx.stages.train_supernet`) → ``train/``.
* search   — the configured strategy under the budget: each candidate extracted, BN-recalibrated and scored by the
             method's evaluator → ``search/history.jsonl``, ``state.pt``, ``best.json``, ``search.png``.
* retrain  — the winner as a standalone static network → ``retrain/model.pt``.
* evaluate — its test accuracy (and that of the same arch with inherited supernet weights) → ``results.json``,
             ``report.md``.
"""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nasx import artifacts
from nasx.arch import Arch
from nasx.errors import ConfigError
from nasx.evaluation import ClassificationEvaluator, classification_metrics, to_device
from nasx.evaluation.base import Evaluator
from nasx.losses import Loss, make_terms, needs_reference
from nasx.methods.base import Method, ResultsTable
from nasx.search.loop import run_search
from nasx.search.plots import plot_search
from nasx.stages import (read_torch, chosen_arch, classification_evaluator, load_model, load_supernet, loss_of, train_standalone,
                         train_supernet)


def check_int(cfg: DictConfig, key: str, minimum: int) -> None:
    v = OmegaConf.select(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{key} must be {'a positive' if minimum else 'a non-negative'} integer, got {v!r}")


class SPOS(Method):
    name = "spos"
    parallel_search = True  # CMP-NAS and MixPath inherit it

    # -- checks and set-up ---------------------------------------------------------------------------------------
    def check_config(self, cfg: DictConfig) -> None:
        for key, minimum in (("train.epochs", 0), ("retrain.epochs", 0), ("search.bn_batches", 1),
                             ("search.bn_batch_size", 1)):
            check_int(cfg, key, minimum)
        w = cfg.train.warmup_epochs
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= cfg.train.epochs:
            raise ConfigError(f"train.warmup_epochs must be an integer in 0..train.epochs ({cfg.train.epochs}), "
                              f"got {w!r}")
        if cfg.retrain.init not in ("fresh", "inherited"):
            raise ConfigError(f"retrain.init must be 'fresh' or 'inherited', got '{cfg.retrain.init}'")

    def setup(self, run) -> None:
        run.reward.check(self.metrics(run) + ["mflops", "params"])
        self.check_loss(run, "train")
        self.check_loss(run, "retrain")
        run.strategy = self.make_strategy(run)
        saved = run.dir / self.search_dir / "state.pt"
        if saved.exists():  # a resumed run: a state of another strategy or space fails now, not after training
            run.strategy.load_state_dict(read_torch(saved)["strategy"])

    search_dir = "search"  # where the main search writes history.jsonl and state.pt, under the run directory

    def metrics(self, run) -> list[str]:
        """What this method's evaluator produces (a reward may name only these and the cost)."""
        return list(ClassificationEvaluator.metrics)

    def make_strategy(self, run, space=None, budget=None, seed: int | None = None):
        """The search strategy of ``search.strategy`` (on the run's space, budget and seed unless others are given),
        built now so that bad hyper-parameters fail before training; a multi-objective strategy is told how many
        objectives the reward has."""
        factory = instantiate(run.cfg.search.strategy, _partial_=True)
        needs = getattr(factory.func, "min_objectives", 1)
        extra = {}
        if needs > 1:
            if run.reward.n_objectives < needs:
                raise ConfigError(f"search.strategy {factory.func.__name__} optimises several objectives: choose a "
                                  f"multi-objective reward such as reward=acc_mflops")
            extra["n_objectives"] = run.reward.n_objectives
        try:
            return factory(space=run.space if space is None else space, budget=run.budget if budget is None else budget,
                           seed=run.cfg.seed if seed is None else seed, **extra)
        except TypeError as e:  # a key of another strategy (e.g. search=random under evolution's settings)
            raise ConfigError(f"search.strategy: {factory.func.__name__} refuses its settings ({e}); remove the "
                              f"key with ~search.strategy.<key>") from None

    has_reference = False  # CMP-NAS's gallery, REG-NAS's old model: a frozen model loss terms may use

    def reference(self, run):
        """The method's reference model, frozen (trained or loaded the first time it is asked for)."""
        raise ConfigError(f"method {self.name} has no reference model")

    def check_loss(self, run, group: str) -> None:
        """``<group>.loss`` is valid, and uses a reference model only where the method has one."""
        terms = make_terms(run.cfg[group].get("loss"), f"{group}.loss")
        if needs_reference(terms) and not self.has_reference:
            user = next(n for n, t in terms.items() if t.needs_reference and t.weight > 0)
            raise ConfigError(f"{group}.loss.{user} needs a reference model, which method {self.name} does not have "
                              f"(CMP-NAS's gallery model: method=cmp_nas)")
        Loss(terms, reference=torch.nn.Identity() if needs_reference(terms) else None, where=f"{group}.loss")

    def train_loss(self, run) -> Loss:
        return loss_of(run.cfg.train, "train", lambda: self.reference(run))

    def retrain_loss(self, run) -> Loss:
        return loss_of(run.cfg.retrain, "retrain", lambda: self.reference(run))

    # -- stages --------------------------------------------------------------------------------------------------
    def train(self, run) -> None:
        train_supernet(run, self.train_loss(run))

    def evaluator(self, run) -> Evaluator:
        return classification_evaluator(run)

    def search(self, run) -> dict:
        out = run.dir / "search"
        plot = lambda gen, records: plot_search(records, out / "search.png", run.budget.mflops,  # noqa: E731
                                                title=f"{run.cfg.name}: {run.reward!r}")
        result = run_search(run.strategy, run.space, self.evaluator(run), run.reward, run.budget, out,
                            progress=run.cfg.progress, on_generation=plot)
        plot(None, result.records)
        return result.best

    def retrain(self, run) -> None:
        train_standalone(run, chosen_arch(run)[0], "retrain", self.retrain_loss(run))

    def evaluate(self, run) -> dict:
        arch, best = chosen_arch(run)
        run.data.setup("test")
        model = load_model(run, arch, "retrain").to(run.device).eval()
        test = classification_metrics(model, to_device(run.data.test_dataloader(), run.device))
        val = classification_metrics(model, to_device(run.data.val_dataloader(), run.device))
        results = {**self.summary(run, arch, best),
                   "retrain": {"test_top1": test["top1"], "test_top5": test["top5"], "val_top1": val["top1"],
                               "epochs": run.cfg.retrain.epochs, "init": run.cfg.retrain.init}}
        if (run.dir / "train" / "last.ckpt").exists():  # the same arch with inherited weights, for reference
            c = run.cfg.search
            inherited = ClassificationEvaluator(load_supernet(run), run.data.calibration_batches(
                c.bn_batches, c.bn_batch_size), [], device=run.device).model(arch)
            results["supernet_test_top1"] = classification_metrics(
                inherited, to_device(run.data.test_dataloader(), run.device))["top1"]
        self.write_results(run, results)
        return results

    def summary(self, run, arch: Arch, best: dict | None) -> dict:
        """The fields every single-arch results.json starts with."""
        cost = run.space.cost(arch)
        return {"experiment": run.cfg.name, "method": self.name, "seed": run.cfg.seed, "space": run.space.name,
                "arch": arch.to_dict(), "arch_str": str(arch), "mflops": cost.mflops, "params": cost.params,
                "budget": str(run.budget), "reward": repr(run.reward),
                "search_reward": best["reward"] if best else None,
                "search_metrics": best["metrics"] if best else None}

    def write_results(self, run, results: dict) -> None:
        artifacts.write_json(run.dir / "results.json", results)
        artifacts.write_text(run.dir / "report.md", self.report(run, results))

    # -- output --------------------------------------------------------------------------------------------------
    def table(self, r: dict) -> ResultsTable:
        rows = [["arch", r["arch_str"]], ["MFLOPs", f"{r['mflops']:.3f}"], ["params", f"{r['params']:,}"]]
        if r.get("search_reward") is not None:
            rows.append(["search reward (supernet, val)", f"{r['search_reward']:.4f}"])
        if "supernet_test_top1" in r:
            rows.append(["test top-1, inherited weights", f"{100 * r['supernet_test_top1']:.2f} %"])
        rows.append(["test top-1, retrained", f"{100 * r['retrain']['test_top1']:.2f} %"])
        return ResultsTable(f"nasx · {r['experiment']}", ["metric", "value"], rows)

    def report(self, run, r: dict) -> str:
        describe = getattr(run.space, "describe", None)
        lines = [f"# nasx run: {r['experiment']}", "",
                 f"- space: `{r['space']}`, budget: {r['budget']}, reward: `{r['reward']}`, seed: {r['seed']}",
                 f"- arch: `{r['arch_str']}`"]
        if describe:
            lines.append(f"- layers: {describe(run.space.validate(Arch.from_dict(r['arch'])))}")
        lines += ["", "| metric | value |", "|---|---|",
                  f"| MFLOPs (multiply-accumulates) | {r['mflops']:.3f} |",
                  f"| params | {r['params']:,} |"]
        if r["search_reward"] is not None:
            lines.append(f"| search reward (supernet, val) | {r['search_reward']:.4f} |")
        if "supernet_test_top1" in r:
            lines.append(f"| test top-1, inherited weights | {100 * r['supernet_test_top1']:.2f} % |")
        lines += [f"| test top-1, retrained ({r['retrain']['init']}, {r['retrain']['epochs']} epochs) | "
                  f"{100 * r['retrain']['test_top1']:.2f} % |",
                  f"| test top-5, retrained | {100 * r['retrain']['test_top5']:.2f} % |", ""]
        if (run.dir / "search" / "search.png").exists():
            lines += ["![search](search/search.png)", ""]
        return "\n".join(lines)
