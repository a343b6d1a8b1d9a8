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
from omegaconf import DictConfig

from nasx import artifacts
from nasx.arch import Arch
from nasx.errors import ConfigError, NasxError
from nasx.evaluation import classification_metrics, to_device
from nasx.methods.base import ResultsTable
from nasx.methods.spos import SPOS
from nasx.search.loop import run_search
from nasx.search.nsga2 import equispaced, hypervolume, non_dominated
from nasx.search.random_search import RandomSearch
from nasx.stages import classification_evaluator, load_model, read_artifact, train_standalone

log = logging.getLogger("nasx")


class MixPath(SPOS):
    """MixPath: SPOS's supernet training on a multi-path space, NSGA-II with a random baseline, K models."""

    name = "mixpath"

    def check_config(self, cfg: DictConfig) -> None:
        if cfg.train.warmup_epochs != 0:
            raise ConfigError(f"train.warmup_epochs must be 0 for MixPath (its supernet has no warm-up mode), got "
                              f"{cfg.train.warmup_epochs!r}")
        k = cfg.search.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"search.k (models taken from the Pareto front) must be a positive integer, got {k!r}")
        super().check_config(cfg)

    search_dir = "search/nsga2"

    def setup(self, run) -> None:
        if not run.reward.multi:
            raise ConfigError("method=mixpath needs a multi-objective reward (reward.objectives), e.g. "
                              "reward=acc_mflops")
        super().setup(run)
        cost_defaults = {"mflops": run.budget.mflops or run.space.max_cost().mflops,
                         "params": run.budget.params * 1e6 if run.budget.params else run.space.max_cost().params}
        run.ref = run.reward.ref_point(cost_defaults)

    def search(self, run) -> dict:
        return search(run)

    def retrain(self, run) -> None:
        loss = self.retrain_loss(run)
        for i, arch in enumerate(_chosen(run)):
            train_standalone(run, arch, f"retrain/k{i}", loss)

    def evaluate(self, run) -> dict:
        results = evaluate(run)
        self.write_results(run, results)
        return results

    def report(self, run, r: dict) -> str:
        return report(run, r)

    def table(self, r: dict) -> ResultsTable:
        hv = r["hypervolume"]
        rows = [[str(m["k"]), f"{m['mflops']:.3f}", f"{m['params']:,}", f"{100 * m['supernet_val_top1']:.2f} %",
                 f"{100 * m['test_top1']:.2f} %"] for m in r["models"]]
        return ResultsTable(f"nasx · {r['experiment']} · MixPath: {r['evaluations']} archs per search, hypervolume "
                            f"NSGA-II {hv['nsga2']:.4f} vs random {hv['random']:.4f}",
                            ["k", "MFLOPs", "params", "supernet val top-1", "retrained test top-1"], rows)


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


def search(run) -> dict:
    c = run.cfg.search
    evaluator = classification_evaluator(run, calibrate=c.get("bn_calibration", True))
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


def plot_pareto(run, nsga: list[dict], rand: list[dict], fronts: dict, chosen: list[dict],
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
    artifacts.save_figure(fig, path)
    plt.close(fig)


def _chosen(run) -> list[Arch]:
    path = run.dir / "search" / "front.json"
    if not path.exists():
        raise NasxError(f"no searched front at '{path}': run the search stage first")
    return [run.space.validate(Arch.from_dict(r["arch"], where=str(path)), where=str(path))
            for r in read_artifact(path)["chosen"]]


def report(run, r: dict) -> str:
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


def evaluate(run) -> dict:
    summary = read_artifact(run.dir / "search" / "front.json")
    archs = _chosen(run)
    run.data.setup("test")
    dev = run.device
    test = to_device(run.data.test_dataloader(), dev)
    rows = []
    for i, (arch, rec) in enumerate(zip(archs, summary["chosen"])):
        model = load_model(run, arch, f"retrain/k{i}")
        m = classification_metrics(model.to(dev).eval(), test)
        rows.append({"k": i, "arch": arch.to_dict(), "arch_str": str(arch), "mflops": rec["mflops"],
                     "params": rec["params"], "supernet_val_top1": rec["metrics"]["top1"],
                     "test_top1": m["top1"], "test_top5": m["top5"]})
    results = {"experiment": run.cfg.name, "method": "mixpath", "seed": run.cfg.seed, "space": run.space.name,
               "shadow_bn": run.space.shadow_bn, "max_paths": run.space.max_paths, "budget": str(run.budget),
               "objectives": summary["objectives"], "constraints": summary["constraints"],
               "evaluations": summary["evaluations"], "hypervolume": summary["hypervolume"],
               "front_size": summary["front_size"], "models": rows, "retrain_epochs": run.cfg.retrain.epochs}
    return results
