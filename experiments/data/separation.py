"""Does cluttered digits separate architectures? Seed-to-seed agreement of a standalone ground truth.

Reads the ground truth that ``experiments/mixpath/ranking.py`` trained (24 archs of ``shufflenet_cpu`` or
``mixpath_s1_cpu``, each trained standalone on two seeds) and reports Kendall τ between the seeds with a bootstrap
95 % interval over archs, the spread of the seed-mean accuracies, the per-arch seed gaps, and a plot
(``separation_shufflenet.png``: seed 1 against seed 2, coloured by MFLOPs).

    # the ground truth (two processes, one per seed; ~2.5-5 min per model at 1 thread), then the summary:
    python experiments/mixpath/ranking.py --space shufflenet_cpu --sample stratified --gt-epochs 10 --lr 0.2 \\
        --batch-size 128 --gt-seed-index 0 --out experiments/data/separation_shufflenet.json &
    python experiments/mixpath/ranking.py --space shufflenet_cpu --sample stratified --gt-epochs 10 --lr 0.2 \\
        --batch-size 128 --gt-seed-index 1 --out experiments/data/separation_shufflenet.json; wait
    python experiments/mixpath/ranking.py --space shufflenet_cpu --sample stratified --gt-epochs 10 --lr 0.2 \\
        --batch-size 128 --gt-only --out experiments/data/separation_shufflenet.json
    python experiments/data/separation.py
    # the S1 ground truth of the cluttered ranking benchmark (experiments/mixpath/RESULTS.md §3):
    python experiments/data/separation.py --json experiments/mixpath/ranking_cluttered.json \\
        --out-stem experiments/data/separation_s1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "mixpath"))
sys.path.insert(0, str(ROOT))

from nasx import artifacts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(ROOT / "experiments/data/separation_shufflenet.json"))
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32, help="mixpath_s1_cpu: the input size its MFLOPs are at")
    ap.add_argument("--stem-stride", type=int, default=2, help="mixpath_s1_cpu: the stem's stride (ranking.py's)")
    ap.add_argument("--out-stem", help="write <out-stem>_summary.json and <out-stem>.png (default: next to --json, "
                                       "named after it)")
    args = ap.parse_args()
    state = artifacts.read_json(Path(args.json))
    runs = list(state["ground_truth"].items())
    if len(runs) != 2:
        raise SystemExit(f"{args.json}: expected the ground truth of two seeds, found {len(runs)}")
    (k1, r1), (k2, r2) = runs
    archs = [a for a in r1 if a in r2]
    a = np.array([r1[x] for x in archs])
    b = np.array([r2[x] for x in archs])
    from nasx.arch import Arch
    from nasx.spaces.shufflenet import ShuffleNetSpace
    from ranking import S1_CPU, SHUFFLENET_CPU, s1_cluttered

    name = archs[0].split(":", 1)[0]  # the space the archs were drawn from
    if name == SHUFFLENET_CPU["name"]:
        space = ShuffleNetSpace(**SHUFFLENET_CPU)
    elif name == S1_CPU["name"]:  # the cluttered geometry of experiments/mixpath/ranking.py
        space = s1_cluttered(args.image_size, args.stem_stride)
    else:
        raise SystemExit(f"{args.json}: archs of an unknown space '{name}'")
    mflops = np.array([space.cost(space.validate(Arch.from_str(x, where="json"))).mflops for x in archs])
    tau = float(kendalltau(a, b)[0])
    rng = np.random.default_rng(args.seed)
    boot = []
    for _ in range(args.resamples):
        i = rng.integers(0, len(a), len(a))
        t = kendalltau(a[i], b[i])[0]
        if not np.isnan(t):
            boot.append(t)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    mean = (a + b) / 2
    gaps = np.abs(a - b)
    tau_cost = float(kendalltau(mflops, mean)[0])
    summary = {"archs": len(archs), "seed_tau": tau, "seed_tau_ci95": [float(lo), float(hi)],
               "spread_of_seed_mean": float(mean.max() - mean.min()), "range": [float(mean.min()), float(mean.max())],
               "seed_gap_median": float(np.median(gaps)), "seed_gap_max": float(gaps.max()),
               "seed_gaps_over_3_points": int((gaps > 0.03).sum()), "tau_mflops_vs_mean": tau_cost,
               "mflops_range": [float(mflops.min()), float(mflops.max())],
               "models_seconds": state.get("gt_summary", {})}
    print(f"{len(archs)} archs of {name} ({mflops.min():.2f}–{mflops.max():.2f} MFLOPs), {k1} vs {k2}")
    print(f"seed-to-seed Kendall τ {tau:.3f}, 95 % bootstrap CI [{lo:.3f}, {hi:.3f}] over archs")
    print(f"spread of the seed-mean test top-1: {100 * (mean.max() - mean.min()):.1f} points "
          f"({100 * mean.min():.1f}–{100 * mean.max():.1f} %)")
    print(f"seed gap: median {100 * np.median(gaps):.1f} points, max {100 * gaps.max():.1f}, "
          f"{int((gaps > 0.03).sum())} archs over 3 points")
    print(f"Kendall τ of MFLOPs against the seed-mean accuracy: {tau_cost:.3f}")
    stem = Path(args.out_stem) if args.out_stem else Path(args.json).with_suffix("")
    out, png = stem.with_name(f"{stem.name}_summary.json"), stem.with_name(f"{stem.name}.png")
    artifacts.write_json(out, {"command": "python experiments/data/separation.py " + " ".join(sys.argv[1:]), **summary,
                               "per_arch": [{"arch": x, "mflops": float(m), "seed_a": float(p), "seed_b": float(q)}
                                            for x, m, p, q in zip(archs, mflops, a, b)]})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    sc = ax.scatter(100 * a, 100 * b, c=mflops, cmap="viridis", s=40)
    lims = [100 * min(a.min(), b.min()) - 1, 100 * max(a.max(), b.max()) + 1]
    ax.plot(lims, lims, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"test top-1 %, seed 1")
    ax.set_ylabel(f"test top-1 %, seed 2")
    ax.set_title(f"cluttered digits, {len(archs)} {name} archs\nseed-to-seed τ = {tau:.2f} "
                 f"[{lo:.2f}, {hi:.2f}]", fontsize=9)
    fig.colorbar(sc, label="MFLOPs")
    artifacts.save_figure(fig, png)
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
