"""The NSS method's stages (METHODS.md §2), in the same run directory as every nasx run.

* train    — one network-space search per MFLOPs target (:class:`NSSTraining`): ``train/target_<T>/last.ckpt`` and
             ``space_probs.json`` (softmax(Θ) per stage).
* search   — the elite space per target (most probable space per stage) → ``search/elite_spaces.json``; the
             Table-1 protocol, sampling from the elite space and from the expanded space until a network lands
             within the tolerance, run by the search loop (:class:`~nasx.search.elite.EliteSampling`; every draw in
             ``search/protocol/target_<T>/<source>/history.jsonl``, resumable) → ``search/protocol.json``; and ``search/elite.png``, MFLOPs against supernet
             error for networks sampled from each elite space beside networks from the expanded space.
* retrain  — the found network of the first ``search.trained_networks`` protocol runs (1: the paper's one network)
             of every target and source trained standalone → ``retrain/<target>_<elite|expanded>[_<k>]/`` (k ≥ 1 for
             the second network on), each with its test error and the indices of the test images it gets wrong.
* evaluate — the Table-1 analogue (samples, |Δ| %, error: the mean over a cell's trained networks) in
             ``results.json`` and ``report.md``; with ``search.bootstrap`` > 0 also 95 % percentile-bootstrap
             intervals of every cell's error, of elite − expanded per target and of the averages [nasx].
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from nasx import artifacts
from nasx.arch import Arch, Budget
from nasx.errors import ConfigError, NasxError
from nasx.evaluation import ClassificationEvaluator, scored_predictions, to_device
from nasx.evaluation.base import Evaluator
from nasx.methods.base import Method, ResultsTable
from nasx.rewards import WeightedSum
from nasx.search.elite import elite_space
from nasx.search.loop import run_search
from nasx.stages import fit, load_model, load_weights, read_artifact, train_standalone
from nasx.training.nss import NSSTraining

log = logging.getLogger("nasx")
SOURCES = ("elite", "expanded")


def _tag(target: float) -> str:
    return f"target_{target:g}"


def _stage(target: float, source: str, k: int) -> str:
    """The retrain stage of the k-th trained network of a cell (k = 0: the first run's, the paper's one network)."""
    return f"retrain/{_tag(target)}_{source}" + (f"_{k}" if k else "")


def _networks(rec: dict, k: int, where: str) -> list[dict]:
    """The networks of the first ``k`` protocol runs of a protocol.json cell."""
    runs = rec.get("runs", [rec])  # a protocol.json written before "runs" was recorded holds the first run only
    if len(runs) < k:
        raise NasxError(f"{where} records {len(runs)} protocol run(s) per cell, fewer than search.trained_networks="
                        f"{k}: delete it and run the search stage again (its draws are reused)")
    return runs[:k]


def bootstrap_errors(wrong: list[torch.Tensor], resamples: int, seed: int, chunk: int = 64) -> torch.Tensor:
    """Bootstrap replicates of the mean error of each cell, (resamples, len(wrong)).

    ``wrong[c]`` (k_c, N) bool: which of the N test images each of cell c's k_c networks gets wrong. Every replicate
    draws the N test images with replacement, shared by all cells (so differences between cells are paired), and,
    within each cell, k_c of its networks with replacement; a cell's replicate is the mean error of the drawn networks
    on the drawn images. The spread thus covers the test sample and which networks the protocol happened to find.
    """
    n = wrong[0].shape[1]
    if any(w.dim() != 2 or w.shape[1] != n or w.shape[0] < 1 for w in wrong):
        raise ValueError("bootstrap_errors needs (k, N) tensors over the same N test images, k >= 1")
    flat = torch.cat([w.float() for w in wrong]).T  # (N, networks)
    offsets = torch.tensor([0] + [w.shape[0] for w in wrong]).cumsum(0)
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        counts = torch.zeros(b, n).scatter_add_(1, torch.randint(n, (b, n), generator=g), torch.ones(b, n))
        per_net = counts @ flat / n  # (b, networks): each network's error on the drawn images
        cells = []
        for c, w in enumerate(wrong):
            pick = offsets[c] + torch.randint(w.shape[0], (b, w.shape[0]), generator=g)
            cells.append(per_net.gather(1, pick).mean(1))
        out.append(torch.stack(cells, 1))
    return torch.cat(out)


def _interval(replicates: torch.Tensor) -> list[float]:
    """The 95 % percentile interval of bootstrap replicates (fractions), in %."""
    lo, hi = torch.quantile(replicates.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [100 * lo, 100 * hi]


class TargetDeviation(Evaluator):
    """The protocol's only measurement: ``delta_pct``, the |MFLOPs − target| / target of a drawn network, in %."""

    metrics = ("delta_pct",)

    def __init__(self, space, target: float):
        self.space, self.target = space, target

    def evaluate(self, arch: Arch) -> dict[str, float]:
        return {"delta_pct": 100 * abs(self.space.cost(arch).mflops - self.target) / self.target}


