"""How well does a MixPath supernet rank architectures? (MixPath's ranking study, METHODS.md §5.)

Samples N architectures of the CPU-sized S1 space, trains each standalone on the embedded digits with a short
fixed schedule (the ground truth), trains two supernets — shadow BN and plain BN — and reports Kendall τ (scipy)
between the ground truth and each supernet's predicted accuracy, before and after BN calibration.

    python experiments/mixpath/ranking.py      # N = 24 on a 10 % training subset: experiments/mixpath/RESULTS.md
    python experiments/mixpath/ranking.py --train-fraction 1 --gt-epochs 4 --gt-seeds 2 --supernet-epochs 60   # full split

Every trained model's accuracy is kept in ``--out`` (JSON, written atomically after each model), so an interrupted
run resumes where it stopped. The supernets and standalone models use nasx's own training systems.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import lightning as L
import torch
from scipy.stats import kendalltau

from nasx import artifacts
from nasx.data.digits import DigitsDataModule
from nasx.evaluation import ClassificationEvaluator, classification_metrics
from nasx.spaces.mixpath_ib import MixPathIBSpace
from nasx.training.base import fit_quiet
from nasx.training.standalone import StandaloneTraining
from nasx.training.supernet import SupernetTraining

S1_CPU = dict(name="mixpath_s1_cpu", widths=[8, 12, 12, 16, 16, 16, 24, 24, 24, 32, 32, 40],
              strides=[1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1], kernels=[3, 5, 7, 9], expansions=[3, 6],
              stem_channels=8, last_channels=64, input_size=16, in_channels=1, num_classes=10,
              zero_init_residual=True)  # = conf/space/mixpath_s1_cpu.yaml
OPTIM = dict(lr=0.05, momentum=0.9, weight_decay=4e-5, nesterov=True, schedule="cosine")  # = mixpath_digits




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="architectures sampled (≥ 20)")
    ap.add_argument("--max-paths", type=int, default=2, help="m, the most paths active per layer")
    ap.add_argument("--gt-epochs", type=int, default=15, help="standalone epochs per architecture (ground truth)")
    ap.add_argument("--gt-seeds", type=int, default=3, help="ground-truth trainings per architecture, averaged")
    ap.add_argument("--supernet-epochs", type=int, default=600)
    ap.add_argument("--train-fraction", type=float, default=0.1,
                    help="seeded share of the digits' training split that every model trains on")
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="experiments/mixpath/ranking.json")
    args = ap.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    out = Path(args.out)
    state = _load(out, args)
    data = DigitsDataModule(seed=args.seed, image_size=16, batch_size=32)
    data.setup()
    if args.train_fraction < 1:  # a seeded subset: on the full split every arch reaches ~97 % and seeds set the order
        x, y = data._raw["train"]
        g = torch.Generator().manual_seed(args.seed)
        keep = torch.randperm(len(y), generator=g)[:round(args.train_fraction * len(y))]
        data._raw["train"] = (x[keep], y[keep])
    tag = f"f{args.train_fraction:g}"
    test = list(data.test_dataloader())
    space = MixPathIBSpace(**S1_CPU, max_paths=args.max_paths)
    rng = random.Random(args.seed)
    archs = []
    while len(archs) < args.n:  # distinct archs, uniform over the space's encodings
        a = space.sample(rng)
        if a not in archs:
            archs.append(a)

    t0 = time.time()
    for s in range(args.gt_seeds):  # ground truth: each arch trained from scratch, averaged over seeds
        done = state["ground_truth"].setdefault(f"{args.gt_epochs}e:{tag}:s{args.seed + 1 + s}", {})
        for i, arch in enumerate(archs):
            if str(arch) in done:
                continue
            L.seed_everything(args.seed + 1 + s, verbose=False)
            model = space.supernet().extract(arch)  # fresh weights
            fit_quiet(StandaloneTraining(model, **OPTIM), data, args.gt_epochs, args.seed + 1 + s)
            done[str(arch)] = classification_metrics(model.eval(), test)["top1"]
            artifacts.write_json(out, state)
            print(f"ground truth {i + 1}/{args.n} (seed {args.seed + 1 + s}): {done[str(arch)]:.4f} "
                  f"({space.cost(arch).mflops:.2f} MFLOPs, {time.time() - t0:.0f} s)", flush=True)

    calibration = data.calibration_batches(args.bn_batches, 64)
    for shadow in (True, False):
        name = "shadow" if shadow else "plain"
        keys = {cal: f"{args.supernet_epochs}e:{tag}:{name},{cal}" for cal in ("before", "after")}
        if all(k in state["predicted"] for k in keys.values()):
            continue
        sp = MixPathIBSpace(**S1_CPU, max_paths=args.max_paths, shadow_bn=shadow)
        net = sp.supernet()
        t = time.time()
        fit_quiet(SupernetTraining(net, sp, seed=args.seed, **OPTIM), data, args.supernet_epochs, args.seed)
        print(f"supernet ({name} BN): {time.time() - t:.0f} s", flush=True)
        for cal, flag in (("before", False), ("after", True)):
            ev = ClassificationEvaluator(net, calibration, test, calibrate=flag)
            state["predicted"][keys[cal]] = {str(a): ev.evaluate(sp.arch(a.choices()))["top1"] for a in archs}
        artifacts.write_json(out, state)

    runs = [state["ground_truth"][f"{args.gt_epochs}e:{tag}:s{args.seed + 1 + s}"] for s in range(args.gt_seeds)]
    gt = [sum(r[str(a)] for r in runs) / len(runs) for a in archs]
    rows = []
    for setting in ("shadow,after", "plain,after", "shadow,before", "plain,before"):
        pred = state["predicted"][f"{args.supernet_epochs}e:{tag}:{setting}"]
        p = [pred[str(a)] for a in archs]
        tau, pval = kendalltau(gt, p)
        rows.append({"setting": setting, "tau": float(tau), "p": float(pval), "mean_pred": sum(p) / len(p)})
    if args.gt_seeds > 1:  # how well the ground truth ranks itself: the noise ceiling of any τ above
        tau_gt = kendalltau([runs[0][str(a)] for a in archs], [runs[1][str(a)] for a in archs])[0]
        rows.append({"setting": "ground truth seed 1 vs seed 2", "tau": float(tau_gt), "p": float("nan"),
                     "mean_pred": float("nan")})
    state["summary"] = {"args": vars(args), "kendall": rows, "ground_truth_range": [min(gt), max(gt)]}
    artifacts.write_json(out, state)
    print(f"\nKendall τ between standalone top-1 ({args.gt_epochs} epochs, mean of {args.gt_seeds} seeds, range "
          f"{min(gt):.3f}–{max(gt):.3f}) and supernet top-1, {args.n} archs of S1-cpu (m = {args.max_paths}):")
    print(f"{'setting':32s} {'tau':>7s} {'p':>8s} {'mean predicted top-1':>22s}")
    for r in rows:
        print(f"{r['setting']:32s} {r['tau']:7.3f} {r['p']:8.4f} {r['mean_pred']:22.3f}")


def _load(out: Path, args) -> dict:
    """Every trained model's accuracy from earlier runs, keyed by its schedule and seed (an interrupted or changed
    run reuses what it can). Also reads the first version's flat layout."""
    state = json.loads(out.read_text()) if out.exists() else {}
    if "key" in state:  # first layout: one key for the whole run
        k = dict(p.split("=") for p in state["key"].split(","))
        state = {"ground_truth": {f"{k['gt']}e:f1:s{int(k['seed']) + 1}": state["ground_truth"]},
                 "predicted": {f"{k['sn']}e:f1:{s}": v for s, v in state["predicted"].items()}}
    state.setdefault("ground_truth", {})
    state.setdefault("predicted", {})
    return state


if __name__ == "__main__":
    main()
