"""The NSS method's stages (METHODS.md §2), in the same run directory as every nasx run.

* train    — one network-space search per MFLOPs target (:class:`NSSSearch`): ``train/target_<T>/last.ckpt`` and
             ``space_probs.json`` (softmax(Θ) per stage).
* search   — the elite space per target (most probable space per stage) → ``search/elite_spaces.json``; the
             Table-1 protocol, sampling from the elite space and from the expanded space until a network lands
             within the tolerance → ``search/protocol.json``; and ``search/elite.png``, MFLOPs against supernet
             error for networks sampled from each elite space beside networks from the expanded space.
* retrain  — every found network trained standalone → ``retrain/<target>_<elite|expanded>/``.
* evaluate — the Table-1 analogue (samples, |Δ| %, error) in ``results.json`` and ``report.md``.
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
from nasx.arch import Arch
from nasx.errors import ConfigError, NasxError
from nasx.evaluator import bn_recalibrate, classification_metrics
from nasx.pipeline import STAGES, _optim, check_stages, device_of, make_trainer, start
from nasx.search.elite import elite_space, sample_until_within
from nasx.training.nss_search import NSSSearch
from nasx.training.standalone import StandaloneTraining

log = logging.getLogger("nasx")
SOURCES = ("elite", "expanded")


def _tag(target: float) -> str:
    return f"target_{target:g}"


class NSSRun:
    def __init__(self, cfg: DictConfig):
        self.cfg, self.dir = cfg, Path(cfg.paths.run_dir)
        _check(cfg)
        self.data = instantiate(cfg.data)
        self.data.check()
        self.space = instantiate(cfg.space, in_channels=self.data.in_channels, num_classes=self.data.num_classes)
        self.targets = [float(t) for t in cfg.train.targets]
        lo = self.space.min_cost().mflops
        for t in self.targets:
            if t < lo:
                raise ConfigError(f"train.targets: {t:g} MFLOPs is below the smallest network of space "
                                  f"'{self.space.name}' ({lo:.3f} MFLOPs)")
        self.device = device_of(cfg)

    def supernet(self, target: float) -> torch.nn.Module:
        path = self.dir / "train" / _tag(target) / "last.ckpt"
        if not path.exists():
            raise NasxError(f"NSS search needs '{path}': run the train stage first")
        net = self.space.supernet()
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        net.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        return net


def _check(cfg: DictConfig) -> None:
    check_stages(cfg)
    t = cfg.train
    if not t.targets:
        raise ConfigError("train.targets must list at least one MFLOPs target")
    if not isinstance(t.epochs, int) or t.epochs < 1 or not isinstance(t.warmup_epochs, int) \
            or not 0 <= t.warmup_epochs < t.epochs:
        raise ConfigError(f"train.warmup_epochs must be an integer in 0..train.epochs-1, with train.epochs ≥ 1; "
                          f"got {t.warmup_epochs!r} and {t.epochs!r}")
    if not 0 < cfg.search.tolerance < 1:
        raise ConfigError(f"search.tolerance must lie strictly between 0 and 1, got {cfg.search.tolerance!r}")
    if not isinstance(cfg.search.repeats, int) or cfg.search.repeats < 1:
        raise ConfigError(f"search.repeats must be a positive integer, got {cfg.search.repeats!r}")
    if not isinstance(cfg.search.max_samples, int) or cfg.search.max_samples < 1:
        raise ConfigError(f"search.max_samples must be a positive integer, got {cfg.search.max_samples!r}")


# -- stages ----------------------------------------------------------------------------------------------------------
def train(run: NSSRun) -> None:
    c = run.cfg.train
    for target in run.targets:
        out = run.dir / "train" / _tag(target)
        if (out / "space_probs.json").exists():
            continue
        L.seed_everything(run.cfg.seed, workers=True, verbose=False)
        system = NSSSearch(run.space.supernet(), run.space, target, seed=run.cfg.seed, warmup_epochs=c.warmup_epochs,
                           tau_start=c.tau_start, tau_end=c.tau_end, penalty=c.penalty, lr=c.lr, momentum=c.momentum,
                           weight_decay=c.weight_decay, theta_lr=c.theta_lr,
                           theta_weight_decay=c.theta_weight_decay, checkpoint_dir=str(out))
        last = out / "last.ckpt"
        trainer = make_trainer(run.cfg, out, c.epochs, distributed=False)
        trainer.fit(system, datamodule=run.data, ckpt_path=str(last) if last.exists() else None)
        probs = system.space_probabilities()
        artifacts.write_json(out / "space_probs.json", {
            "target_mflops": target, "probs": probs, "expected_mflops": system.expected_mflops().item(),
            "elite": list(elite_space(probs))})


def search(run: NSSRun) -> dict:
    c = run.cfg.search
    run.data.setup("fit")
    calib = [(x.to(run.device), y.to(run.device)) for x, y in run.data.calibration_batches(c.bn_batches,
                                                                                           c.bn_batch_size)]
    val = [(x.to(run.device), y.to(run.device)) for x, y in run.data.val_dataloader()]
    elites, protocol, scatter = {}, {}, {}
    for target in run.targets:
        probs = artifacts.read_json(run.dir / "train" / _tag(target) / "space_probs.json")["probs"]
        elite = elite_space(probs)
        elites[_tag(target)] = {"target_mflops": target, "spaces": list(elite),
                                "bounds": [run.space.space_bounds(j) for j in elite]}
        protocol[_tag(target)] = {source: _protocol(run, target, elite if source == "elite" else None, source)
                                  for source in SOURCES}
        # supernet error of networks drawn from the elite space and from the expanded space
        supernet = run.supernet(target).to(run.device)
        rng = random.Random(f"{run.cfg.seed}:{target}:plot")
        points = {"elite": [], "expanded": []}
        for source in SOURCES:
            for _ in range(c.plot_samples):
                arch = run.space.sample_in(elite, rng) if source == "elite" else run.space.sample(rng)
                model = bn_recalibrate(supernet.extract(arch).to(run.device), calib)
                err = 1 - classification_metrics(model, val)["top1"]
                points[source].append((run.space.cost(arch).mflops, err))
        scatter[_tag(target)] = points
    artifacts.write_json(run.dir / "search" / "elite_spaces.json", elites)
    artifacts.write_json(run.dir / "search" / "protocol.json", protocol)
    artifacts.write_json(run.dir / "search" / "elite_samples.json", scatter)
    plot_elite(scatter, run.targets, run.dir / "search" / "elite.png")
    return protocol


def _protocol(run: NSSRun, target: float, spaces: tuple[int, ...] | None, source: str) -> dict:
    """``search.repeats`` independent runs of the sampling protocol: the first run's network is the one trained;
    the number of samples and |Δ| are averaged over the runs [nasx: one draw is too noisy to compare]."""
    c = run.cfg.search
    runs = [sample_until_within(run.space, target, c.tolerance, random.Random(f"{run.cfg.seed}:{target}:{source}:{k}"),
                                spaces=spaces, max_samples=c.max_samples) for k in range(c.repeats)]
    return {**runs[0], "samples_mean": sum(r["samples"] for r in runs) / len(runs),
            "delta_pct_mean": sum(r["delta_pct"] for r in runs) / len(runs),
            "found_rate": sum(r["found"] for r in runs) / len(runs), "repeats": len(runs)}


def retrain(run: NSSRun) -> dict:
    protocol = artifacts.read_json(run.dir / "search" / "protocol.json")
    errors = {}
    for target in run.targets:
        for source in SOURCES:
            rec = protocol[_tag(target)][source]
            arch = run.space.validate(Arch.from_dict(rec["arch"]))
            out = run.dir / "retrain" / f"{_tag(target)}_{source}"
            done = artifacts.read_json(out / "result.json") if (out / "result.json").exists() else None
            if done is not None and done["arch"] == arch.to_dict():
                errors[out.name] = done["test_error"]
                continue
            if done is not None:  # the protocol found another network since: train that one from scratch
                for stale in ("result.json", "last.ckpt"):
                    (out / stale).unlink(missing_ok=True)
            L.seed_everything(run.cfg.seed + 1, workers=True, verbose=False)
            model = run.space.supernet().extract(arch)
            system = StandaloneTraining(model, checkpoint_dir=str(out), **_optim(run.cfg.retrain))
            last = out / "last.ckpt"
            trainer = make_trainer(run.cfg, out, run.cfg.retrain.epochs, val=True, distributed=False)
            trainer.fit(system, datamodule=run.data, ckpt_path=str(last) if last.exists() else None)
            run.data.setup("test")
            test = [(x.to(run.device), y.to(run.device)) for x, y in run.data.test_dataloader()]
            err = 1 - classification_metrics(model.to(run.device).eval(), test)["top1"]
            artifacts.write_json(out / "result.json", {"arch": arch.to_dict(), "test_error": err})
            errors[out.name] = err
    return errors


def evaluate(run: NSSRun) -> dict:
    protocol = artifacts.read_json(run.dir / "search" / "protocol.json")
    elites = artifacts.read_json(run.dir / "search" / "elite_spaces.json")
    rows = []
    for target in run.targets:
        row = {"target_mflops": target, "elite_bounds": elites[_tag(target)]["bounds"]}
        for source in SOURCES:
            rec = protocol[_tag(target)][source]
            res = run.dir / "retrain" / f"{_tag(target)}_{source}" / "result.json"
            trained = artifacts.read_json(res) if res.exists() else None
            if trained is not None and trained["arch"] != rec["arch"]:
                trained = None  # trained for an older protocol: not this network's error
            row[source] = {"found": rec["found"], "samples": rec["samples_mean"], "mflops": rec["mflops"],
                           "delta_pct": rec["delta_pct_mean"], "found_rate": rec["found_rate"],
                           "test_error_pct": 100 * trained["test_error"] if trained else None}
        rows.append(row)
    mean = lambda src, key: sum(r[src][key] for r in rows) / len(rows)  # noqa: E731
    summary = {src: {"samples": mean(src, "samples"), "delta_pct": mean(src, "delta_pct")} for src in SOURCES}
    for src in SOURCES:
        errs = [r[src]["test_error_pct"] for r in rows if r[src]["test_error_pct"] is not None]
        summary[src]["test_error_pct"] = sum(errs) / len(errs) if errs else None
    results = {"experiment": run.cfg.name, "method": "nss", "seed": run.cfg.seed, "space": run.space.name,
               "tolerance": run.cfg.search.tolerance, "repeats": run.cfg.search.repeats, "rows": rows,
               "average": summary}
    artifacts.write_json(run.dir / "results.json", results)
    artifacts.write_text(run.dir / "report.md", report(results))
    return results


def report(r: dict) -> str:
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    lines = [f"# nasx run: {r['experiment']} (NSS)", "",
             f"Space `{r['space']}`, seed {r['seed']}; a network is *found* when its MFLOPs are within "
             f"{100 * r['tolerance']:g} % of the target. Samples and |Δ| are means over {r['repeats']} runs of the "
             f"protocol; MFLOPs and error are those of the first run's network, trained standalone.", "",
             "| target MFLOPs | elite space (d_lo, d_hi, w_lo, w_hi) per stage | elite: MFLOPs (|Δ| %) | samples | "
             "error % | expanded: MFLOPs (|Δ| %) | samples | error % |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        e, x = row["elite"], row["expanded"]
        bounds = "; ".join("({}, {}, {}, {})".format(*b) for b in row["elite_bounds"])
        miss = lambda rec: "" if rec["found_rate"] == 1 else f" (found in {100 * rec['found_rate']:.0f} %)"  # noqa
        lines.append(f"| {row['target_mflops']:g} | {bounds} | {e['mflops']:.3f} ({e['delta_pct']:.1f} %) | "
                     f"{e['samples']:.1f}{miss(e)} | {fmt(e['test_error_pct'], '.2f')} | "
                     f"{x['mflops']:.3f} ({x['delta_pct']:.1f} %) | {x['samples']:.1f}{miss(x)}"
                     f" | {fmt(x['test_error_pct'], '.2f')} |")
    a = r["average"]
    lines.append(f"| average | | ({a['elite']['delta_pct']:.1f} %) | {a['elite']['samples']:.1f} | "
                 f"{fmt(a['elite']['test_error_pct'], '.2f')} | ({a['expanded']['delta_pct']:.1f} %) | "
                 f"{a['expanded']['samples']:.1f} | {fmt(a['expanded']['test_error_pct'], '.2f')} |")
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


def run_nss(cfg: DictConfig) -> dict:
    r = start(cfg, NSSRun)
    results = {}
    for stage in STAGES:
        if stage not in cfg.stages:
            continue
        log.info("stage %s", stage)
        if stage == "train":
            train(r)
        elif stage == "search":
            search(r)
        elif stage == "retrain":
            retrain(r)
        else:
            results = evaluate(r)
    return results
