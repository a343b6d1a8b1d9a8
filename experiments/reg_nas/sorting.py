"""Does OFA's channel sorting change the supernet? Two ``reg_nas_digits`` runs that differ only in
``train.sort_channels`` search A1 with the same seed, so their first generations evaluate the same archs. This
compares the validation top-1 (inherited weights, BN recalibrated) that each supernet gives those common archs:
paired differences with a bootstrap interval over the archs.

    python experiments/reg_nas/sorting.py --off outputs/reg_nas_digits/main --on outputs/reg_nas_digits/sorted \
        --out experiments/reg_nas/sorting.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nasx import artifacts  # noqa: E402


def history(run: Path, member: int) -> dict[str, dict]:
    path = run / "search" / f"member_{member}" / "history.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {json.dumps(r["arch"], sort_keys=True): r for r in records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--off", required=True, help="the run with train.sort_channels=false")
    ap.add_argument("--on", required=True, help="the run with train.sort_channels=true")
    ap.add_argument("--member", type=int, default=1)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "reg_nas" / "sorting.json"))
    args = ap.parse_args()
    off, on = history(Path(args.off), args.member), history(Path(args.on), args.member)
    common = sorted(k for k in off if k in on)
    if len(common) < 5:
        sys.exit(f"sorting: only {len(common)} archs in common: were both runs searched with the same seed?")
    a = np.array([off[k]["metrics"]["top1"] for k in common]) * 100
    b = np.array([on[k]["metrics"]["top1"] for k in common]) * 100
    d = b - a
    rng = np.random.default_rng(args.seed)
    reps = d[rng.integers(0, len(d), (args.resamples, len(d)))].mean(1)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    out = {"archs": len(common), "member": args.member, "val_top1_off": float(a.mean()), "val_top1_on": float(b.mean()),
           "on_minus_off": {"value": float(d.mean()), "lo": float(lo), "hi": float(hi)},
           "on_better": int((d > 0).sum()), "per_arch": [{"mflops": off[k]["mflops"], "off": float(x), "on": float(y)}
                                                         for k, x, y in zip(common, a, b)],
           "command": " ".join(["python experiments/reg_nas/sorting.py", *sys.argv[1:]])}
    artifacts.write_json(Path(args.out), out)
    print(f"{len(common)} common archs: val top-1 {a.mean():.2f} % (off) against {b.mean():.2f} % (on); "
          f"on − off {d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]; on better for {(d > 0).sum()} of {len(d)}")


if __name__ == "__main__":
    main()
