"""REG-NAS: a family of regression-free models from one once-for-all supernet (``method=reg_nas``, METHODS.md §4).

* train    — progressive shrinking (:class:`nasx.training.ofa.ProgressiveShrinking`, ``train.phases``) → ``train/``;
             or, with ``supernet.checkpoint=<a run's train/last.ckpt>``, that trained supernet.
* search   — the family A1 < A2 < … under ``method.budgets`` (MFLOPs): A1 with R0 (``method.first_reward``, top-1);
             each next member with ``reward`` (R2 = λ1·top-1 − λ2·NFR(A_{i−1} → A_i) on the validation split) inside
             the containment constraint of A_{i−1} (CAS, :mod:`nasx.search.containment`; ``method.containment:
             false`` searches without it) → ``search/member_<i>/`` (a resumable search each) and ``search/family.json``.
* retrain  — none for REG-NAS: the members keep their inherited supernet weights (they share them). The baselines of
             Tab. 2 [seed] train each member's arch standalone from scratch (``retrain.*``) into
             ``retrain/member_<i>/`` (A1, the reference, keeps its inherited weights as in the paper's table):
             ``method.models=independent`` with the retrain loss, ``method.models=focal_distillation`` with PCT's
             focal distillation (``method.fd``) from the previous member's model added.
* evaluate — every member's test top-1 and the pairwise NFR matrix on the test split, each with a paired bootstrap
             interval over the test images → ``results.json``, ``report.md``, ``family.png``.

R0 / R2 with λ1 = λ2 = 1 [seed Eq. 4]; ``reward.lambda2=`` sweeps Tab. 1. ``method.variant=ws_r0`` is Tab. 2's "weight
sharing" row: every member searched with R0 alone, without containment, inherited weights. ``method.family=<a run's
search/family.json>`` takes that family's archs instead of searching (how the independent and focal-distillation rows
train exactly the REG-NAS archs) [nasx]. Members are scored like every candidate
(extracted, BN recalibrated on ``search.bn_batches`` training batches), the reference included.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nasx import artifacts
from nasx.arch import Arch, Budget
from nasx.errors import ConfigError, NasxError
from nasx.evaluation import to_device
from nasx.evaluation.classification import scored_predictions
from nasx.evaluation.flips import FlipEvaluator
from nasx.methods.base import ResultsTable
from nasx.methods.spos import SPOS
from nasx.metrics.flips import flip_report, nfr_matrix
from nasx.rewards import make_reward
from nasx.search.containment import ContainingSpace, CostFloorSpace
from nasx.search.loop import run_search
from nasx.search.plots import plot_search
from nasx.losses import FocalDistillation, Loss, make_terms
from nasx.stages import (fit, finished, load_model, load_weights, loss_of, optim_kwargs, read_artifact,
                         train_standalone)
from nasx.training.ofa import ProgressiveShrinking, parse_phases

log = logging.getLogger("nasx")


class REGNAS(SPOS):
    name = "reg_nas"
    parallel_search = True

    VARIANTS = ("reg_nas", "ws_r0")
    MODELS = ("inherited", "independent", "focal_distillation")

    def __init__(self, budgets=(), first_reward=None, containment: bool = True, bootstrap: int = 2000,
                 variant: str = "reg_nas", models: str = "inherited", family: str | None = None, fd=None,
                 cost_floor: float = 0.0):
        self.budgets = [float(b) for b in (budgets or [])]
        self.cost_floor = cost_floor
        self.first_reward_cfg = first_reward
        self.variant, self.models = str(variant), str(models)
        self.containment = bool(containment) and self.variant == "reg_nas"
        self.bootstrap = int(bootstrap)
        self.family_path = Path(family) if family else None
        self.fd = dict(fd or {"weight": 1.0, "alpha": 1.0, "beta": 5.0, "temperature": 100.0})
        self._inherited: FlipEvaluator | None = None  # built once, when a member's inherited model is first needed

    # -- checks ------------------------------------------------------------------------------------------------------
    def check_config(self, cfg: DictConfig) -> None:
        if len(self.budgets) < 2:
            raise ConfigError(f"method.budgets must list at least two MFLOPs budgets (A1 < A2 < …), got {self.budgets}")
        if any(b <= a for a, b in zip(self.budgets, self.budgets[1:])):
            raise ConfigError(f"method.budgets must increase (A1 < A2 < …), got {self.budgets}")
        if self.variant not in self.VARIANTS:
            raise ConfigError(f"method.variant must be one of {', '.join(self.VARIANTS)}, got '{self.variant}'")
        if self.models not in self.MODELS:
            raise ConfigError(f"method.models must be one of {', '.join(self.MODELS)}, got '{self.models}'")
        if self.family_path is not None and not self.family_path.is_file():
            raise ConfigError(f"method.family: no such file '{self.family_path}' (a REG-NAS run's search/family.json)")
        if isinstance(self.cost_floor, bool) or not isinstance(self.cost_floor, (int, float)) \
                or not 0 <= self.cost_floor < 1:
            raise ConfigError(f"method.cost_floor must be a fraction of each member's budget in [0, 1), got "
                              f"{self.cost_floor!r}")
        if self.bootstrap < 100:
            raise ConfigError(f"method.bootstrap must be >= 100 resamples, got {self.bootstrap}")
        for key, minimum in (("train.epochs", 0), ("search.bn_batches", 1), ("search.bn_batch_size", 1)):
            v = OmegaConf.select(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ConfigError(f"{key} must be an integer >= {minimum}, got {v!r}")

    def setup(self, run) -> None:
        space = run.space
        if not hasattr(space, "sample_elastic"):
            raise ConfigError(f"method=reg_nas needs a once-for-all space (space=ofa_mbv3 or ofa_mbv3_cpu), got "
                              f"'{space.name}'")
        phases = parse_phases(OmegaConf.to_container(run.cfg.train.phases), space)
        total = sum(p.epochs for p in phases)
        if total != run.cfg.train.epochs:
            raise ConfigError(f"train.phases last {total} epochs in all but train.epochs is {run.cfg.train.epochs}: "
                              f"make them agree")
        self.phases = phases
        ckpt = OmegaConf.select(run.cfg, "supernet.checkpoint")
        self.first_reward = make_reward(self.first_reward_cfg or {"name": "r0", "weights": {"top1": 1.0}})
        for reward in (self.first_reward, run.reward):
            reward.check(list(FlipEvaluator.metrics) + ["mflops", "params"])
        if getattr(run.reward, "multi", False):
            raise ConfigError("reward: REG-NAS searches each member with one scalar reward (reward=r2)")
        self.check_loss(run, "train")
        if self.models != "inherited":
            if self.family_path is None or not ckpt:
                raise ConfigError(f"method.models={self.models} trains the archs of a searched family against its A1 "
                                  f"with inherited weights: give method.family=<run>/search/family.json and "
                                  f"supernet.checkpoint=<run>/train/last.ckpt")
            self.check_loss(run, "retrain")
            try:
                FocalDistillation(**self.fd)  # bad method.fd values fail now
            except (ConfigError, TypeError) as e:
                raise ConfigError(f"method.fd: {str(e).removeprefix('loss.fd.')}") from None
        space.check_feasible(Budget(mflops=self.budgets[0]))
        if ckpt:
            if not Path(ckpt).is_file():
                raise ConfigError(f"supernet.checkpoint: no such file '{ckpt}' (a REG-NAS run's train/last.ckpt)")
        self.make_strategy(run, space, Budget(mflops=self.budgets[0]))  # bad settings fail now

    # -- train -------------------------------------------------------------------------------------------------------
    def supernet_checkpoint(self, run):
        ckpt = OmegaConf.select(run.cfg, "supernet.checkpoint")
        return Path(ckpt) if ckpt else run.dir / "train" / "last.ckpt"

    def train(self, run) -> None:
        if OmegaConf.select(run.cfg, "supernet.checkpoint"):
            log.info("train: the supernet of %s (supernet.checkpoint)", self.supernet_checkpoint(run))
            return
        stage_dir = run.dir / "train"
        if finished(stage_dir, "train"):
            return
        import lightning as L

        c = run.cfg.train
        L.seed_everything(run.cfg.seed, workers=True, verbose=False)
        system = ProgressiveShrinking(run.space.supernet(), run.space, self.phases, seed=run.cfg.seed,
                                      kd_ratio=c.get("kd_ratio", 1.0),
                                      sort_channels=c.get("sort_channels", True), checkpoint_dir=str(stage_dir),
                                      loss=loss_of(c, "train"), **optim_kwargs(c))
        trainer = fit(run, system, stage_dir, c.epochs)
        if trainer.global_rank == 0:
            artifacts.write_json(stage_dir / "done.json", {"epochs": c.epochs, "global_step": trainer.global_step,
                                                           "phases": [p.name for p in self.phases]})

    def supernet(self, run):
        return load_weights(run.space.supernet(), self.supernet_checkpoint(run), "search")

    def evaluator(self, run, reference: Arch | None = None, split: str = "val", supernet=None) -> FlipEvaluator:
        c = run.cfg.search
        run.data.setup("fit")
        batches = list(run.data.val_dataloader())
        return FlipEvaluator(supernet if supernet is not None else self.supernet(run),
                             run.data.calibration_batches(c.bn_batches, c.bn_batch_size), batches,
                             reference=reference, device=run.device)

    # -- search: the family ---------------------------------------------------------------------------------------------
    def member_space(self, run, reference: Arch | None, i: int, budget: Budget | None = None):
        space = run.space
        if self.cost_floor > 0 and budget is not None and budget.mflops is not None:
            space = CostFloorSpace(space, self.cost_floor * budget.mflops, budget)
        if reference is None or not self.containment:
            return space
        return ContainingSpace(space, reference, label=f"A{i} (the family's previous member)")

    def search(self, run) -> dict:
        out = run.dir / "search"
        if self.family_path is not None:  # the archs of another run's family (the baselines train them)
            family = read_artifact(self.family_path)
            archs = [run.space.validate(Arch.from_dict(m["arch"]), where=str(self.family_path))
                     for m in family["members"]]
            family = {**family, "source": str(self.family_path)}
            artifacts.write_json(out / "family.json", family)
            log.info("search: the family of %s (%s)", self.family_path, ", ".join(map(str, archs)))
            return family
        supernet = self.supernet(run)
        members: list[dict] = []
        reference: Arch | None = None
        for i, mflops in enumerate(self.budgets):
            member_dir = out / f"member_{i + 1}"
            budget = Budget(mflops=mflops)
            space = self.member_space(run, reference, i, budget)
            reward = self.first_reward if reference is None or self.variant == "ws_r0" else run.reward
            strategy = self.make_strategy(run, space, budget, run.cfg.seed + i)
            evaluator = self.evaluator(run, reference, supernet=supernet)
            title = f"{run.cfg.name}: A{i + 1} ≤ {mflops:g} MFLOPs, {reward!r}"
            plot = lambda gen, records, d=member_dir, t=title, b=mflops: plot_search(  # noqa: E731
                records, d / "search.png", b, title=t)
            result = run_search(strategy, space, evaluator, reward, budget, member_dir, progress=run.cfg.progress,
                                on_generation=plot)
            plot(None, result.records)
            best = result.best
            if best is None:
                raise NasxError(f"search of A{i + 1}: no candidate was evaluated under {budget}")
            arch = run.space.validate(Arch.from_dict(best["arch"]))
            if reference is not None and self.containment and not run.space.contains(arch, reference):
                raise NasxError(f"A{i + 1} {arch} does not contain A{i} {reference}: containment repair failed")
            cost = run.space.cost(arch)
            members.append({"member": f"A{i + 1}", "budget_mflops": mflops, "arch": arch.to_dict(),
                            "arch_str": str(arch), "layers": run.space.describe(arch), "mflops": cost.mflops,
                            "params": cost.params, "reward": repr(reward), "search_reward": best["reward"],
                            "val_metrics": best["metrics"],
                            "contains_previous": None if reference is None else run.space.contains(arch, reference),
                            "cost_floor_mflops": self.cost_floor * mflops if self.cost_floor > 0 else None})
            reference = arch
        family = {"experiment": run.cfg.name, "budgets": self.budgets, "containment": self.containment,
                  "variant": self.variant, "members": members}
        artifacts.write_json(out / "family.json", family)
        artifacts.write_json(out / "best.json", {"arch": members[-1]["arch"], "reward": members[-1]["search_reward"],
                                                 "metrics": members[-1]["val_metrics"]})
        return family

    # -- retrain: the baselines' standalone models -----------------------------------------------------------------------
    def retrain(self, run) -> None:
        """The baselines [seed Tab. 2]: A1 stays the reference with its inherited weights (the paper's "MB-R0-150" is
        the OFA model); every later member's arch is trained standalone from scratch, with focal distillation from
        the previous member's model (A1 inherited, later ones as this row trained them) for ``focal_distillation``."""
        if self.models == "inherited":
            log.info("retrain: the members keep their inherited supernet weights (method.models=inherited)")
            return
        archs = self.archs(run)
        for i, arch in enumerate(archs[1:], start=1):
            terms = make_terms(run.cfg.retrain.get("loss"), "retrain.loss")
            reference = None
            if self.models == "focal_distillation":
                terms["fd"] = FocalDistillation(**self.fd)
                reference = self.member_model(run, archs, i - 1)
            train_standalone(run, arch, f"retrain/member_{i + 1}", Loss(terms, reference, "retrain.loss"))

    def member_model(self, run, archs: list[Arch], i: int):
        """Member i's model as this run evaluates it: inherited (BN recalibrated) for REG-NAS, weight sharing and A1;
        the retrained one otherwise."""
        if self.models == "inherited" or i == 0:
            if self._inherited is None:
                self._inherited = self.evaluator(run)
            return self._inherited.model(archs[i])
        return load_model(run, archs[i], f"retrain/member_{i + 1}").to(run.device).eval()

    def archs(self, run) -> list[Arch]:
        return [run.space.validate(Arch.from_dict(m["arch"])) for m in self.family(run)["members"]]

    # -- evaluate -------------------------------------------------------------------------------------------------------
    def family(self, run) -> dict:
        path = run.dir / "search" / "family.json"
        if not path.exists():
            raise NasxError(f"evaluate needs the searched family at '{path}': run the search stage first")
        return read_artifact(path)

    def evaluate(self, run) -> dict:
        family = self.family(run)
        archs = self.archs(run)
        run.data.setup("test")
        test = to_device(run.data.test_dataloader(), run.device)
        preds = [scored_predictions(self.member_model(run, archs, i), test)[1].cpu() for i in range(len(archs))]
        y = torch.cat([b[1] for b in test]).cpu()
        # per-sample predictions, for paired comparisons across runs (experiments/reg_nas/tab2.py)
        artifacts.torch_save({"labels": y, "predictions": torch.stack(preds), "archs": [str(a) for a in archs]},
                             run.dir / "test_predictions.pt")
        pairs = []
        for i in range(1, len(archs)):
            rep = flip_report(preds[i - 1], {"new": preds[i]}, y, resamples=self.bootstrap, seed=run.cfg.seed)
            pairs.append({"from": f"A{i}", "to": f"A{i + 1}", **{k: rep["new"][k] for k in ("nfr", "pfr", "top1")},
                          "reference_top1": rep["reference"]["top1"]})
        members = []
        for i, m in enumerate(family["members"]):
            own = flip_report(preds[i], {}, y, resamples=self.bootstrap, seed=run.cfg.seed)["reference"]["top1"]
            members.append({**m, "test_top1": own})
        results = {"experiment": run.cfg.name, "method": self.name, "seed": run.cfg.seed, "space": run.space.name,
                   "reward": repr(run.reward), "first_reward": repr(self.first_reward),
                   "containment": self.containment, "variant": self.variant, "models": self.models,
                   "family_source": family.get("source"), "test_samples": int(len(y)), "members": members,
                   "consecutive": pairs, "nfr_matrix": nfr_matrix(preds, y)}
        self.plot(run, results)
        self.write_results(run, results)
        return results

    def plot(self, run, r: dict) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [m["member"] for m in r["members"]]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        x = [m["mflops"] for m in r["members"]]
        t = [100 * m["test_top1"]["value"] for m in r["members"]]
        err = [[100 * (m["test_top1"]["value"] - m["test_top1"]["lo"]) for m in r["members"]],
               [100 * (m["test_top1"]["hi"] - m["test_top1"]["value"]) for m in r["members"]]]
        a1.errorbar(x, t, yerr=err, marker="o", capsize=3)
        for xi, ti, n in zip(x, t, names):
            a1.annotate(n, (xi, ti), textcoords="offset points", xytext=(4, 4))
        a1.set_xlabel("MFLOPs")
        a1.set_ylabel("test top-1 (%)")
        a1.set_title("family members (95 % bootstrap CI)")
        k = len(names)
        grid = [[100 * v if v is not None else float("nan") for v in row] for row in r["nfr_matrix"]]
        im = a2.imshow(grid, cmap="Reds")
        for i in range(k):
            for j in range(k):
                if r["nfr_matrix"][i][j] is not None:
                    a2.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center")
        a2.set_xticks(range(k), names)
        a2.set_yticks(range(k), names)
        a2.set_xlabel("new model")
        a2.set_ylabel("reference")
        a2.set_title("NFR (%) reference → new")
        fig.colorbar(im, ax=a2)
        fig.suptitle(f"{r['experiment']}: {r['reward']}")
        fig.tight_layout()
        tmp = run.dir / "family.tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(run.dir / "family.png")

    def table(self, r: dict) -> ResultsTable:
        rows = []
        prev = {p["to"]: p for p in r["consecutive"]}
        for m in r["members"]:
            t = m["test_top1"]
            p = prev.get(m["member"])
            nfr = "—" if p is None else f"{100 * p['nfr']['value']:.2f} [{100 * p['nfr']['lo']:.2f}, " \
                                        f"{100 * p['nfr']['hi']:.2f}]"
            rows.append([m["member"], f"{m['mflops']:.3f}", f"{100 * t['value']:.2f} [{100 * t['lo']:.2f}, "
                                                            f"{100 * t['hi']:.2f}]", nfr])
        return ResultsTable(f"nasx · {r['experiment']}", ["member", "MFLOPs", "test top-1 % [95 % CI]",
                                                          "NFR % from previous [95 % CI]"], rows,
                            notes=[self.describe_row(r)])

    @staticmethod
    def describe_row(r: dict) -> str:
        models = {"inherited": "inherited supernet weights",
                  "independent": "A1 inherited, later archs trained from scratch",
                  "focal_distillation": "A1 inherited, later archs trained with focal distillation from the previous"}[
            r.get("models", "inherited")]
        if r.get("family_source"):
            search = f"archs of {r['family_source']}"
        elif r.get("variant") == "ws_r0":
            search = f"every member searched with {r['first_reward']}"
        else:
            search = f"A1: {r['first_reward']}; later members: {r['reward']}" + \
                (" + containment" if r["containment"] else "")
        return f"{search}; {models}"

    def report(self, run, r: dict) -> str:
        t = self.table(r)
        lines = [f"# nasx run: {r['experiment']}", "", *[f"- {n}" for n in t.notes],
                 f"- {r['test_samples']} test samples; intervals are paired bootstraps over them", "",
                 "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in t.rows]
        lines += ["", "Archs:", ""] + [f"- {m['member']}: `{m['layers']}`" for m in r["members"]]
        lines += ["", "![family](family.png)", ""]
        return "\n".join(lines)

