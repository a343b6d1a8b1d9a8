"""What weight entanglement costs in the ViT space, and where a video step costs what an image step costs.

Prints JSON with, over ``--archs`` sampled architectures:

* ``train_step_ratio``: median over archs of (supernet training step) / (static ViT training step), each the median
  of ``--reps`` interleaved timings, on a batch of ``--batch`` images. A supernet step = sampling the step's arch
  from (seed, step), ``supernet(x, arch)``, backward, ``SlicedSGD`` step; a static step = forward, backward,
  ``torch.optim.SGD`` step with the same hyper-parameters.
* ``eval_ratio``: median over archs of (one candidate evaluation: ``extract`` + BN recalibration (a no-op: a ViT has
  no BN, kept so the sequence is the evaluator's) + ``--val-batches`` validation batches) / (the same forward passes by
  an already-extracted static ViT).
* ``video``: for the median arch by MFLOPs, a supernet training step on ``--video-batch`` clips of T frames
  (T = 1, 2, 4, … up to ``--max-frames``) against the step on ``--batch`` images, measured and as predicted by the
  MACs of ``space.cost(arch, frames=T)`` (backward ≈ 2 × forward on both sides, so the ratio of MACs predicts the
  ratio of steps); ``break_even`` interpolates (log-log between neighbouring T) the clip length at which the video
  step costs as much as the image step, as frames and as patch tokens per clip (T'·N; the class token adds one).
  The default ``--video-batch`` is a quarter of ``--batch``, as VIM-NAS's 256 clips against 1024 images
  [seed Tab. 10]; attention is quadratic in T'·N, so the measured break-even falls below the linear estimate T = 4.

Usage: ``python benchmarks/vit_overhead.py [--space cpu|t] [--archs 5] [--reps 7] [--quick]``. ``cpu`` is the
``vit_cpu`` preset (16 px, 4 px patches, 1 channel, 10 classes); ``t`` is AutoFormer-T at 224 px (3 channels,
1000 classes; meant for an accelerator, ``--device cuda``). ``--quick`` is a seconds-long smoke run whose numbers
mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F

from nasx.arch import step_rng
from nasx.evaluation import bn_recalibrate, classification_metrics
from nasx.spaces.vit import ViTSpace
from nasx.training.optim import SlicedSGD, param_groups

SPACES = {
    "cpu": dict(name="vit_cpu", embed_dims=(48, 64), depths=(2, 3, 4), num_heads=(1, 2), mlp_ratios=(1.0, 2.0, 3.0),
                head_dim=32, patch_size=4, input_size=16, in_channels=1, num_classes=10),
    "t": dict(name="vit_autoformer_t", embed_dims=(192, 216, 240), depths=(12, 13, 14), num_heads=(3, 4),
              mlp_ratios=(3.5, 4.0), head_dim=64, super_embed_dim=256, patch_size=16, input_size=224, in_channels=3,
              num_classes=1000),
}
OPTIM = dict(lr=0.01, momentum=0.9, nesterov=True)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def break_even(ts: list[int], ratios: list[float]) -> float | None:
    """The T at which the video/image ratio crosses 1, log-log interpolated between neighbouring T; None if it
    never does in the measured range."""
    for (t0, r0), (t1, r1) in zip(zip(ts, ratios), zip(ts[1:], ratios[1:])):
        if r0 <= 1.0 <= r1 and r1 > r0:
            f = (0.0 - math.log(r0)) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))
    return ts[0] if ratios and ratios[0] >= 1.0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", choices=sorted(SPACES), default="cpu")
    ap.add_argument("--archs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--video-batch", type=int, default=None, help="clips per video step (default: batch // 4)")
    ap.add_argument("--max-frames", type=int, default=16)
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 archs, 2 reps, batch 8, up to 4 frames")
    args = ap.parse_args()
    if args.quick:
        args.archs, args.reps, args.batch, args.max_frames, args.val_batches, args.bn_batches = 2, 2, 8, 4, 1, 1
    video_batch = args.video_batch or max(1, args.batch // 4)
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    space = ViTSpace(**SPACES[args.space], max_frames=args.max_frames)
    supernet = space.supernet().to(device).train()
    sup_opt = SlicedSGD(param_groups(supernet, 0.05), **OPTIM)
    c, s, k = space.in_channels, space.input_size, space.head_classes[0]
    images = lambda b: torch.randn(b, c, s, s, device=device)  # noqa: E731
    labels = lambda b: torch.randint(0, k, (b,), device=device)  # noqa: E731
    x, y = images(args.batch), labels(args.batch)
    calib = [(images(args.batch), None) for _ in range(args.bn_batches)]
    val = [(images(args.batch), labels(args.batch)) for _ in range(args.val_batches)]
    step = 0

    def supernet_step(arch, xb, yb):
        nonlocal step
        supernet.train()
        space.sample(step_rng(args.seed, step))  # the sampling a real step does
        step += 1
        sup_opt.zero_grad(set_to_none=True)
        F.cross_entropy(supernet(xb, arch), yb).backward()
        sup_opt.step()

    rng = random.Random(args.seed)
    archs = [space.sample(rng) for _ in range(args.archs)]
    train_ratios, eval_ratios, rows = [], [], []
    for arch in archs:
        static = supernet.extract(arch).to(device).train()
        static_eval = supernet.extract(arch).to(device)
        st_opt = torch.optim.SGD(param_groups(static, 0.05), **OPTIM)

        def static_step():
            static.train()
            st_opt.zero_grad(set_to_none=True)
            F.cross_entropy(static(x), y).backward()
            st_opt.step()

        def candidate_eval():
            with torch.no_grad():
                classification_metrics(bn_recalibrate(supernet.extract(arch).to(device), calib), val)

        def static_forwards():
            with torch.no_grad():
                classification_metrics(bn_recalibrate(static_eval, calib), val)

        fns = (lambda: supernet_step(arch, x, y), static_step, candidate_eval, static_forwards)
        for fn in fns:  # warm-up
            fn()
        times = [[] for _ in fns]
        for _ in range(args.reps):  # interleaved so that machine noise hits both sides alike
            for t, fn in zip(times, fns):
                t.append(timed(fn, device))
        sup, st, ev, fw = (statistics.median(t) for t in times)
        train_ratios.append(sup / st)
        eval_ratios.append(ev / fw)
        rows.append({"arch": str(arch), "layers": space.describe(arch), "mflops": round(space.cost(arch).mflops, 3),
                     "params": space.cost(arch).params, "supernet_step_ms": round(1e3 * sup, 2),
                     "static_step_ms": round(1e3 * st, 2), "eval_ms": round(1e3 * ev, 2),
                     "static_forwards_ms": round(1e3 * fw, 2), "train_step_ratio": round(sup / st, 4),
                     "eval_ratio": round(ev / fw, 4)})

    # -- video against image steps, on the median arch by MFLOPs ---------------------------------------------------
    arch = sorted(archs, key=lambda a: space.cost(a).mflops)[len(archs) // 2]
    ts = [t for t in (2 ** i for i in range(8)) if t <= args.max_frames]
    clips = {t: (torch.randn(video_batch, t, c, s, s, device=device), labels(video_batch)) for t in ts}
    image_step = lambda: supernet_step(arch, x, y)  # noqa: E731
    image_step()
    measured, modelled, video_rows = [], [], []
    image_macs = args.batch * space.cost(arch, frames=1).mflops
    for t in ts:
        video_step = lambda t=t: supernet_step(arch, *clips[t])  # noqa: E731
        video_step()
        t_img, t_vid = [], []
        for _ in range(args.reps):
            t_img.append(timed(image_step, device))
            t_vid.append(timed(video_step, device))
        measured.append(statistics.median(t_vid) / statistics.median(t_img))
        modelled.append(video_batch * space.cost(arch, frames=t).mflops / image_macs)
        video_rows.append({"frames": t, "tokens": t * space.patches,
                           "video_step_ms": round(1e3 * statistics.median(t_vid), 2),
                           "image_step_ms": round(1e3 * statistics.median(t_img), 2),
                           "measured_ratio": round(measured[-1], 4), "mac_ratio": round(modelled[-1], 4)})
    even = {}
    for key, ratios in (("measured", measured), ("macs", modelled)):
        t = break_even(ts, ratios)
        even[key] = None if t is None else {"frames": round(t, 2), "tokens": round(t * space.patches, 1)}

    print(json.dumps({
        "benchmark": "vit_overhead", "space": space.name, "batch": args.batch, "video_batch": video_batch,
        "archs": args.archs, "reps": args.reps, "quick": args.quick, "device": str(device),
        "train_step_ratio": round(statistics.median(train_ratios), 4),
        "eval_ratio": round(statistics.median(eval_ratios), 4),
        "targets": {"train_step_ratio": 1.10, "eval_ratio": 1.10},
        "video": {"arch": str(arch), "patches_per_frame": space.patches, "break_even": even, "per_frames": video_rows},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "per_arch": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
