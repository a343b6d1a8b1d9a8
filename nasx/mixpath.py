"""The MixPath method's stages (METHODS.md §5), in the same run directory as every nasx run.

* train    — the multi-path supernet with shadow BN (``train/``): every step samples, per layer, m′ ~ U{1..m} and
             then m′ distinct paths [ref]; no warm-up.
* search   — NSGA-II (Algorithm 1) for the reward's objectives (default: max top-1, min MFLOPs) →
             ``search/nsga2/``; then random search with the same number of evaluated archs → ``search/random/``;
             ``search/front.json`` (K equispaced models on the front of the final population P_N),
             ``search/hypervolume.json`` (per NSGA-II generation, both searches at equal evaluation counts) and
             ``search/pareto.png`` (the supplementary's Fig. 1: both fronts, and hypervolume against evaluations).
* retrain  — each of the K models standalone → ``retrain/k<i>/``.
* evaluate — test accuracy of the K models beside their supernet accuracy and cost → ``results.json``,
             ``report.md``.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from omegaconf import DictConfig

from nasx import artifacts
from nasx.arch import Arch
from nasx.errors import ConfigError, NasxError
from nasx.evaluator import classification_metrics
from nasx.pipeline import STAGES, Run, make_evaluator, start, train_standalone, train_supernet
from nasx.search.loop import run_search
from nasx.search.nsga2 import equispaced, hypervolume, non_dominated
from nasx.search.random_search import RandomSearch

log = logging.getLogger("nasx")


class MixPathRun(Run):
    def __init__(self, cfg: DictConfig):
        if cfg.train.warmup_epochs != 0:
            raise ConfigError(f"train.warmup_epochs must be 0 for MixPath (its supernet has no warm-up mode), got "
                              f"{cfg.train.warmup_epochs!r}")
        k = cfg.search.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"search.k (models taken from the Pareto front) must be a positive integer, got {k!r}")
        super().__init__(cfg)
        if not self.reward.multi:
            raise ConfigError("method=mixpath needs a multi-objective reward (reward.objectives), e.g. "
                              "reward=acc_mflops")
        cost_defaults = {"mflops": self.budget.mflops or self.space.max_cost().mflops,
                         "params": self.budget.params * 1e6 if self.budget.params else self.space.max_cost().params}
        self.ref = self.reward.ref_point(cost_defaults)


def _feasible_F(records: list[dict]) -> tuple[list[dict], np.ndarray]:
    rows = [r for r in records if r.get("objectives") is not None and r.get("feasible")
            and all(math.isfinite(v) for v in r["objectives"])]
    return rows, np.array([r["objectives"] for r in rows], dtype=float).reshape(len(rows), -1)


def _distinct(records: list[dict]) -> list[dict]:
    """The first record of every distinct arch, in evaluation order."""
    seen, out = set(), []
    for r in records:
        if r["metrics"] is not None and r["arch_str"] not in seen:
            seen.add(r["arch_str"])
            out.append(r)
    return out


def search(run: MixPathRun) -> dict:
    c = run.cfg.search
    evaluator = make_evaluator(run, calibrate=c.get("bn_calibration", True))
    out = run.dir / "search"
    nsga = run_search(run.strategy, run.space, evaluator, run.reward, run.budget, out / "nsga2",
                      progress=run.cfg.progress)
    nsga_eval = _distinct(nsga.records)
    n_eval = len(nsga_eval)

    pop = run.strategy.population
    baseline = RandomSearch(run.space, run.budget, seed=run.cfg.seed + 1, generations=math.ceil(n_eval / pop),
                            population=pop)
    rand = run_search(baseline, run.space, evaluator, run.reward, run.budget, out / "random",
                      progress=run.cfg.progress)
    rand_eval = _distinct(rand.records)[:n_eval]  # the same number of evaluated archs as NSGA-II

    # hypervolume of everything evaluated so far, at the evaluation count of each NSGA-II generation
    curve = []
    for g in sorted({r["gen"] for r in nsga_eval}):
        upto = sum(1 for r in nsga_eval if r["gen"] <= g)
        curve.append({"gen": g, "evaluations": upto,
                      "nsga2": hypervolume(_feasible_F(nsga_eval[:upto])[1], run.ref),
                      "random": hypervolume(_feasible_F(rand_eval[:upto])[1], run.ref)})

    # K equispaced models near the front of the final population P_N (Algorithm 1's output): its non-dominated
    # members, and the next ranks' if those are fewer than K
    front = run.strategy.population_front(at_least=c.k)
    F = np.array([f for _, f in front])
    picks = equispaced(F, c.k, axis=len(run.ref) - 1)
    by_arch = {r["arch_str"]: r for r in nsga_eval}
    chosen = [by_arch[str(front[i][0])] for i in picks]
    fronts = {}
    for name, recs in (("nsga2", nsga_eval), ("random", rand_eval)):
        rows, FF = _feasible_F(recs)
        fronts[name] = [rows[i] for i in non_dominated(FF)]
    summary = {"evaluations": n_eval, "ref_point": list(run.ref), "objectives": repr(run.reward),
               "constraints": run.reward.constraint_text(),
               "hypervolume": {"nsga2": curve[-1]["nsga2"], "random": curve[-1]["random"]},
               "front_size": {k: len(v) for k, v in fronts.items()},
               "chosen": [_public(r) for r in chosen],
               "nsga2_front": [_public(r) for r in fronts["nsga2"]],
               "random_front": [_public(r) for r in fronts["random"]]}
    artifacts.write_json(out / "hypervolume.json", curve)
    artifacts.write_json(out / "front.json", summary)
    plot_pareto(run, nsga_eval, rand_eval, fronts, chosen, curve, out / "pareto.png")
    return summary


def _public(r: dict) -> dict:
    return {"arch": r["arch"], "arch_str": r["arch_str"], "mflops": r["mflops"], "params": r["params"],
            "metrics": r["metrics"], "objectives": r.get("objectives")}


def plot_pareto(run: MixPathRun, nsga: list[dict], rand: list[dict], fronts: dict, chosen: list[dict],
                curve: list[dict], path) -> None:
    """Fig. 1 analogue: the two searches' evaluated archs and fronts in objective space, and hypervolume against
    evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = run.reward.objectives
    x_key, y_key = objs[-1]["metric"], objs[0]["metric"]

    def xy(recs):
        nat = [run.reward.natural(tuple(r["objectives"])) for r in recs if r.get("objectives")]
        return [n[-1] for n in nat], [n[0] for n in nat]

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, recs, color in (("random", rand, "tab:gray"), ("NSGA-II", nsga, "tab:blue")):
        x, y = xy(recs)
        ax.scatter(x, y, s=8, alpha=0.35, color=color, label=f"{name}: evaluated")
        fx, fy = xy(sorted(fronts["nsga2" if name == "NSGA-II" else "random"], key=lambda r: r["objectives"][-1]))
        ax.step(fx, fy, where="post", color=color, lw=2, label=f"{name}: front")
    cx, cy = xy(chosen)
    ax.scatter(cx, cy, s=70, facecolors="none", edgecolors="tab:red", lw=2, label=f"K={len(chosen)} chosen")
    ax.set_xlabel(x_key if x_key != "mflops" else "MFLOPs (multiply-accumulates)")
    ax.set_ylabel(f"{y_key} (supernet, val)")
    ax.legend(fontsize=7)
    ax.set_title(f"{run.cfg.name}: Pareto fronts at {len(nsga)} evaluations each")
    ev = [p["evaluations"] for p in curve]
    ax2.plot(ev, [p["nsga2"] for p in curve], "o-", color="tab:blue", label="NSGA-II")
    ax2.plot(ev, [p["random"] for p in curve], "s-", color="tab:gray", label="random")
    ax2.set_xlabel("architectures evaluated")
    ax2.set_ylabel("hypervolume")
    ax2.legend()
    ax2.set_title(f"hypervolume (ref {tuple(round(v, 3) for v in run.ref)})")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _chosen(run: MixPathRun) -> list[Arch]:
    path = run.dir / "search" / "front.json"
    if not path.exists():
        raise NasxError(f"no searched front at '{path}': run the search stage first")
    return [run.space.validate(Arch.from_dict(r["arch"]), where=str(path)) for r in artifacts.read_json(path)["chosen"]]


