"""REG-NAS Tab. 2 analogue [seed]: the reference A1 and, for each way of getting the next member A2, its top-1, the NFR
from A1, and the relative change C(REG-NAS, row) = (M(REG-NAS) − M(row)) / M(row) of both, next to the paper's numbers.

Each row is one or more run directories (several seeds are averaged, as the paper averages weight sharing and
REG-NAS over three; each row's per-run values and their standard deviation over seeds are kept in the JSON, because
the bootstrap over test images does not see the seed-to-seed spread). Every run must have evaluated the same test
images (``test_predictions.pt``). Intervals are percentile bootstraps over the test images, paired: one draw of
images per replicate for every run, so a row's difference to REG-NAS keeps the correlation of predictions on the same
images.

    R=outputs/reg_nas_digits/main
    python experiments/reg_nas/tab2.py --row reg_nas=$R --row ws_r0=outputs/reg_nas_digits/ws_r0 \
        --row independent=outputs/reg_nas_digits/independent --row fd=outputs/reg_nas_digits/fd \
        --out experiments/reg_nas/tab2.json

``--pair i`` compares A_i → A_{i+1} (default 1: A1 → A2, the paper's 150 → 300 MFLOPs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nasx import artifacts  # noqa: E402
from nasx.metrics.flips import bootstrap_means, interval  # noqa: E402

# seed Tab. 2(a), MobileNet-V3 space of OFA: A1 = MB-R0-150 (73.70 %), the next member at ~300 MFLOPs
PAPER_MBV3 = {"reference_top1": 73.70, "rows": {
    "independent": {"model": "EffNet (EfficientNet-B0, CE)", "top1": 77.08, "top1_C": -0.30, "nfr": 4.25,
                    "nfr_C": -49.1},
    "fd": {"model": "EffNet+FD", "top1": 76.25, "top1_C": 0.76, "nfr": 3.25, "nfr_C": -33.5},
    "ws_r0": {"model": "MB-R0-300", "top1": 77.11, "top1_C": -0.37, "nfr": 2.51, "nfr_C": -13.9},
    "reg_nas": {"model": "MB-(R2+CAS)-300", "top1": 76.83, "top1_C": 0.0, "nfr": 2.16, "nfr_C": 0.0}}}
ORDER = ("independent", "fd", "ws_r0", "reg_nas")


def load(run: Path) -> dict:
    saved = torch.load(run / "test_predictions.pt", map_location="cpu", weights_only=True)
    results = json.loads((run / "results.json").read_text())
    return {"labels": saved["labels"], "predictions": saved["predictions"], "archs": saved["archs"],
            "results": results, "run": str(run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--row", action="append", required=True, help="name=run_dir[,run_dir...]")
    ap.add_argument("--pair", type=int, default=1)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "reg_nas" / "tab2.json"))
    args = ap.parse_args()
    rows = {}
    for spec in args.row:
        name, _, dirs = spec.partition("=")
        rows[name] = [load(Path(d)) for d in dirs.split(",") if d]
    if "reg_nas" not in rows:
        sys.exit("tab2: a row named reg_nas is needed (the C column is relative to it)")
    labels = next(iter(rows.values()))[0]["labels"]
    i, j = args.pair - 1, args.pair
    indicators, index = [], {}
    for name, runs in rows.items():
        for k, r in enumerate(runs):
            if not torch.equal(r["labels"], labels):
                sys.exit(f"tab2: {r['run']} was evaluated on other test images than the first run")
            ref, new = r["predictions"][i], r["predictions"][j]
            index[(name, k)] = len(indicators)
            indicators += [(new == labels), (ref == labels) & (new != labels), (ref == labels)]
    reps = bootstrap_means(torch.stack(indicators).float(), args.resamples, args.seed)  # (R, 3 · runs)
    point = torch.stack(indicators).float().mean(1)

    def row_stat(name: str, offset: int, values: torch.Tensor) -> torch.Tensor:
        cols = [index[(name, k)] + offset for k in range(len(rows[name]))]
        return values[..., cols].mean(-1)

    out_rows = {}
    reg = {m: (row_stat("reg_nas", o, point), row_stat("reg_nas", o, reps)) for m, o in (("top1", 0), ("nfr", 1))}
    for name in [n for n in ORDER if n in rows] + [n for n in rows if n not in ORDER]:
        entry = {"runs": [r["run"] for r in rows[name]], "archs": sorted({r["archs"][j] for r in rows[name]}),
                 "reference_archs": sorted({r["archs"][i] for r in rows[name]})}
        for metric, offset in (("top1", 0), ("nfr", 1), ("reference_top1", 2)):
            v, rep = row_stat(name, offset, point), row_stat(name, offset, reps)
            lo, hi = interval(rep)
            entry[metric] = {"value": 100 * float(v), "lo": 100 * lo, "hi": 100 * hi}
            if metric in reg:
                c = (reg[metric][0] - v) / v
                c_rep = (reg[metric][1] - rep) / rep
                clo, chi = interval(c_rep[torch.isfinite(c_rep)])
                entry[f"{metric}_C"] = {"value": 100 * float(c), "lo": 100 * clo, "hi": 100 * chi}
                d_lo, d_hi = interval(rep - reg[metric][1])
                entry[f"{metric}_minus_reg_nas"] = {"value": 100 * float(v - reg[metric][0]), "lo": 100 * d_lo,
                                                    "hi": 100 * d_hi}
        per_run = []
        for k, r in enumerate(rows[name]):
            col = index[(name, k)]
            per_run.append({"run": r["run"], "seed": r["results"].get("seed"), "top1": 100 * float(point[col]),
                            "nfr": 100 * float(point[col + 1]), "reference_top1": 100 * float(point[col + 2])})
        entry["per_run"] = per_run
        if len(per_run) > 1:  # the spread over seeds, which the bootstrap over test images does not see
            for metric in ("top1", "nfr"):
                entry[f"{metric}_seed_sd"] = float(torch.tensor([p[metric] for p in per_run]).std())
        out_rows[name] = entry
    table = {"pair": f"A{args.pair} -> A{args.pair + 1}", "test_samples": int(len(labels)),
             "resamples": args.resamples, "rows": out_rows, "paper_mbv3": PAPER_MBV3,
             "command": " ".join(["python experiments/reg_nas/tab2.py", *sys.argv[1:]])}
    artifacts.write_json(Path(args.out), table)
    print(f"| row | runs | A{j + 1} top-1 % | C top-1 % | NFR A{j}→A{j + 1} % | C NFR % | NFR − REG-NAS [95 % CI] | "
          f"NFR per run | paper top-1 / NFR / C NFR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e in out_rows.items():
        p = PAPER_MBV3["rows"].get(name, {})
        paper = f"{p['top1']} / {p['nfr']} / {p['nfr_C']:+g}" if p else ""
        d = e["nfr_minus_reg_nas"]
        per = ", ".join(f"{p['nfr']:.2f}" for p in e["per_run"])
        print(f"| {name} | {len(e['per_run'])} | {e['top1']['value']:.2f} [{e['top1']['lo']:.2f}, {e['top1']['hi']:.2f}] | "
              f"{e['top1_C']['value']:+.2f} | {e['nfr']['value']:.2f} [{e['nfr']['lo']:.2f}, {e['nfr']['hi']:.2f}] | "
              f"{e['nfr_C']['value']:+.1f} [{e['nfr_C']['lo']:+.1f}, {e['nfr_C']['hi']:+.1f}] | "
              f"{d['value']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] | {per} | {paper} |")


if __name__ == "__main__":
    main()
