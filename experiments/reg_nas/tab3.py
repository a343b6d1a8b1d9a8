"""REG-NAS Tab. 3 analogue [seed supplement Tab. 3]: a family of four, A1 < A2 < A3 < A4, and its pairwise NFR matrix
(NFR from every smaller member to every larger one), against the family weight sharing with R0 finds on the same
supernet. For each pair the paired bootstrap interval (over the test images) of "weight sharing − REG-NAS" says
whether REG-NAS flips fewer samples; top-1 of every member comes with its interval too.

    R=outputs/reg_nas_digits_resnet/main
    python experiments/reg_nas/tab3.py --reg-nas $R --ws-r0 outputs/reg_nas_digits_resnet/ws_r0 \
        --out experiments/reg_nas/tab3.json

Several seeds: comma-separated run lists, paired by position; the table is their mean (the bootstrap over test images
does not see the seed-to-seed spread, so every seed's paired differences are kept in the JSON and printed). All runs
must have evaluated the same test images (``test_predictions.pt``).
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
from nasx.metrics.flips import bootstrap_means, interval, negative_flips  # noqa: E402


def load(run: Path) -> dict:
    saved = torch.load(run / "test_predictions.pt", map_location="cpu", weights_only=True)
    results = json.loads((run / "results.json").read_text())
    return {"labels": saved["labels"], "predictions": [torch.as_tensor(p) for p in saved["predictions"]],
            "archs": saved["archs"], "results": results, "run": str(run)}


def _ci(value: torch.Tensor, reps: torch.Tensor) -> dict:
    lo, hi = interval(reps)
    return {"value": 100 * float(value), "lo": 100 * lo, "hi": 100 * hi}


def plot(table: dict, path: Path) -> None:
    """Both families' pairwise NFR matrices side by side, and top-1 against MFLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = table["members"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"wspace": 0.4})
    names = {"reg_nas": "REG-NAS (R2 + CAS)", "ws_r0": "weight sharing, R0"}
    top = max(v["value"] for f in table["families"].values() for v in f["nfr"].values())
    for ax, (key, fam) in zip(axes[:2], table["families"].items()):
        m = torch.full((n, n), float("nan"))
        for pair, v in fam["nfr"].items():
            i, j = (int(t.strip("A")) - 1 for t in pair.split("->"))
            m[i, j] = v["value"]
        im = ax.imshow(m.numpy(), cmap="Greens", vmin=0, vmax=top)
        for (i, j), v in ((ij, m[ij]) for ij in [(a, b) for a in range(n) for b in range(n)]):
            if not torch.isnan(v):
                ax.text(j, i, f"{float(v):.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(n), [f"A{k + 1}" for k in range(n)])
        ax.set_yticks(range(n), [f"A{k + 1}" for k in range(n)])
        ax.set_xlabel("new model")
        ax.set_ylabel("reference")
        ax.set_title(f"{names.get(key, key)}\nNFR %" + (", mean of seeds" if table.get("seeds", 1) > 1 else ""))
    fig.colorbar(im, ax=axes[:2], shrink=0.8)
    ax = axes[2]
    for key, fam in table["families"].items():
        t = fam["top1"]
        ax.errorbar(fam["mflops"], [v["value"] for v in t],
                    yerr=[[v["value"] - v["lo"] for v in t], [v["hi"] - v["value"] for v in t]], marker="o",
                    capsize=3, label=names.get(key, key))
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel("test top-1 % (95 % CI)")
    ax.set_title("the families" + (f" (mean of {table['seeds']} seeds)" if table.get("seeds", 1) > 1 else ""))
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reg-nas", required=True, help="REG-NAS run directories (R2 + CAS), comma-separated, one per seed")
    ap.add_argument("--ws-r0", required=True, help="the weight-sharing R0 runs on the same supernets, in the same order")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "reg_nas" / "tab3.json"))
    ap.add_argument("--plot", default=None, help="the figure (default: --out with .png)")
    args = ap.parse_args()
    runs = {name: [load(Path(d)) for d in dirs.split(",") if d]
            for name, dirs in (("reg_nas", args.reg_nas), ("ws_r0", args.ws_r0))}
    if len(runs["reg_nas"]) != len(runs["ws_r0"]):
        sys.exit(f"tab3: {len(runs['reg_nas'])} REG-NAS runs against {len(runs['ws_r0'])} weight-sharing runs: "
                 f"give one of each per seed, in the same order")
    labels = runs["reg_nas"][0]["labels"]
    n = len(runs["reg_nas"][0]["predictions"])
    for r in (*runs["reg_nas"], *runs["ws_r0"]):
        if not torch.equal(r["labels"], labels):
            sys.exit(f"tab3: {r['run']} was evaluated on other test images than {runs['reg_nas'][0]['run']}")
        if len(r["predictions"]) != n:
            sys.exit(f"tab3: {r['run']} has {len(r['predictions'])} members, {runs['reg_nas'][0]['run']} has {n}")
    seeds = len(runs["reg_nas"])
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    rows, index = [], {}
    for name, family_runs in runs.items():
        for s, r in enumerate(family_runs):
            for k, p in enumerate(r["predictions"]):
                index[(name, s, "top1", k)] = len(rows)
                rows.append(p == labels)
            for i, j in pairs:
                index[(name, s, "nfr", i, j)] = len(rows)
                rows.append(negative_flips(r["predictions"][i], r["predictions"][j], labels))
    ind = torch.stack(rows).float()
    point, reps = ind.mean(1), bootstrap_means(ind, args.resamples, args.seed)

    def mean_over_seeds(name: str, *key, values: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        cols = [index[(name, s, *key)] for s in (range(seeds) if seed is None else [seed])]
        return values[..., cols].mean(-1)

    def stat(name, *key, seed=None):
        return mean_over_seeds(name, *key, values=point, seed=seed), mean_over_seeds(name, *key, values=reps, seed=seed)

    out = {"members": n, "seeds": seeds, "test_samples": int(len(labels)), "resamples": args.resamples,
           "families": {}, "nfr_ws_r0_minus_reg_nas": {}, "per_seed": []}
    for name, family_runs in runs.items():
        out["families"][name] = {
            "runs": [r["run"] for r in family_runs], "archs": [list(r["archs"]) for r in family_runs],
            "mflops": [sum(r["results"]["members"][k]["mflops"] for r in family_runs) / seeds for k in range(n)],
            "top1": [_ci(*stat(name, "top1", k)) for k in range(n)],
            "nfr": {f"A{i + 1}->A{j + 1}": _ci(*stat(name, "nfr", i, j)) for i, j in pairs}}
    for i, j in pairs:
        (wp, wr), (rp, rr) = stat("ws_r0", "nfr", i, j), stat("reg_nas", "nfr", i, j)
        out["nfr_ws_r0_minus_reg_nas"][f"A{i + 1}->A{j + 1}"] = _ci(wp - rp, wr - rr)
    for s in range(seeds):
        entry = {"reg_nas": runs["reg_nas"][s]["run"], "ws_r0": runs["ws_r0"][s]["run"], "nfr": {}}
        for i, j in pairs:
            (wp, wr), (rp, rr) = stat("ws_r0", "nfr", i, j, seed=s), stat("reg_nas", "nfr", i, j, seed=s)
            entry["nfr"][f"A{i + 1}->A{j + 1}"] = {"reg_nas": 100 * float(rp), "ws_r0": 100 * float(wp),
                                                  "ws_r0_minus_reg_nas": _ci(wp - rp, wr - rr)}
        out["per_seed"].append(entry)
    out["command"] = " ".join(["python experiments/reg_nas/tab3.py", *sys.argv[1:]])
    artifacts.write_json(Path(args.out), out)
    print(f"mean over {seeds} seed(s); intervals: bootstrap over the test images")
    print("| pair | NFR REG-NAS % [95 % CI] | NFR weight sharing R0 % [95 % CI] | WS − REG-NAS, paired [95 % CI] | "
          "per seed WS − REG-NAS |")
    print("|---|---|---|---|---|")
    for key, d in out["nfr_ws_r0_minus_reg_nas"].items():
        r, w = out["families"]["reg_nas"]["nfr"][key], out["families"]["ws_r0"]["nfr"][key]
        per = ", ".join(f"{e['nfr'][key]['ws_r0_minus_reg_nas']['value']:+.2f}" for e in out["per_seed"])
        print(f"| {key} | {r['value']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] | {w['value']:.2f} [{w['lo']:.2f}, "
              f"{w['hi']:.2f}] | {d['value']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] | {per} |")
    plot(out, Path(args.plot) if args.plot else Path(args.out).with_suffix(".png"))
    for name, fam in out["families"].items():
        print(name, "top-1:", ", ".join(f"A{k + 1} {t['value']:.2f}" for k, t in enumerate(fam["top1"])),
              "| MFLOPs:", [round(m, 3) for m in fam["mflops"]])


if __name__ == "__main__":
    main()
