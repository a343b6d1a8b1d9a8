"""Noise ceiling and a paired bootstrap for the MixPath ranking table (experiments/mixpath/RESULTS.md, section 2).

Reads ``ranking.json`` (written by ``experiments/mixpath/ranking.py``) and prints, for the 10 % subset run:

* the ground truth's noise ceiling: Kendall τ between the standalone top-1 of every pair of ground-truth seeds
  (1-2, 1-3, 2-3), their mean and range;
* τ(supernet prediction, seed-averaged ground truth) for shadow and plain BN, after and before BN calibration
  (the table's numbers, recomputed);
* a paired bootstrap of τ(shadow) − τ(plain): the 24 archs are resampled with replacement (the same resample for
  both predictors), ``--resamples`` times with a fixed seed; τ is scipy's tau-b, which handles the ties that
  duplicated archs create. Reported: the one-sided P = fraction of resamples with τ(shadow) − τ(plain) ≤ 0 (the
  bootstrap evidence against "shadow ranks better than plain"), the two-sided P = 2 · min(fraction ≤ 0,
  fraction ≥ 0) capped at 1, and the 95 % percentile interval of the difference.

    python experiments/mixpath/bootstrap_ranking.py    # also writes experiments/mixpath/ranking_bootstrap.json

numpy and scipy only.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

HERE = Path(__file__).resolve().parent


def tau(a, b) -> float:
    return float(kendalltau(a, b)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranking", default=str(HERE / "ranking.json"))
    ap.add_argument("--out", default=str(HERE / "ranking_bootstrap.json"))
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    state = json.loads(Path(args.ranking).read_text())
    s = state["summary"]["args"]
    tag = f"f{s['train_fraction']:g}"
    seeds = [f"{s['gt_epochs']}e:{tag}:s{s['seed'] + 1 + i}" for i in range(s["gt_seeds"])]
    runs = [state["ground_truth"][k] for k in seeds]
    archs = sorted(runs[0])  # the order is irrelevant to τ; all runs and predictions hold the same archs
    for r in [*runs, *(state["predicted"][f"{s['supernet_epochs']}e:{tag}:{p}"] for p in
                       ("shadow,after", "plain,after", "shadow,before", "plain,before"))]:
        assert sorted(r) == archs, "ranking.json: runs over different archs"
    gt_runs = np.array([[r[a] for a in archs] for r in runs])  # (seeds, archs)
    gt = gt_runs.mean(0)
    pred = {p: np.array([state["predicted"][f"{s['supernet_epochs']}e:{tag}:{p}"][a] for a in archs])
            for p in ("shadow,after", "plain,after", "shadow,before", "plain,before")}

    pairs = {f"seed {i + 1} vs seed {j + 1}": tau(gt_runs[i], gt_runs[j])
             for i, j in itertools.combinations(range(len(runs)), 2)}
    ceiling = {"pairs": pairs, "mean": float(np.mean(list(pairs.values()))),
               "min": float(min(pairs.values())), "max": float(max(pairs.values()))}
    taus = {p: tau(gt, v) for p, v in pred.items()}

    rng = np.random.default_rng(args.seed)
    n = len(archs)
    boot = {}
    for cal in ("after", "before"):
        sh, pl = pred[f"shadow,{cal}"], pred[f"plain,{cal}"]
        diffs = np.empty(args.resamples)
        for b in range(args.resamples):
            idx = rng.integers(0, n, n)
            diffs[b] = tau(sh[idx], gt[idx]) - tau(pl[idx], gt[idx])
        diffs = diffs[~np.isnan(diffs)]  # a resample with a constant predictor has no τ (none expected)
        le, ge = float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))
        boot[cal] = {"observed_difference": taus[f"shadow,{cal}"] - taus[f"plain,{cal}"],
                     "resamples_used": int(diffs.size), "mean_difference": float(diffs.mean()),
                     "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
                     "p_one_sided_diff_le_0": le, "p_two_sided": min(1.0, 2 * min(le, ge))}

    result = {"source": "ranking.json", "n_archs": n, "ground_truth_seeds": seeds,
              "noise_ceiling_ground_truth_seed_pairs": ceiling, "tau_vs_seed_mean_ground_truth": taus,
              "paired_bootstrap_shadow_minus_plain": {"resamples": args.resamples, "rng": "numpy default_rng",
                                                      "seed": args.seed, **boot}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"{n} archs; ground truth = mean of {len(runs)} seeds")
    print("noise ceiling (Kendall tau between ground-truth seeds):")
    for k, v in pairs.items():
        print(f"  {k}: {v:.3f}")
    print(f"  mean {ceiling['mean']:.3f}, range {ceiling['min']:.3f} to {ceiling['max']:.3f}")
    print("tau against the seed-averaged ground truth:")
    for k, v in taus.items():
        print(f"  {k:14s} {v:+.3f}")
    for cal, b in boot.items():
        print(f"paired bootstrap, tau(shadow) - tau(plain), BN calibration {cal} ({b['resamples_used']} resamples, "
              f"seed {args.seed}): observed {b['observed_difference']:+.3f}, 95 % interval "
              f"[{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}], P(diff <= 0) = {b['p_one_sided_diff_le_0']:.3f}, "
              f"two-sided P = {b['p_two_sided']:.3f}")


if __name__ == "__main__":
    main()
