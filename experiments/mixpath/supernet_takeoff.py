"""Why does the cluttered ranking benchmark's supernet stay at chance? Training-loss curves of the S1 supernet.

The benchmark (``ranking.py --data cluttered``) trains the ``mixpath_s1_cpu`` supernet at 32 px with a stride-2 stem
for 12 epochs (3,372 SGD steps, lr 0.1, batch 64, m = 2) and every setting predicts chance-level top-1, while each
of its 24 archs trained standalone leaves chance within a few hundred steps. This script trains the same supernet
under variants that each change one thing, and records the training loss and top-1 averaged over every 100 steps:

* ``random m=2``: the benchmark's training (MixPath's sampling: per layer m' ~ U{1..m}, then m' distinct paths);
* ``random m=1``: single-path sampling (SPOS's);
* ``one fixed arch``: the same supernet code, but every step trains the arch drawn at step 0 (a standalone model);
* ``fixed arch 400 steps, then random``: a warm-up on that one path, then MixPath's sampling;
* ``random, lr 0.02`` and ``random, AdamW 2e-3``: the optimiser;
* ``random, easy clutter 500 steps``: the first 500 steps on easier clutter (reg_nas_digits' knobs), then the
  benchmark's data;
* ``random m=2, 6000 steps``: the benchmark's training, longer.

The loop is a plain torch loop that mirrors ``SupernetTraining`` (SGD, momentum 0.9, Nesterov, weight decay 4e-5,
cosine to 0 over the run's steps; the arch of step s from ``step_rng(seed, s)``), so that the loss can be kept at
every step. Each variant is written to ``--out`` (JSON, atomically) as soon as it ends; a rerun skips what is there.

    python experiments/mixpath/supernet_takeoff.py --variants "random m=2, 6000 steps" &
    python experiments/mixpath/supernet_takeoff.py --variants-except "random m=2, 6000 steps"; wait
    python experiments/mixpath/supernet_takeoff.py --table
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "mixpath"))
sys.path.insert(0, str(ROOT))

from nasx import artifacts  # noqa: E402
from nasx.arch import step_rng  # noqa: E402
from nasx.data.cluttered import ClutteredDigitsDataModule  # noqa: E402
from ranking import s1_cluttered  # noqa: E402

EASY = dict(scale=(0.75, 0.95), distractors=(0, 1), texture=0.3, rotation=15.0)  # = conf/experiment/reg_nas_digits
# name -> settings (defaults: m 2, lr 0.1, SGD, 1200 steps, random paths from step 0, the benchmark's data)
VARIANTS = {
    "random m=2 (the benchmark's)": {},
    "random m=1": {"m": 1},
    "one fixed arch": {"fixed_steps": 10 ** 9},
    "fixed arch 400 steps, then random": {"fixed_steps": 400},
    "random, lr 0.02": {"lr": 0.02},
    "random, AdamW 2e-3": {"optimizer": "adamw", "lr": 0.002},
    "random, easy clutter 500 steps": {"easy_steps": 500},
    "random m=2, 6000 steps": {"steps": 6000},
}
WINDOW = 100


def run(v: dict, seed: int, data_root: str) -> dict:
    steps, lr, m = v.get("steps", 1200), v.get("lr", 0.1), v.get("m", 2)
    fixed_steps, easy_steps = v.get("fixed_steps", 0), v.get("easy_steps", 0)
    torch.manual_seed(seed)
    data = ClutteredDigitsDataModule(root=data_root, image_size=32, batch_size=64, seed=seed)
    data.setup()
    easy = None
    if easy_steps:
        easy = ClutteredDigitsDataModule(root=data_root, image_size=32, batch_size=64, seed=seed, **EASY)
        easy.setup()
    space = s1_cluttered(max_paths=m)
    net = space.supernet().to(memory_format=torch.channels_last)
    if v.get("optimizer") == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def batches(dm):
        while True:
            yield from dm.train_dataloader()

    it = batches(easy if easy_steps else data)
    losses, correct, t = [], [], time.time()
    net.train()
    for s in range(steps):
        if easy_steps and s == easy_steps:
            it = batches(data)
        x, y = next(it)
        arch = space.train_sample(step_rng(seed, 0 if s < fixed_steps else s))
        out = net(x.to(memory_format=torch.channels_last), arch)
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        correct.append((out.argmax(1) == y).float().mean().item())
        if (s + 1) % 1000 == 0:
            print(f"  step {s + 1}: loss {sum(losses[-WINDOW:]) / WINDOW:.3f} ({time.time() - t:.0f} s)", flush=True)

    def windows(xs):
        return [round(sum(xs[i:i + WINDOW]) / len(xs[i:i + WINDOW]), 4) for i in range(0, len(xs), WINDOW)]

    return {"settings": {"steps": steps, "lr": lr, "m": m, "optimizer": v.get("optimizer", "sgd"),
                         "fixed_steps": min(fixed_steps, steps), "easy_steps": easy_steps, "batch_size": 64},
            "loss_curve": windows(losses), "top1_curve": windows(correct), "seconds": round(time.time() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", help=f"of: {'; '.join(VARIANTS)} (default: all)")
    ap.add_argument("--variants-except", nargs="*", default=[], help="all variants but these")
    ap.add_argument("--data-root", default=str(ROOT / "data" / "cluttered_digits"))
    ap.add_argument("--out", default=str(ROOT / "experiments" / "mixpath" / "supernet_takeoff.json"))
    ap.add_argument("--table", action="store_true", help="print the table from --out")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        return _table(out)
    names = args.variants if args.variants else [n for n in VARIANTS if n not in args.variants_except]
    unknown = [n for n in [*names, *args.variants_except] if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s): {unknown}; known: {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    part = out.with_name(f"{out.stem}.part-{zlib.crc32('|'.join(names).encode()):08x}.json")  # one per process
    for name in names:
        key = f"{name} | seed {args.seed}"
        state = _merged(out)
        if key in state:
            continue
        print(f"{name} (seed {args.seed})", flush=True)
        mine = json.loads(part.read_text()) if part.exists() else {}
        mine[key] = {"variant": name, "seed": args.seed, **run(VARIANTS[name], args.seed, args.data_root)}
        artifacts.write_json(part, mine)
    state = _merged(out)
    artifacts.write_json(out, state)


def _merged(out: Path) -> dict:
    """Every finished run: --out and the part files of processes that ran beside each other."""
    state = json.loads(out.read_text()) if out.exists() else {}
    for path in sorted(out.parent.glob(f"{out.stem}.part-*.json")):
        state.update(json.loads(path.read_text()))
    return state


def _table(out: Path) -> None:
    state = _merged(out)
    artifacts.write_json(out, state)
    for path in out.parent.glob(f"{out.stem}.part-*.json"):
        path.unlink()
    print(f"| variant | steps | training loss at steps 1–100 / 401–500 / 1101–1200 / last 100 | training top-1, "
          f"last 100 steps | seconds |")
    print("|---|---|---|---|---|")
    for name in VARIANTS:
        for r in (r for r in state.values() if r["variant"] == name):
            c = r["loss_curve"]
            pts = " / ".join(f"{c[i]:.3f}" for i in (0, 4, 11, len(c) - 1) if i < len(c))
            print(f"| {name} | {r['settings']['steps']} | {pts} | {100 * r['top1_curve'][-1]:.1f} % | "
                  f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