class NSS(Method):
    """Network-space search: one Gumbel-softmax space search per MFLOPs target, elite spaces, the Table-1
    protocol."""

    name = "nss"

    def check_config(self, cfg: DictConfig) -> None:
        t = cfg.train
        if not t.targets:
            raise ConfigError("train.targets must list at least one MFLOPs target")
        if not isinstance(t.epochs, int) or t.epochs < 1 or not isinstance(t.warmup_epochs, int) \
                or not 0 <= t.warmup_epochs < t.epochs:
            raise ConfigError(f"train.warmup_epochs must be an integer in 0..train.epochs-1, with train.epochs ≥ 1; "
                              f"got {t.warmup_epochs!r} and {t.epochs!r}")
        if not isinstance(cfg.search.get("strategy"), DictConfig):
            raise ConfigError("search.strategy must configure the protocol's sampling (search=elite)")
        k, repeats = cfg.search.get("trained_networks", 1), cfg.search.strategy.get("repeats", 20)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"search.trained_networks (networks per target and source trained standalone) must be "
                              f"a positive integer, got {k!r}")
        if isinstance(repeats, int) and k > repeats:
            raise ConfigError(f"search.trained_networks ({k}) cannot exceed search.strategy.repeats ({repeats}): "
                              f"each trained network is the one a protocol run found")
        b = cfg.search.get("bootstrap", 0)
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ConfigError(f"search.bootstrap (resamples for the error intervals; 0 = none) must be an integer "
                              f">= 0, got {b!r}")

    def setup(self, run) -> None:
        run.targets = [float(t) for t in run.cfg.train.targets]
        lo = run.space.min_cost().mflops
        for t in run.targets:
            if t < lo:
                raise ConfigError(f"train.targets: {t:g} MFLOPs is below the smallest network of space "
                                  f"'{run.space.name}' ({lo:.3f} MFLOPs)")
        self.sampling(run, run.targets[0], "expanded", None)  # bad protocol settings fail now

    def sampling(self, run, target: float, source: str, spaces):
        """The protocol's strategy for one target and source."""
        return instantiate(run.cfg.search.strategy, space=run.space, budget=Budget(),
                           seed=f"{run.cfg.seed}:{target}:{source}", target_mflops=target, spaces=spaces)

    def supernet(self, run, target: float) -> torch.nn.Module:
        return load_weights(run.space.supernet(), run.dir / "train" / _tag(target) / "last.ckpt", "NSS search")

    # -- stages --------------------------------------------------------------------------------------------------
    def train(self, run) -> None:
        c = run.cfg.train
        for target in run.targets:
            out = run.dir / "train" / _tag(target)
            if (out / "space_probs.json").exists():
                continue
            L.seed_everything(run.cfg.seed, workers=True, verbose=False)
            system = NSSTraining(run.space.supernet(), run.space, target, seed=run.cfg.seed,
                               warmup_epochs=c.warmup_epochs, tau_start=c.tau_start, tau_end=c.tau_end,
                               penalty=c.penalty, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                               theta_lr=c.theta_lr, theta_weight_decay=c.theta_weight_decay, checkpoint_dir=str(out))
            fit(run, system, out, c.epochs, distributed=False)
            probs = system.space_probabilities()
            artifacts.write_json(out / "space_probs.json", {
                "target_mflops": target, "probs": probs, "expected_mflops": system.expected_mflops().item(),
                "elite": list(elite_space(probs))})

    def search(self, run) -> dict:
        c = run.cfg.search
        run.data.setup("fit")
        calibration = run.data.calibration_batches(c.bn_batches, c.bn_batch_size)
        validation = list(run.data.val_dataloader())
        elites, protocol, scatter = {}, {}, {}
        for target in run.targets:
            probs = read_artifact(run.dir / "train" / _tag(target) / "space_probs.json")["probs"]
            elite = elite_space(probs)
            elites[_tag(target)] = {"target_mflops": target, "spaces": list(elite),
                                    "bounds": [run.space.space_bounds(j) for j in elite]}
            protocol[_tag(target)] = {source: self._protocol(run, target, elite if source == "elite" else None,
                                                             source) for source in SOURCES}
            # supernet error of networks drawn from the elite space and from the expanded space
            evaluator = ClassificationEvaluator(self.supernet(run, target), calibration, validation, run.device)
            rng = random.Random(f"{run.cfg.seed}:{target}:plot")
            points = {"elite": [], "expanded": []}
            for source in SOURCES:
                for _ in range(c.plot_samples):
                    arch = run.space.sample_in(elite, rng) if source == "elite" else run.space.sample(rng)
                    err = 1 - evaluator.evaluate(arch)["top1"]
                    points[source].append((run.space.cost(arch).mflops, err))
            scatter[_tag(target)] = points
        artifacts.write_json(run.dir / "search" / "elite_spaces.json", elites)
        artifacts.write_json(run.dir / "search" / "protocol.json", protocol)
        artifacts.write_json(run.dir / "search" / "elite_samples.json", scatter)
        plot_elite(scatter, run.targets, run.dir / "search" / "elite.png")
        return protocol

    def _protocol(self, run, target: float, spaces: tuple[int, ...] | None, source: str) -> dict:
        """``search.strategy.repeats`` independent runs of the sampling protocol, through the search loop: the first
        run's network is the one trained; the number of samples and |Δ| are averaged over the runs [nasx: one draw
        is too noisy to compare]."""
        strategy = self.sampling(run, target, source, spaces)
        run_search(strategy, run.space, TargetDeviation(run.space, target), WeightedSum({"delta_pct": -1.0}),
                   Budget(), run.dir / "search" / "protocol" / _tag(target) / source, progress=False)
        runs = strategy.runs
        return {**runs[0], "samples_mean": sum(r["samples"] for r in runs) / len(runs),
                "delta_pct_mean": sum(r["delta_pct"] for r in runs) / len(runs),
                "found_rate": sum(r["found"] for r in runs) / len(runs), "repeats": len(runs), "runs": runs}

    def retrain(self, run) -> dict:
        path = run.dir / "search" / "protocol.json"
        protocol = read_artifact(path)
        k = run.cfg.search.get("trained_networks", 1)
        errors = {}
        for target in run.targets:
            for source in SOURCES:
                for i, net in enumerate(_networks(protocol[_tag(target)][source], k, str(path))):
                    arch = run.space.validate(Arch.from_dict(net["arch"]))
                    stage = _stage(target, source, i)
                    out = run.dir / stage
                    done = read_artifact(out / "result.json") if (out / "result.json").exists() else None
                    if done is not None and done["arch"] == arch.to_dict() and "wrong" in done:
                        errors[out.name] = done["test_error"]
                        continue
                    if done is not None and done["arch"] != arch.to_dict():
                        # the protocol found another network since: train that one from scratch
                        for stale in ("result.json", "last.ckpt", "done.json", "model.pt"):
                            (out / stale).unlink(missing_ok=True)
                    train_standalone(run, arch, stage)  # skipped when done.json is there
                    run.data.setup("test")
                    model = load_model(run, arch, stage).to(run.device).eval()
                    batches = to_device(run.data.test_dataloader(), run.device)
                    metrics, preds = scored_predictions(model, batches)
                    labels = torch.cat([y for _, y in batches]).to(preds.device)
                    err = 1 - metrics["top1"]
                    artifacts.write_json(out / "result.json", {
                        "arch": arch.to_dict(), "test_error": err, "n_test": len(labels),
                        "wrong": torch.nonzero(preds != labels).flatten().tolist()})
                    errors[out.name] = err
        return errors

    def evaluate(self, run) -> dict:
        path = run.dir / "search" / "protocol.json"
        protocol = read_artifact(path)
        elites = read_artifact(run.dir / "search" / "elite_spaces.json")
        k, resamples = run.cfg.search.get("trained_networks", 1), run.cfg.search.get("bootstrap", 0)
        rows, wrong = [], {}
        for target in run.targets:
            row = {"target_mflops": target, "elite_bounds": elites[_tag(target)]["bounds"]}
            for source in SOURCES:
                rec = protocol[_tag(target)][source]
                trained = []
                for i, net in enumerate(_networks(rec, k, str(path))):
                    res = run.dir / _stage(target, source, i) / "result.json"
                    done = read_artifact(res) if res.exists() else None
                    # trained for an older protocol: not this network's error
                    trained.append(done if done is not None and done["arch"] == net["arch"] else None)
                errs = [100 * t["test_error"] for t in trained if t is not None]
                complete = len(errs) == len(trained)
                row[source] = {"found": rec["found"], "samples": rec["samples_mean"], "mflops": rec["mflops"],
                               "delta_pct": rec["delta_pct_mean"], "found_rate": rec["found_rate"],
                               "test_error_pct": sum(errs) / len(errs) if complete else None}
                if k > 1:
                    row[source]["test_errors_pct"] = errs if complete else None
                    row[source]["networks_mflops"] = [net["mflops"] for net in _networks(rec, k, str(path))]
                if complete and all("wrong" in t for t in trained):
                    w = torch.zeros(len(trained), trained[0]["n_test"], dtype=torch.bool)
                    for j, t in enumerate(trained):
                        w[j, t["wrong"]] = True
                    wrong[(target, source)] = w
            rows.append(row)
        mean = lambda src, key: sum(r[src][key] for r in rows) / len(rows)  # noqa: E731
        summary = {src: {"samples": mean(src, "samples"), "delta_pct": mean(src, "delta_pct")} for src in SOURCES}
        for src in SOURCES:
            errs = [r[src]["test_error_pct"] for r in rows if r[src]["test_error_pct"] is not None]
            summary[src]["test_error_pct"] = sum(errs) / len(errs) if errs else None
        results = {"experiment": run.cfg.name, "method": "nss", "seed": run.cfg.seed, "space": run.space.name,
                   "tolerance": run.cfg.search.strategy.tolerance, "repeats": run.cfg.search.strategy.repeats,
                   "rows": rows, "average": summary}
        if k > 1:
            results["trained_networks"] = k
        if resamples > 0 and len(wrong) == len(rows) * len(SOURCES):
            self._intervals(results, wrong, resamples, run.cfg.seed)
        artifacts.write_json(run.dir / "results.json", results)
        artifacts.write_text(run.dir / "report.md", report(results))
        return results

    @staticmethod
    def _intervals(results: dict, wrong: dict, resamples: int, seed: int) -> None:
        """95 % bootstrap intervals (:func:`bootstrap_errors`) of every cell's error, of elite − expanded per target,
        and of the averages over targets, all from the same replicates, into ``results``."""
        keys = list(wrong)
        reps = bootstrap_errors([wrong[key] for key in keys], resamples, seed)
        col = {key: reps[:, j] for j, key in enumerate(keys)}
        rows = results["rows"]
        for row in rows:
            t = row["target_mflops"]
            for src in SOURCES:
                row[src]["test_error_ci"] = _interval(col[(t, src)])
            row["error_diff_pct"] = row["elite"]["test_error_pct"] - row["expanded"]["test_error_pct"]
            row["error_diff_ci"] = _interval(col[(t, "elite")] - col[(t, "expanded")])
        avg = {src: sum(col[(r["target_mflops"], src)] for r in rows) / len(rows) for src in SOURCES}
        a = results["average"]
        for src in SOURCES:
            a[src]["test_error_ci"] = _interval(avg[src])
        a["error_diff_pct"] = a["elite"]["test_error_pct"] - a["expanded"]["test_error_pct"]
        a["error_diff_ci"] = _interval(avg["elite"] - avg["expanded"])
        results["bootstrap"] = {"resamples": resamples, "seed": seed, "n_test": next(iter(wrong.values())).shape[1],
                                "level": 0.95}

    def table(self, r: dict) -> ResultsTable:
        notes = ["elite spaces (depth range × width range, per stage):"]
        for row in r["rows"]:
            spaces = " | ".join(f"d {b[0]}-{b[1]} × w {b[2]}-{b[3]}" for b in row["elite_bounds"])
            notes.append(f"  {row['target_mflops']:g} MFLOPs: {spaces}")
        rows = []
        for label, e, x in [(f"{row['target_mflops']:g}", row["elite"], row["expanded"]) for row in r["rows"]] + \
                [("average", r["average"]["elite"], r["average"]["expanded"])]:
            rows.append([label, f"{e['delta_pct']:.1f}", f"{e['samples']:.1f}", _error_cell(e),
                         f"{x['delta_pct']:.1f}", f"{x['samples']:.1f}", _error_cell(x)])
        return ResultsTable(f"nasx · {r['experiment']} · NSS protocol (within {100 * r['tolerance']:g} % of target)",
                            ["target MFLOPs", "elite |Δ| %", "elite samples", "elite error %", "expanded |Δ| %",
                             "expanded samples", "expanded error %"], rows, notes)


