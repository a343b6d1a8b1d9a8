"""What weight sharing costs: supernet vs the same arch as an extracted static module, measured in one run.

Prints JSON with, over ``--archs`` sampled architectures at batch ``--batch``:

* ``train_step_ratio``: median over archs of (supernet training step) / (static module training step), each the
  median of ``--reps`` interleaved timings. A supernet step = sampling the step's arch from (seed, step), forward
  through ``supernet(x, arch)``, backward, ``SlicedSGD`` step; a static step = forward, backward, ``torch.optim.SGD``
  step with the same hyper-parameters.
* ``eval_ratio``: median over archs of (one candidate evaluation: ``extract`` + BN recalibration over
  ``--bn-batches`` batches + validation) / (the same forward passes done by an already-extracted static module).

Usage: ``python benchmarks/supernet_overhead.py [--space full|cpu] [--archs 7] [--reps 7]``. ``full`` is the
SPOS ShuffleNet at width 1.0 (stage widths 64-640) on 32×32 inputs with a stride-1 stem; ``cpu`` is the
``shufflenet_cpu`` preset of the embedded experiments.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F

from nasx.arch import step_rng
from nasx.evaluation import bn_recalibrate, classification_metrics
from nasx.spaces.shufflenet import ShuffleNetSpace
from nasx.training.optim import SlicedSGD, param_groups

SPACES = {
    "full": dict(name="shufflenet_spos_32px", input_size=32, stem_stride=1, in_channels=3, num_classes=10),
    "cpu": dict(name="shufflenet_cpu", stage_repeats=(2, 2, 2, 2), stage_channels=(16, 32, 64, 128), stem_channels=8,
                last_channels=128,
                input_size=32, stem_stride=1, in_channels=1, num_classes=10),
}
OPTIM = dict(lr=0.01, momentum=0.9, nesterov=True)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", choices=sorted(SPACES), default="full")
    ap.add_argument("--archs", type=int, default=7)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    space = ShuffleNetSpace(**SPACES[args.space])
    supernet = space.supernet().train()
    sup_opt = SlicedSGD(param_groups(supernet, 4e-5), **OPTIM)
    c, s = space.in_channels, space.input_size
    x, y = torch.randn(args.batch, c, s, s), torch.randint(0, space.num_classes, (args.batch,))
    calib = [(torch.randn(args.batch, c, s, s), None) for _ in range(args.bn_batches)]
    val = [(torch.randn(args.batch, c, s, s), torch.randint(0, space.num_classes, (args.batch,)))
           for _ in range(args.val_batches)]

    rng = random.Random(args.seed)
    train_ratios, eval_ratios, rows = [], [], []
    step = 0
    for _ in range(args.archs):
        arch = space.sample(rng)
        static = supernet.extract(arch).train()
        static_eval = supernet.extract(arch)  # a separate copy: recalibration leaves a module in eval mode
        st_opt = torch.optim.SGD(param_groups(static, 4e-5), **OPTIM)

        def supernet_step():
            nonlocal step
            supernet.train()
            space.sample(step_rng(args.seed, step))  # the sampling a real step does
            step += 1
            sup_opt.zero_grad(set_to_none=True)
            F.cross_entropy(supernet(x, arch), y).backward()
            sup_opt.step()

        def static_step():
            static.train()
            st_opt.zero_grad(set_to_none=True)
            F.cross_entropy(static(x), y).backward()
            st_opt.step()

        def candidate_eval():
            with torch.no_grad():
                classification_metrics(bn_recalibrate(supernet.extract(arch), calib), val)

        def static_forwards():
            with torch.no_grad():
                classification_metrics(bn_recalibrate(static_eval, calib), val)

        for fn in (supernet_step, static_step, candidate_eval, static_forwards):  # warm-up
            fn()
        t_sup, t_st, t_ev, t_fw = [], [], [], []
        for _ in range(args.reps):  # interleaved so that machine noise hits both sides alike
            t_sup.append(timed(supernet_step))
            t_st.append(timed(static_step))
            t_ev.append(timed(candidate_eval))
            t_fw.append(timed(static_forwards))
        m = {k: statistics.median(v) for k, v in
             dict(sup=t_sup, st=t_st, ev=t_ev, fw=t_fw).items()}
        train_ratios.append(m["sup"] / m["st"])
        eval_ratios.append(m["ev"] / m["fw"])
        rows.append({"arch": str(arch), "mflops": round(space.cost(arch).mflops, 3),
                     "supernet_step_ms": round(1e3 * m["sup"], 2), "static_step_ms": round(1e3 * m["st"], 2),
                     "eval_ms": round(1e3 * m["ev"], 2), "static_forwards_ms": round(1e3 * m["fw"], 2),
                     "train_step_ratio": round(train_ratios[-1], 4), "eval_ratio": round(eval_ratios[-1], 4)})

    print(json.dumps({
        "benchmark": "supernet_overhead", "space": space.name, "batch": args.batch, "archs": args.archs,
        "reps": args.reps, "bn_batches": args.bn_batches, "val_batches": args.val_batches,
        "train_step_ratio": round(statistics.median(train_ratios), 4),
        "eval_ratio": round(statistics.median(eval_ratios), 4),
        "targets": {"train_step_ratio": 1.10, "eval_ratio": 1.10},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "per_arch": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