def retrain(run: MixPathRun) -> list[torch.nn.Module]:
    return [train_standalone(run, arch, f"retrain/k{i}") for i, arch in enumerate(_chosen(run))]


def evaluate(run: MixPathRun, models: list[torch.nn.Module] | None = None) -> dict:
    summary = artifacts.read_json(run.dir / "search" / "front.json")
    archs = _chosen(run)
    run.data.setup("test")
    dev = run.device()
    test = [(x.to(dev), y.to(dev)) for x, y in run.data.test_dataloader()]
    rows = []
    for i, (arch, rec) in enumerate(zip(archs, summary["chosen"])):
        if models is None:
            path = run.dir / "retrain" / f"k{i}" / "model.pt"
            if not path.exists():
                raise NasxError(f"evaluate needs '{path}': run the retrain stage first")
            model = run.space.supernet().extract(arch)
            model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
        else:
            model = models[i]
        m = classification_metrics(model.to(dev).eval(), test)
        rows.append({"k": i, "arch": arch.to_dict(), "arch_str": str(arch), "mflops": rec["mflops"],
                     "params": rec["params"], "supernet_val_top1": rec["metrics"]["top1"],
                     "test_top1": m["top1"], "test_top5": m["top5"]})
    results = {"experiment": run.cfg.name, "method": "mixpath", "seed": run.cfg.seed, "space": run.space.name,
               "shadow_bn": run.space.shadow_bn, "max_paths": run.space.max_paths, "budget": str(run.budget),
               "objectives": summary["objectives"], "constraints": summary["constraints"],
               "evaluations": summary["evaluations"], "hypervolume": summary["hypervolume"],
               "front_size": summary["front_size"], "models": rows, "retrain_epochs": run.cfg.retrain.epochs}
    artifacts.write_json(run.dir / "results.json", results)
    artifacts.write_text(run.dir / "report.md", report(run, results))
    return results


