"""CMP-NAS supplementary Fig. 1 on the embedded digits: the reward study.

For each supernet training mode {vanilla (BCT weight 0), BCT (BCT weight 1)} the query supernet of
``experiment=cmp_nas_digits`` is trained once (one shared gallery model), then searched with each reward R1, R2, R3;
the best 5 architectures of every search are scored on the test queries with inherited, BN-recalibrated supernet
weights: homogeneous A(φq, φq) and heterogeneous A(φq, φg) top-1 (training split as the gallery).

    python experiments/cmp_nas/fig1.py          # the table in experiments/cmp_nas/RESULTS.md

Runs go to ``--runs`` (one nasx run directory per supernet and per search); every stage resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir

from nasx import artifacts
from nasx.arch import Arch
from nasx.evaluation import ClassificationEvaluator
from nasx.evaluation.compatibility import retrieval_metrics
from nasx.evaluation.embedding import embed
from nasx.methods.cmp_nas import CMPNAS
from nasx.runner import Run, run
from nasx.stages import load_supernet

CONF = str(Path(__file__).resolve().parents[2] / "conf")
REWARDS = ("cmp_r1", "cmp_r2", "cmp_r3")


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="outputs/cmp_fig1")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--out", default="experiments/cmp_nas/fig1.json")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = Path(args.runs)
    base = ["experiment=cmp_nas_digits", "progress=false", *args.overrides]

    shared = f"gallery.checkpoint={(root / 'supernet_vanilla' / 'gallery' / 'model.pt').resolve()}"
    rows = []
    for bct in (0, 1):
        mode = "BCT" if bct else "vanilla"
        sdir = root / f"supernet_{mode}"
        gal = [shared] if bct else []  # the vanilla run trains the gallery model every other run shares
        run(_cfg([*base, f"train.loss.bct.weight={bct}", "stages=[train]", f"paths.run_dir={sdir}", *gal]))
        for reward in REWARDS:
            rdir = root / f"{mode}_{reward}"
            if not (rdir / "train").exists():
                rdir.mkdir(parents=True, exist_ok=True)
                shutil.copytree(sdir / "train", rdir / "train")
            cfg = _cfg([*base, f"train.loss.bct.weight={bct}", f"reward={reward}", "stages=[search]",
                        f"paths.run_dir={rdir}", shared])
            run(cfg)
            method = CMPNAS()
            r = Run(cfg, method)
            gallery = method.reference(r)  # loads the shared checkpoint
            supernet = load_supernet(r)
            r.data.setup("test")
            (qx, qy), (gx, gy) = r.data.split("test"), r.data.split("train")
            g_emb = embed(gallery, gx)
            calibrated = ClassificationEvaluator(supernet, r.data.calibration_batches(
                cfg.search.bn_batches, cfg.search.bn_batch_size), [])
            history = [json.loads(line) for line in (rdir / "search" / "history.jsonl").open()]
            seen, best = set(), []
            for rec in sorted((h for h in history if h["reward"] is not None), key=lambda h: -h["reward"]):
                if rec["arch_str"] not in seen:
                    seen.add(rec["arch_str"])
                    best.append(rec)
            for rank, rec in enumerate(best[:args.top]):
                model = calibrated.model(r.space.validate(Arch.from_dict(rec["arch"])))
                q = embed(model, qx)
                rows.append({"supernet": mode, "reward": reward, "rank": rank, "arch": rec["arch_str"],
                             "mflops": rec["mflops"], "search_reward": rec["reward"],
                             "hom": retrieval_metrics(q, embed(model, gx), qy, gy, "x")["x_top1"],
                             "het": retrieval_metrics(q, g_emb, qy, gy, "x")["x_top1"]})
            artifacts.write_json(Path(args.out), {"rows": rows, "overrides": args.overrides})
    print("| supernet | reward | mean hom top-1 (best 5) | mean het top-1 (best 5) | mean MFLOPs |")
    print("|---|---|---|---|---|")
    for mode in ("vanilla", "BCT"):
        for reward in REWARDS:
            sel = [x for x in rows if x["supernet"] == mode and x["reward"] == reward]
            n = len(sel)
            print(f"| {mode} | {reward} | {sum(x['hom'] for x in sel) / n:.3f} | {sum(x['het'] for x in sel) / n:.3f} "
                  f"| {sum(x['mflops'] for x in sel) / n:.3f} |")


if __name__ == "__main__":
    main()
