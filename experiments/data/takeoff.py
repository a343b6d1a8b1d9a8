"""How fast does a network leave chance level on cluttered digits? Training-loss curves of one arch under several
optimiser settings (the "late start" that limits the seed-to-seed τ in experiments/data/RESULTS.md).

One ``shufflenet_cpu`` arch (1.09 MFLOPs by default: the arch whose two seeds differed by 10.9 points in attempt 2)
is trained standalone from scratch for ``--epochs`` epochs (cosine to 0 over them) under each variant and each seed;
the training loss is averaged over every 50 steps, and the test top-1 on the 10,000 test images is kept. Each run is
written to ``--out`` (JSON, atomically) as soon as it ends, so an interrupted run resumes.

    python experiments/data/takeoff.py --seed 1 & python experiments/data/takeoff.py --seed 2; wait
    python experiments/data/takeoff.py --table          # the table in RESULTS.md, from the JSON

Two processes write two part files (``takeoff.part-s<seed>.json``); ``--table`` merges them into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "mixpath"))
sys.path.insert(0, str(ROOT))

from nasx import artifacts  # noqa: E402
from nasx.data.cluttered import ClutteredDigitsDataModule  # noqa: E402
from nasx.evaluation import classification_metrics  # noqa: E402
from nasx.spaces.shufflenet import ShuffleNetSpace  # noqa: E402
from nasx.training.base import fit_quiet  # noqa: E402
from nasx.training.standalone import StandaloneTraining  # noqa: E402
from ranking import OPTIM, SHUFFLENET_CPU  # noqa: E402

ARCH = "b0=2,w0=9,b1=0,w1=6,b2=1,w2=1,b3=2,w3=0,b4=0,w4=3,b5=1,w5=0,b6=3,w6=1,b7=2,w7=1"
# name -> (overrides of the ranking ground truth's optimiser: SGD lr 0.1, batch 64, nesterov, wd 4e-5, cosine)
VARIANTS = {
    "lr 0.1, batch 64 (attempt 2)": {},
    "batch 32": {"batch_size": 32},
    "lr 0.03": {"lr": 0.03},
    "lr 0.01": {"lr": 0.01},
    "lr 0.2, wd 5e-4": {"lr": 0.2, "weight_decay": 5e-4},
    "lr 0.3, 100-step warm-up": {"lr": 0.3, "warmup_steps": 100},
    "zero-init last BN of each branch": {"zero_init": True},
    "AdamW lr 2e-3": {"optimizer": "adamw", "lr": 0.002},
}
WINDOW = 50  # steps per averaged loss point


class _Recording(StandaloneTraining):
    """Standalone training that keeps every step's training loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss.detach()))
        return loss


def run(variant: dict, seed: int, epochs: int, arch: str, data_root: str) -> dict:
    v = dict(variant)
    batch = v.pop("batch_size", 64)
    zero = v.pop("zero_init", False)
    data = ClutteredDigitsDataModule(root=data_root, image_size=32, batch_size=batch, seed=seed)
    data.setup()
    space = ShuffleNetSpace(**SHUFFLENET_CPU)
    genes = {k: int(x) for k, x in (kv.split("=") for kv in arch.split(","))}
    L.seed_everything(seed, verbose=False)
    model = space.supernet().extract(space.arch(genes)).to(memory_format=torch.channels_last)
    if zero:  # every unit's main branch starts at zero output (its last BN's scale)
        for unit in model.units:
            bns = [m for m in unit.main.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            torch.nn.init.zeros_(bns[-1].weight)
    system = _Recording(model, **{**OPTIM, **v})
    t = time.time()
    fit_quiet(system, data, epochs, seed)
    top1 = classification_metrics(model.eval(), list(data.test_dataloader()))["top1"]
    loss = system.losses
    curve = [sum(loss[i:i + WINDOW]) / len(loss[i:i + WINDOW]) for i in range(0, len(loss), WINDOW)]
    return {"top1": top1, "steps": len(loss), "loss_curve": [round(c, 4) for c in curve],
            "final_loss": round(curve[-1], 4), "seconds": round(time.time() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="training seed (data order and initial weights)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--arch", default=ARCH, help="shufflenet_cpu genes, comma-separated")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"of: {'; '.join(VARIANTS)}")
    ap.add_argument("--data-root", default=str(ROOT / "data" / "cluttered_digits"))
    ap.add_argument("--out", default=str(ROOT / "experiments" / "data" / "takeoff.json"))
    ap.add_argument("--table", action="store_true", help="merge the part files and print the table")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        return _table(out)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s): {unknown}; known: {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    part = out.with_name(f"{out.stem}.part-s{args.seed}.json")
    state = json.loads(part.read_text()) if part.exists() else {}
    merged = json.loads(out.read_text())["runs"] if out.exists() else {}  # an earlier --table's
    for name in args.variants:
        key = f"{name} | seed {args.seed} | {args.epochs} epochs | {args.arch}"
        if key in state or key in merged:
            continue
        state[key] = {"variant": name, "seed": args.seed, "epochs": args.epochs, "arch": args.arch,
                      **run(VARIANTS[name], args.seed, args.epochs, args.arch, args.data_root)}
        artifacts.write_json(part, state)
        r = state[key]
        print(f"{name:34s} seed {args.seed}: loss {r['loss_curve'][0]:.3f} -> {r['final_loss']:.3f} after "
              f"{r['steps']} steps, test top-1 {r['top1']:.4f} ({r['seconds']:.0f} s)", flush=True)


def _table(out: Path) -> None:
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}
    parts = sorted(out.parent.glob(f"{out.stem}.part-s*.json"))
    for path in parts:
        runs.update(json.loads(path.read_text()))
    artifacts.write_json(out, {"runs": runs})
    for path in parts:  # merged into --out: a later --table reads them from there
        path.unlink()
    seeds = sorted({r["seed"] for r in runs.values()})
    print(f"| variant | steps | " + " | ".join(f"loss, last {WINDOW} steps (seed {s})" for s in seeds)
          + " | " + " | ".join(f"test top-1 (seed {s})" for s in seeds) + " |")
    print("|---|---|" + "---|" * (2 * len(seeds)))
    for name in VARIANTS:
        rows = {r["seed"]: r for r in runs.values() if r["variant"] == name}
        if not rows:
            continue
        steps = next(iter(rows.values()))["steps"]
        loss = " | ".join(f"{rows[s]['final_loss']:.3f}" if s in rows else "" for s in seeds)
        top1 = " | ".join(f"{100 * rows[s]['top1']:.1f} %" if s in rows else "" for s in seeds)
        print(f"| {name} | {steps} | {loss} | {top1} |")


if __name__ == "__main__":
    main()