def _error_cell(cell: dict) -> str:
    """``error`` or ``error [lo, hi]`` (the 95 % bootstrap interval when there is one), in %; "—" when untrained."""
    if cell.get("test_error_pct") is None:
        return "—"
    ci = cell.get("test_error_ci")
    return f"{cell['test_error_pct']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def report(r: dict) -> str:
    k = r.get("trained_networks", 1)
    trained = "MFLOPs and error are those of the first run's network, trained standalone." if k == 1 else \
        (f"MFLOPs are those of the first run's network; error is the mean test error of the networks of the first "
         f"{k} runs, each trained standalone.")
    lines = [f"# nasx run: {r['experiment']} (NSS)", "",
             f"Space `{r['space']}`, seed {r['seed']}; a network is *found* when its MFLOPs are within "
             f"{100 * r['tolerance']:g} % of the target. Samples and |Δ| are means over {r['repeats']} runs of the "
             f"protocol; {trained}", "",
             "| target MFLOPs | elite space (d_lo, d_hi, w_lo, w_hi) per stage | elite: MFLOPs (|Δ| %) | samples | "
             "error % | expanded: MFLOPs (|Δ| %) | samples | error % |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        e, x = row["elite"], row["expanded"]
        bounds = "; ".join("({}, {}, {}, {})".format(*b) for b in row["elite_bounds"])
        miss = lambda rec: "" if rec["found_rate"] == 1 else f" (found in {100 * rec['found_rate']:.0f} %)"  # noqa
        lines.append(f"| {row['target_mflops']:g} | {bounds} | {e['mflops']:.3f} ({e['delta_pct']:.1f} %) | "
                     f"{e['samples']:.1f}{miss(e)} | {_error_cell(e)} | "
                     f"{x['mflops']:.3f} ({x['delta_pct']:.1f} %) | {x['samples']:.1f}{miss(x)}"
                     f" | {_error_cell(x)} |")
    a = r["average"]
    lines.append(f"| average | | ({a['elite']['delta_pct']:.1f} %) | {a['elite']['samples']:.1f} | "
                 f"{_error_cell(a['elite'])} | ({a['expanded']['delta_pct']:.1f} %) | "
                 f"{a['expanded']['samples']:.1f} | {_error_cell(a['expanded'])} |")
    if "bootstrap" in r:
        b = r["bootstrap"]
        lines += ["", f"Error intervals: 95 % percentile bootstrap ({b['resamples']} resamples of the "
                  f"{b['n_test']} test images, shared by every cell, and of each cell's networks), nasx's addition.",
                  "", "| target MFLOPs | elite − expanded error (points) | 95 % interval |", "|---|---|---|"]
        for label, d in [(f"{row['target_mflops']:g}", row) for row in r["rows"]] + [("average", a)]:
            lo, hi = d["error_diff_ci"]
            lines.append(f"| {label} | {d['error_diff_pct']:+.2f} | [{lo:+.2f}, {hi:+.2f}] |")
    lines += ["", "Paper (supplementary Tab. 1, CIFAR-10 average): elite 5 samples, 2.8 % deviation, 4.13 % error; "
              "expanded 215.6 samples, 5.6 % deviation, 4.76 % error.", "", "![elite spaces](search/elite.png)", ""]
    return "\n".join(lines)


def plot_elite(scatter: dict, targets: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        pts = scatter[_tag(target)]
        for source, style in (("expanded", dict(color="gray", alpha=0.6, label="expanded space")),
                              ("elite", dict(color="tab:red", label="elite space"))):
            if pts[source]:
                xs, ys = zip(*pts[source])
                ax.scatter(xs, [100 * y for y in ys], s=14, **style)
        ax.axvline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
        ax.set_xscale("log")
        ax.set_xlabel("MFLOPs (multiply-accumulates)")
        ax.set_ylabel("supernet val error %")
        ax.set_title(f"target {target:g} MFLOPs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)
