"""Video decoding with PyAV: throughput in clips per second, and memory while streaming many clips.

Writes fixture videos into a temporary directory (libx264 mp4 and VP8 webm, a scrolling random texture with noise so
that they compress like footage, not like flat test frames), then:

* ``throughput``: training clips per second through nasx's ``VideoClipDataset`` and a DataLoader with ``--workers``
  worker processes, the process pinned to ``--cores`` CPUs, for each container x temporal sampler: Kinetics'
  strided clip (T frames, stride 8, random start) and SSV2's segments (T segments, a random frame each), at
  T = ``--frames`` frames x ``--size`` px (scale jitter, random crop). The first batch (worker start) is not timed.
* ``memory``: streams ``--stream-clips`` distinct small mp4 clips once through the same loader and prints the
  memory (proportional set size of the main process + its workers, from /proc) every ``--every`` clips: it stays
  flat because each clip is decoded when drawn and dropped after its batch.

Prints a table and, last, one JSON line with every number. Usage:
``python benchmarks/video_decode.py [--cores 2] [--workers 2] [--frames 8] [--size 112] [--stream-clips 1000]``;
``--quick`` shrinks everything to check that the script runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from nasx.data.decode import write_video
from nasx.data.memory import EpochSampler
from nasx.data.video import Segments, StridedClip, VideoClipDataset


def footage(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (n, height, width, 3): a smooth random colour texture scrolling diagonally, plus pixel noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    big = np.kron(base, np.ones((8, 8, 1), np.float32))  # blocky texture, smoothed below
    big = (big + np.roll(big, 4, 0) + np.roll(big, 4, 1) + np.roll(big, (4, 4), (0, 1))) / 4
    out = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frame = np.roll(big, (t, 2 * t), (0, 1))[:height, :width]
        out[t] = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    return out


def write_fixtures(root: Path, count: int, frames: int, height: int, width: int, suffix: str, seed: int) -> list[str]:
    names = []
    for k in range(count):
        name = f"clip{k:05d}{suffix}"
        write_video(root / name, footage(frames, height, width, seed + k))
        names.append(name)
    return names


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def loader(root: Path, names: list[str], sampling, size: int, workers: int) -> DataLoader:
    files = np.array([os.fsencode(n) for n in names])
    ds = VideoClipDataset(root, files, torch.zeros(len(names), dtype=torch.long), sampling, size, "train", seed=0)
    return DataLoader(ds, batch_size=1, sampler=EpochSampler(ds, 0), num_workers=workers,
                      worker_init_fn=_one_thread if workers else None)


def throughput(root: Path, names: list[str], sampling, size: int, workers: int, passes: int) -> float:
    """Clips per second over ``passes`` epochs, not counting the first batch of the first epoch."""
    dl = loader(root, names, sampling, size, workers)
    count, start = 0, None
    for epoch in range(passes):
        dl.sampler.set_epoch(epoch)
        for _ in dl:
            if start is None:
                start = time.perf_counter()
                continue
            count += 1
    return count / (time.perf_counter() - start)


def _kib(pid: int) -> int:
    """Proportional set size of one process in KiB (shared pages split between the processes sharing them, so
    forked workers are not counted twice); resident set size where smaps_rollup is unavailable."""
    for name, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(name) as f:
                return next(int(line.split()[1]) for line in f if line.startswith(key))
        except (OSError, StopIteration):
            continue
    return 0


def memory_mb(pid: int | None = None) -> float:
    """Memory of process ``pid`` (default this one) and all its descendants (DataLoader workers), in MiB (Linux)."""
    pids, total = [pid or os.getpid()], 0
    while pids:
        p = pids.pop()
        total += _kib(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            continue  # a worker that just exited
    return total / 1024


def stream(root: Path, names: list[str], size: int, frames: int, workers: int, every: int) -> list[tuple[int, float]]:
    """(clips streamed so far, memory in MiB) every ``every`` clips while reading each clip once."""
    dl = loader(root, names, StridedClip(frames, 2, 1), size, workers)
    samples = [(0, memory_mb())]
    for k, _ in enumerate(dl, 1):
        if k % every == 0:
            samples.append((k, memory_mb()))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cores", type=int, default=2, help="CPUs the benchmark is pinned to")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ap.add_argument("--frames", type=int, default=8, help="T, frames per clip")
    ap.add_argument("--size", type=int, default=112, help="clip side in pixels")
    ap.add_argument("--videos", type=int, default=16, help="fixture videos per container for the throughput")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of those videos at 25 fps")
    ap.add_argument("--resolution", default="320x240", help="WxH of those videos")
    ap.add_argument("--passes", type=int, default=3, help="epochs over them per measurement")
    ap.add_argument("--stream-clips", type=int, default=1000, help="distinct small mp4 clips streamed for memory")
    ap.add_argument("--every", type=int, default=50, help="clips between memory samples")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.seconds, args.passes, args.stream_clips, args.every = 4, 1.0, 1, 40, 10
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:args.cores]
        os.sched_setaffinity(0, cpus)  # workers inherit it
    width, height = (int(v) for v in args.resolution.lower().split("x"))
    n_frames = round(args.seconds * 25)

    results: dict = {"cores": args.cores, "workers": args.workers, "frames": args.frames, "size": args.size,
                     "videos": f"{args.videos} x {n_frames} frames at {width}x{height}, 25 fps",
                     "python": platform.python_version(), "torch": torch.__version__}
    import av
    results["av"] = av.__version__
    with tempfile.TemporaryDirectory(prefix="nasx-video-bench-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        fixtures = {suffix: write_fixtures(root, args.videos, n_frames, height, width, suffix, seed)
                    for suffix, seed in ((".mp4", 0), (".webm", 10_000))}
        results["write_s"] = round(time.perf_counter() - t, 1)
        samplers = {f"kinetics {args.frames}x8": StridedClip(args.frames, 8, 1),
                    f"ssv2 {args.frames} segments": Segments(args.frames)}
        rows = []
        for suffix, names in fixtures.items():
            for label, sampling in samplers.items():
                rate = throughput(root, names, sampling, args.size, args.workers, args.passes)
                rows.append((suffix[1:], label, rate))
                results[f"clips_per_s/{suffix[1:]}/{label}"] = round(rate, 1)
        print(f"decoding throughput: {args.frames} frames x {args.size} px training clips, {args.workers} workers "
              f"on {args.cores} cores ({results['videos']})")
        print(f"{'container':<10} {'sampler':<20} {'clips/s':>8}")
        for fmt, label, rate in rows:
            print(f"{fmt:<10} {label:<20} {rate:>8.1f}")

        small = root / "stream"
        small.mkdir()
        t = time.perf_counter()
        names = write_fixtures(small, args.stream_clips, 2 * args.frames, 120, 160, ".mp4", 20_000)
        results["stream_write_s"] = round(time.perf_counter() - t, 1)
        samples = stream(small, names, args.size, args.frames, args.workers, args.every)
    print(f"\nmemory (PSS of main + workers) while streaming {args.stream_clips} distinct mp4 clips once:")
    print(f"{'clips':>6} {'MiB':>8}")
    for k, mb in samples:
        print(f"{k:>6} {mb:>8.1f}")
    during = [mb for k, mb in samples if k > 0]
    results["stream_pss_mib"] = {"before": round(samples[0][1], 1), "first": round(during[0], 1),
                                 "peak": round(max(during), 1), "last": round(during[-1], 1),
                                 "peak_minus_first": round(max(during) - during[0], 1)}
    print(f"peak {max(during):.1f} MiB, first sample {during[0]:.1f} MiB: growth {max(during) - during[0]:+.1f} MiB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
