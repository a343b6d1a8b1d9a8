"""How well does a MixPath supernet rank architectures? (MixPath's ranking study, METHODS.md §5.)

Samples N architectures of a CPU-sized space, trains each standalone with a short fixed schedule (the ground truth),
trains two supernets — shadow BN and plain BN — and reports Kendall τ (scipy) between the ground truth and each
supernet's predicted accuracy, before and after BN calibration, each with a bootstrap interval, and a paired
bootstrap of τ(shadow) − τ(plain).

Two data sets (``--data``):

* ``cluttered`` (default; nasx/data/cluttered.py): 32x32 RGB, 18k train / 2k val / 10k test, used at the space's
  input size. Results go to ``experiments/mixpath/ranking_cluttered.json``.
* ``digits``: the embedded 8x8 digits on a 10 % training subset, the first version of this benchmark
  (experiments/mixpath/RESULTS.md §2). Results go to ``experiments/mixpath/ranking.json`` with its original keys.

    python experiments/mixpath/ranking.py --data digits      # RESULTS.md §2 (N = 24, 10 % subset)
    python experiments/mixpath/ranking.py --gt-only          # cluttered: ground truth only, seed-to-seed τ and spread
    python experiments/mixpath/ranking.py --space shufflenet_cpu --gt-only   # the same for 24 ShuffleNet archs

Two cores: ``--gt-seed-index i`` trains only ground-truth seed i and writes a part file next to ``--out``
(``<out stem>.part-gt<i>.json``); ``--supernet shadow|plain`` trains only that supernet into its own part file. A
later run without them merges every part file and does what is still missing:

    python experiments/mixpath/ranking.py --gt-seed-index 0 & python experiments/mixpath/ranking.py --gt-seed-index 1; wait
    python experiments/mixpath/ranking.py --supernet shadow & python experiments/mixpath/ranking.py --supernet plain; wait
    python experiments/mixpath/ranking.py                     # merges, prints the table

Every trained model's accuracy (and its training seconds) is kept in ``--out`` (JSON, written atomically after each
model), so an interrupted run resumes where it stopped. The supernets and standalone models use nasx's own training
systems. Torch runs on ``--threads`` threads (1 by default: one process per core).
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from scipy.stats import kendalltau

from nasx import artifacts
from nasx.data.cluttered import ClutteredDigitsDataModule
from nasx.data.digits import DigitsDataModule
from nasx.evaluation import ClassificationEvaluator, classification_metrics
from nasx.spaces.mixpath_ib import MixPathIBSpace
from nasx.spaces.shufflenet import ShuffleNetSpace
from nasx.training.base import fit_quiet
from nasx.training.standalone import StandaloneTraining
from nasx.training.supernet import SupernetTraining

ROOT = Path(__file__).resolve().parents[2]  # the repository
S1_CPU = dict(name="mixpath_s1_cpu", widths=[8, 12, 12, 16, 16, 16, 24, 24, 24, 32, 32, 40],
              strides=[1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1], kernels=[3, 5, 7, 9], expansions=[3, 6],
              stem_channels=8, last_channels=64, input_size=16, in_channels=1, num_classes=10,
              zero_init_residual=True)  # = conf/space/mixpath_s1_cpu.yaml
SHUFFLENET_CPU = dict(name="shufflenet_cpu", stage_repeats=[2, 2, 2, 2], stage_channels=[16, 32, 64, 128],
                      stem_channels=8, last_channels=128, width_scale=1.0,
                      mid_scales=[0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0], input_size=32, stem_stride=1,
                      dropout=0.1, in_channels=3, num_classes=10)  # = conf/space/shufflenet_cpu.yaml (+ _spos)
OPTIM = dict(lr=0.05, momentum=0.9, weight_decay=4e-5, nesterov=True, schedule="cosine")  # = mixpath_digits


def s1_cluttered(image_size: int = 32, stem_stride: int = 2, max_paths: int = 2, shadow: bool = True) -> MixPathIBSpace:
    """The CPU-sized S1 at the cluttered benchmark's geometry: RGB input of ``image_size`` px, a stride-``stem_stride``
    stem (the defaults are ``DEFAULTS["cluttered"]``'s)."""
    return MixPathIBSpace(**{**S1_CPU, "in_channels": 3, "input_size": image_size, "stem_stride": stem_stride},
                          max_paths=max_paths, shadow_bn=shadow)


SETTINGS = ("shadow,after", "plain,after", "shadow,before", "plain,before")
# per data set: the defaults of the options left unset (digits: the first version's, so ranking.json still reads)
DEFAULTS = {
    "digits": dict(space="mixpath_s1_cpu", gt_epochs=15, gt_seeds=3, supernet_epochs=600, lr=0.05, batch_size=32,
                   sample="uniform", stem_stride=1,
                   out="experiments/mixpath/ranking.json"),
    # cluttered, S1 (experiments/mixpath/RESULTS.md §3, run 2026-12-03/04): 32 px with a stride-2 stem, 24 archs
    # evenly spaced in MFLOPs, 5 standalone epochs per arch and seed on all 18,000 training images (what fitted the
    # session). Supernets 60 epochs (16,860 steps): at 12 they stayed at chance (supernet_takeoff.py: the random-path
    # supernet only starts to leave chance loss after ~3,000 steps).
    "cluttered": dict(space="mixpath_s1_cpu", gt_epochs=5, gt_seeds=2, supernet_epochs=60, lr=0.1, batch_size=64,
                      sample="even", image_size=32, stem_stride=2,
                      out="experiments/mixpath/ranking_cluttered.json"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=sorted(DEFAULTS), default="cluttered")
    ap.add_argument("--space", choices=("mixpath_s1_cpu", "shufflenet_cpu"),
                    help="the space sampled (digits: mixpath_s1_cpu only; shufflenet_cpu has no shadow/plain BN "
                         "supernet here, so it needs --gt-only)")
    ap.add_argument("--n", type=int, default=24, help="architectures sampled (≥ 20)")
    ap.add_argument("--max-paths", type=int, default=2, help="m, the most paths active per layer (MixPath)")
    ap.add_argument("--sample", choices=("uniform", "stratified", "even"),
                    help="uniform: distinct archs uniform over the encodings; stratified [nasx]: a pool of 50·n "
                         "uniform archs sorted by MFLOPs, cut into n equal bins, one uniform draw per bin (random "
                         "archs that cover the space's cost range instead of crowding at its middle); even [nasx]: "
                         "from the same pool, n targets evenly spaced in MFLOPs from its cheapest to its dearest arch, "
                         "the nearest unused arch to each (a wider cost range than the quantiles)")
    ap.add_argument("--gt-epochs", type=int, help="standalone epochs per architecture (ground truth)")
    ap.add_argument("--gt-seeds", type=int, help="ground-truth trainings per architecture, averaged")
    ap.add_argument("--supernet-epochs", type=int)
    ap.add_argument("--lr", type=float, help="SGD learning rate (cosine to 0), ground truth and supernets")
    ap.add_argument("--batch-size", type=int, help="training batch size, ground truth and supernets")
    ap.add_argument("--train-fraction", type=float, default=0.1,
                    help="digits: seeded share of the training split that every model trains on")
    ap.add_argument("--train-subset", type=int, default=0,
                    help="cluttered: seeded subset of the 18k training images that every model trains on (0: all)")
    ap.add_argument("--image-size", type=int, help="cluttered: input size (S1 default 32 with a stride-2 stem; "
                                                    "ShuffleNet: its 32); S1's geometry follows it")
    ap.add_argument("--stem-stride", type=int, help="cluttered, S1: stride of the stem conv")
    ap.add_argument("--data-root", default=str(ROOT / "data" / "cluttered_digits"),
                    help="cluttered: the cache directory (generated there if missing, ~10 s)")
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gt-only", action="store_true",
                    help="stop after the ground truth: print its seed-to-seed τ and accuracy spread")
    ap.add_argument("--gt-seed-index", type=int,
                    help="train only ground-truth seed i (0-based) into a part file, then stop (two processes)")
    ap.add_argument("--supernet", choices=("shadow", "plain"),
                    help="train only this supernet (ground truth must be complete) into a part file, then stop")
    ap.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (numpy seed --seed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out")
    args = ap.parse_args()
    s1_only = ("image_size", "stem_stride")  # S1's geometry; ShuffleNet keeps its own (32 px, its stem)
    explicit_space = args.space
    for key, value in DEFAULTS[args.data].items():
        if getattr(args, key) is None and not (key in s1_only and explicit_space not in (None, "mixpath_s1_cpu")):
            setattr(args, key, value)
    if args.stem_stride is None:
        args.stem_stride = 1
    if args.data == "digits" and args.space != "mixpath_s1_cpu":
        ap.error("--data digits runs the S1 space only")
    if args.space == "shufflenet_cpu" and not (args.gt_only or args.gt_seed_index is not None):
        ap.error("--space shufflenet_cpu has no shadow/plain BN supernet: use --gt-only")
    if args.gt_seed_index is not None and not 0 <= args.gt_seed_index < args.gt_seeds:
        ap.error(f"--gt-seed-index must be in 0..{args.gt_seeds - 1}")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    out = Path(args.out)
    part = (f"gt{args.gt_seed_index}" if args.gt_seed_index is not None
            else args.supernet if args.supernet is not None else None)
    state = _load(out, args)
    write_to = out if part is None else out.with_name(f"{out.stem}.part-{part}.json")

    if args.data == "digits":
        data = DigitsDataModule(seed=args.seed, image_size=16, batch_size=args.batch_size)
        data.setup()
        if args.train_fraction < 1:  # a seeded subset: on the full split every arch reaches ~97 % and seeds set the order
            x, y = data._raw["train"]
            g = torch.Generator().manual_seed(args.seed)
            keep = torch.randperm(len(y), generator=g)[:round(args.train_fraction * len(y))]
            data._raw["train"] = (x[keep], y[keep])
        tag = f"f{args.train_fraction:g}"
        sn_tag = tag
        memory_format = torch.contiguous_format
    else:
        base = S1_CPU if args.space == "mixpath_s1_cpu" else SHUFFLENET_CPU
        size = args.image_size or base["input_size"]
        data = ClutteredDigitsDataModule(root=args.data_root, image_size=size, batch_size=args.batch_size,
                                         seed=args.seed)
        data.setup()
        x, y = data._raw["train"]
        if 0 < args.train_subset < len(y):
            g = torch.Generator().manual_seed(args.seed)
            keep = torch.randperm(len(y), generator=g)[:args.train_subset]
            data._raw["train"] = (x[keep], y[keep])
        stem = f":stem{args.stem_stride}" if args.stem_stride != 1 else ""
        tag = (f"cluttered:{args.space}:{size}px{stem}:n{len(data._raw['train'][1])}:b{args.batch_size}:"
               f"lr{args.lr:g}")
        sn_tag = f"{tag}:m{args.max_paths}"
        memory_format = torch.channels_last  # 2-3x faster depthwise convs on the CPU (measured)
    test = list(data.test_dataloader())
    optim = {**OPTIM, "lr": args.lr}

    def make_space(shadow: bool = True):
        if args.space == "shufflenet_cpu":
            return ShuffleNetSpace(**{**SHUFFLENET_CPU, "input_size": size})
        if args.data == "digits":
            return MixPathIBSpace(**S1_CPU, max_paths=args.max_paths, shadow_bn=shadow)
        return s1_cluttered(size, args.stem_stride, args.max_paths, shadow)

    space = make_space()
    archs = sample_archs(space, args.n, args.seed, args.sample)

    gt_keys = [f"{args.gt_epochs}e:{tag}:s{args.seed + 1 + s}" for s in range(args.gt_seeds)]
    t0 = time.time()
    seeds = range(args.gt_seeds) if args.gt_seed_index is None else [args.gt_seed_index]
    if args.supernet is not None:  # a supernet-only process uses the ground truth that is there
        seeds = []
    for i, arch in enumerate(archs):  # ground truth: each arch trained from scratch, averaged over seeds
        trained = False
        for s in seeds:
            seed = args.seed + 1 + s
            done = state["ground_truth"].setdefault(gt_keys[s], {})
            if str(arch) in done:
                continue
            if args.data == "cluttered":
                data.seed = seed  # the batch order varies with the seed too (digits: fixed by --seed, as first run)
            L.seed_everything(seed, verbose=False)
            model = space.supernet().extract(arch).to(memory_format=memory_format)  # fresh weights
            t = time.time()
            fit_quiet(StandaloneTraining(model, **optim), data, args.gt_epochs, seed)
            done[str(arch)] = classification_metrics(model.eval(), test)["top1"]
            seconds = time.time() - t
            state["seconds"].setdefault(gt_keys[s], {})[str(arch)] = round(seconds, 2)
            artifacts.write_json(write_to, state)
            trained = True
            print(f"ground truth {i + 1}/{args.n} (seed {seed}): {done[str(arch)]:.4f} "
                  f"({space.cost(arch).mflops:.2f} MFLOPs, {seconds:.1f} s, total {time.time() - t0:.0f} s)",
                  flush=True)
        if trained and args.gt_seed_index is None and args.gt_seeds > 1:
            _gt_line(state, gt_keys, archs[:i + 1])
    if args.gt_seed_index is not None:
        return
    missing = [k for k in gt_keys if any(str(a) not in state["ground_truth"].get(k, {}) for a in archs)]
    if missing:
        raise SystemExit(f"ground truth incomplete ({', '.join(missing)}): run without --supernet first")
    runs = [state["ground_truth"][k] for k in gt_keys]
    gt = [sum(r[str(a)] for r in runs) / len(runs) for a in archs]
    gt_summary = {"ground_truth_range": [min(gt), max(gt)], "ground_truth_spread": max(gt) - min(gt),
                  "ground_truth_seconds": _seconds(state, gt_keys, archs)}
    if args.gt_seeds > 1:
        gt_summary["ground_truth_seed_tau"] = _pair_taus(runs, archs)
    if args.gt_only:
        state.setdefault("gt_summary", {})[f"{args.gt_epochs}e:{tag}"] = {"args": vars(args), **gt_summary}
        artifacts.write_json(out, state)
        print(f"\nground truth: {args.n} archs of {args.space}, {args.gt_epochs} epochs, {tag}, {args.gt_seeds} seeds")
        for pair, v in gt_summary.get("ground_truth_seed_tau", {}).items():
            print(f"  Kendall τ {pair}: {v:.3f}")
        print(f"  spread of the seed-mean test top-1: {gt_summary['ground_truth_spread']:.4f} "
              f"({min(gt):.4f}–{max(gt):.4f})")
        sec = gt_summary["ground_truth_seconds"]
        print(f"  seconds per model: mean {sec['mean']:.1f}, min {sec['min']:.1f}, max {sec['max']:.1f}, "
              f"total {sec['total']:.0f} ({torch.get_num_threads()} thread)")
        return
    calibration = data.calibration_batches(args.bn_batches, 64)
    for shadow in (True, False):
        name = "shadow" if shadow else "plain"
        if args.supernet is not None and args.supernet != name:
            continue
        keys = {cal: f"{args.supernet_epochs}e:{sn_tag}:{name},{cal}" for cal in ("before", "after")}
        if all(k in state["predicted"] for k in keys.values()):
            continue
        sp = make_space(shadow)
        net = sp.supernet().to(memory_format=memory_format)
        data.seed = args.seed
        t = time.time()
        fit_quiet(SupernetTraining(net, sp, seed=args.seed, **optim), data, args.supernet_epochs, args.seed)
        state["seconds"][f"{args.supernet_epochs}e:{sn_tag}:{name}"] = round(time.time() - t, 2)
        print(f"supernet ({name} BN): {time.time() - t:.0f} s", flush=True)
        for cal, flag in (("before", False), ("after", True)):
            t = time.time()
            ev = ClassificationEvaluator(net, calibration, test, calibrate=flag)
            state["predicted"][keys[cal]] = {str(a): ev.evaluate(sp.arch(a.choices()))["top1"] for a in archs}
            state["seconds"][keys[cal]] = round(time.time() - t, 2)
            print(f"predictions ({name} BN, calibration {cal}): {time.time() - t:.0f} s", flush=True)
        artifacts.write_json(write_to, state)
    if args.supernet is not None:
        return

    rows = []
    preds = {}
    mflops = [space.cost(a).mflops for a in archs]
    for setting in SETTINGS:
        pred = state["predicted"][f"{args.supernet_epochs}e:{sn_tag}:{setting}"]
        p = preds[setting] = [pred[str(a)] for a in archs]
        tau, pval = kendalltau(gt, p)
        rows.append({"setting": setting, "tau": float(tau), "p": float(pval), "mean_pred": sum(p) / len(p),
                     "tau_mflops": float(kendalltau(mflops, p)[0])})  # does it rank by cost alone?
    if args.gt_seeds > 1:  # how well the ground truth ranks itself: the noise ceiling of any τ above
        tau_gt = kendalltau([runs[0][str(a)] for a in archs], [runs[1][str(a)] for a in archs])[0]
        rows.append({"setting": "ground truth seed 1 vs seed 2", "tau": float(tau_gt), "p": float("nan"),
                     "mean_pred": float("nan"), "tau_mflops": float(kendalltau(mflops, gt)[0])})
    boot = _bootstrap(np.array(gt), {k: np.array(v) for k, v in preds.items()}, args.resamples, args.seed)
    for r in rows:
        if r["setting"] in boot["ci95"]:
            r["ci95"] = boot["ci95"][r["setting"]]
    summary = {"args": vars(args), "kendall": rows, "ground_truth_range": [min(gt), max(gt)],
               "paired_bootstrap_shadow_minus_plain": boot["paired"], **gt_summary}
    if args.data == "digits":
        state["summary"] = summary
    else:
        state.setdefault("summaries", {})[f"{args.gt_epochs}e:{args.supernet_epochs}e:{sn_tag}"] = summary
    artifacts.write_json(out, state)
    print(f"\nKendall τ between standalone top-1 ({args.gt_epochs} epochs, mean of {args.gt_seeds} seeds, range "
          f"{min(gt):.3f}–{max(gt):.3f}) and supernet top-1, {args.n} archs of {args.space} (m = {args.max_paths}), "
          f"{args.data}:")
    print(f"{'setting':32s} {'tau':>7s} {'95% bootstrap CI':>18s} {'p':>8s} {'mean predicted top-1':>22s} "
          f"{'tau vs MFLOPs':>14s}")
    for r in rows:
        ci = f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]" if "ci95" in r else ""
        print(f"{r['setting']:32s} {r['tau']:7.3f} {ci:>18s} {r['p']:8.4f} {r['mean_pred']:22.3f} "
              f"{r['tau_mflops']:14.3f}")
    for cal, b in boot["paired"].items():
        print(f"paired bootstrap τ(shadow) − τ(plain), calibration {cal}: observed {b['observed']:+.3f}, 95 % CI "
              f"[{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}], P(diff ≤ 0) = {b['p_one_sided_diff_le_0']:.3f}")
    if args.data != "digits":
        png = out.with_suffix(".png")
        _plot(gt, preds, rows, mflops, png,
              f"{args.n} archs of {args.space}, cluttered digits {size} px; ground truth {args.gt_epochs} epochs × "
              f"{args.gt_seeds} seeds, supernets {args.supernet_epochs} epochs")
        print(f"wrote {png}")


def _plot(gt: list[float], preds: dict[str, list[float]], rows: list[dict], mflops: list[float], png: Path,
          title: str) -> None:
    """Ground truth against each supernet setting's prediction (one panel per setting), coloured by MFLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tau = {r["setting"]: r for r in rows}
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(3.4 * len(SETTINGS), 3.4), sharex=True)
    fig.subplots_adjust(wspace=0.35)
    for ax, setting in zip(axes, SETTINGS):
        sc = ax.scatter([100 * g for g in gt], [100 * p for p in preds[setting]], c=mflops, cmap="viridis", s=22)
        r = tau[setting]
        ci = f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if "ci95" in r else ""
        bn, cal = setting.split(",")
        ax.set_title(f"{bn} BN, {cal} calibration\nτ = {r['tau']:.2f}{ci}", fontsize=9)
        ax.set_xlabel("standalone test top-1 % (seed mean)", fontsize=8)
    axes[0].set_ylabel("supernet test top-1 %", fontsize=8)
    fig.colorbar(sc, ax=axes, label="MFLOPs", shrink=0.8)
    ceiling = tau.get("ground truth seed 1 vs seed 2", {}).get("tau", float("nan"))
    fig.suptitle(f"{title}\nthe paper (MixPath, NAS-Bench-101 S4, shadow BN after calibration): τ = 0.597; "
                 f"the ground truth's own seed-to-seed τ here: {ceiling:.2f}", fontsize=9, y=1.08)
    artifacts.save_figure(fig, png)
    plt.close(fig)


def sample_archs(space, n: int, seed: int, how: str = "uniform") -> list:
    """n distinct archs (random.Random(seed)): uniform over the encodings, or stratified or evenly spaced over MFLOPs
    (see --sample)."""
    rng = random.Random(seed)
    size = n if how == "uniform" else 50 * n
    pool = []
    seen = set()
    while len(pool) < size:
        a = space.sample(rng)
        if str(a) not in seen:
            seen.add(str(a))
            pool.append(a)
    if how == "uniform":
        return pool
    pool.sort(key=lambda a: (space.cost(a).mflops, str(a)))
    if how == "stratified":
        return [pool[b * size // n + rng.randrange(size // n)] for b in range(n)]
    # even: n targets evenly spaced in MFLOPs from the pool's cheapest to its dearest arch, the nearest unused arch each
    cost = np.array([space.cost(a).mflops for a in pool])
    picked: list[int] = []
    for target in np.linspace(cost[0], cost[-1], n):
        order = np.argsort(np.abs(cost - target), kind="stable")
        picked.append(next(int(j) for j in order if int(j) not in picked))
    return [pool[j] for j in picked]


def _pair_taus(runs: list[dict], archs) -> dict[str, float]:
    """Kendall τ between the ground-truth accuracies of every pair of seeds."""
    return {f"seed {i + 1} vs seed {j + 1}": float(kendalltau([runs[i][str(a)] for a in archs],
                                                               [runs[j][str(a)] for a in archs])[0])
            for i in range(len(runs)) for j in range(i + 1, len(runs))}


def _gt_line(state: dict, keys: list[str], archs) -> None:
    """Running seed-to-seed τ and spread over the archs with every seed done (printed while the ground truth runs)."""
    runs = [state["ground_truth"].get(k, {}) for k in keys]
    done = [a for a in archs if all(str(a) in r for r in runs)]
    if len(done) < 4:
        return
    mean = [sum(r[str(a)] for r in runs) / len(runs) for a in done]
    taus = _pair_taus(runs, done)
    print(f"  {len(done)} archs: seed-to-seed τ {', '.join(f'{v:.3f}' for v in taus.values())}, "
          f"spread {max(mean) - min(mean):.4f}", flush=True)


def _seconds(state: dict, keys: list[str], archs) -> dict:
    """Training + test seconds per ground-truth model (those timed)."""
    s = [state["seconds"][k][str(a)] for k in keys for a in archs if str(a) in state["seconds"].get(k, {})]
    if not s:
        return {"models": 0, "mean": float("nan"), "min": float("nan"), "max": float("nan"), "total": 0.0}
    return {"models": len(s), "mean": sum(s) / len(s), "min": min(s), "max": max(s), "total": sum(s)}


def _bootstrap(gt: np.ndarray, preds: dict[str, np.ndarray], resamples: int, seed: int) -> dict:
    """Archs resampled with replacement (numpy default_rng(seed), τ-b): a 95 % percentile interval of each setting's
    τ, and the paired interval of τ(shadow) − τ(plain) per calibration (the same resample for both), with the
    one-sided P = share of resamples where the difference is ≤ 0 (as experiments/mixpath/bootstrap_ranking.py)."""
    rng = np.random.default_rng(seed)
    n = len(gt)
    taus = {k: np.empty(resamples) for k in preds}
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        for k, p in preds.items():
            taus[k][b] = kendalltau(gt[idx], p[idx])[0]
    ci = {k: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for k, v in taus.items()}
    paired = {}
    for cal in ("after", "before"):
        d = taus[f"shadow,{cal}"] - taus[f"plain,{cal}"]
        d = d[~np.isnan(d)]
        le, ge = float(np.mean(d <= 0)), float(np.mean(d >= 0))
        paired[cal] = {"observed": float(kendalltau(gt, preds[f"shadow,{cal}"])[0]
                                         - kendalltau(gt, preds[f"plain,{cal}"])[0]),
                       "resamples_used": int(d.size), "ci95": [float(np.percentile(d, 2.5)),
                                                               float(np.percentile(d, 97.5))],
                       "p_one_sided_diff_le_0": le, "p_two_sided": min(1.0, 2 * min(le, ge))}
    return {"ci95": ci, "paired": paired}


def _load(out: Path, args) -> dict:
    """Every trained model's accuracy from earlier runs, keyed by its schedule and seed (an interrupted or changed
    run reuses what it can), merged with the part files of ``--gt-seed-index`` / ``--supernet`` runs next to it.
    Also reads the first version's flat layout."""
    state = json.loads(out.read_text()) if out.exists() else {}
    if "key" in state:  # first layout: one key for the whole run
        k = dict(p.split("=") for p in state["key"].split(","))
        state = {"ground_truth": {f"{k['gt']}e:f1:s{int(k['seed']) + 1}": state["ground_truth"]},
                 "predicted": {f"{k['sn']}e:f1:{s}": v for s, v in state["predicted"].items()}}
    for section in ("ground_truth", "predicted", "seconds"):
        state.setdefault(section, {})
    for path in sorted(out.parent.glob(f"{out.stem}.part-*.json")):
        part = json.loads(path.read_text())
        for section in ("ground_truth", "predicted", "seconds"):
            for key, value in part.get(section, {}).items():
                if isinstance(value, dict):
                    state[section].setdefault(key, {}).update(
                        {a: v for a, v in value.items() if a not in state[section].get(key, {})})
                else:
                    state[section].setdefault(key, value)
    return state


if __name__ == "__main__":
    main()