def report(run: MixPathRun, r: dict) -> str:
    hv = r["hypervolume"]
    lines = [f"# nasx run: {r['experiment']} (MixPath)", "",
             f"- space: `{r['space']}` (m = {r['max_paths']}, {'shadow' if r['shadow_bn'] else 'plain'} BN), "
             f"budget: {r['budget']}, objectives: {r['objectives']}, constraints: {r['constraints']}",
             f"- {r['evaluations']} architectures evaluated by each search; hypervolume NSGA-II "
             f"{hv['nsga2']:.4f} vs random {hv['random']:.4f} (front sizes {r['front_size']['nsga2']} / "
             f"{r['front_size']['random']})", "",
             "| k | MFLOPs | params | supernet val top-1 | retrained test top-1 | arch |", "|---|---|---|---|---|---|"]
    describe = getattr(run.space, "describe", None)
    for m in r["models"]:
        a = describe(run.space.validate(Arch.from_dict(m["arch"]))) if describe else m["arch_str"]
        lines.append(f"| {m['k']} | {m['mflops']:.3f} | {m['params']:,} | {100 * m['supernet_val_top1']:.2f} % | "
                     f"{100 * m['test_top1']:.2f} % | `{a}` |")
    lines += ["", "![pareto](search/pareto.png)", ""]
    return "\n".join(lines)


def run_mixpath(cfg: DictConfig) -> dict:
    r = start(cfg, MixPathRun)
    results, models = {}, None
    for stage in STAGES:
        if stage not in cfg.stages:
            continue
        log.info("stage %s", stage)
        if stage == "train":
            if train_supernet(r) != 0:
                return {}
        elif stage == "search":
            search(r)
        elif stage == "retrain":
            models = retrain(r)
        else:
            results = evaluate(r, models)
    return results
