"""CMP-NAS supplementary Fig. 1 on an embedded data set: the reward study.

For each supernet training mode {vanilla (BCT weight 0), BCT (BCT weight 1)} the query supernet of
``--experiment`` (default ``cmp_nas_digits``; ``cmp_nas_cluttered`` for the cluttered digits) is trained once (one
shared gallery model), then searched with each reward R1, R2, R3; the best 5 architectures of every search are scored
on the test queries with inherited, BN-recalibrated supernet weights: homogeneous A(φq, φq) and heterogeneous
A(φq, φg) top-1 (training split as the gallery).

    python experiments/cmp_nas/fig1.py          # the table in experiments/cmp_nas/RESULTS.md
    python experiments/cmp_nas/fig1.py --experiment cmp_nas_cluttered --only bct_r3   # what tab13.py needs

Runs go to ``--runs`` (one nasx run directory per supernet and per search; default ``outputs/cmp_fig1`` for the
digits, ``outputs/cmp_fig1_<name>`` for ``cmp_nas_<name>``); every stage resumes. The gallery model is always trained
in ``<runs>/supernet_vanilla/gallery/``. ``--only bct_r3`` trains the gallery model (without the vanilla supernet),
the BCT supernet and its R3 search only: the runs ``tab13.py`` needs.
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
from nasx.runner import Run, run, start
from nasx.stages import load_supernet

CONF = str(Path(__file__).resolve().parents[2] / "conf")
REWARDS = ("cmp_r1", "cmp_r2", "cmp_r3")
DEFAULT_EXPERIMENT = "cmp_nas_digits"
ONLY = {"bct_r3": (("BCT", "cmp_r3"),)}  # --only: the (supernet, reward) searches to run


def default_paths(experiment: str, stem: str) -> tuple[str, str]:
    """(runs root, output JSON) for ``stem`` ("fig1" or "tab13"): the digits' historical paths for the default
    experiment, ``outputs/cmp_fig1_<name>`` and ``experiments/cmp_nas/<stem>_<name>.json`` for ``cmp_nas_<name>``."""
    if experiment == DEFAULT_EXPERIMENT:
        return "outputs/cmp_fig1", f"experiments/cmp_nas/{stem}.json"
    tag = experiment.removeprefix("cmp_nas_")
    return f"outputs/cmp_fig1_{tag}", f"experiments/cmp_nas/{stem}_{tag}.json"


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="a CMP-NAS experiment config (conf/experiment/)")
    ap.add_argument("--runs", default=None, help="runs root (default: see above)")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--out", default=None, help="results JSON (default experiments/cmp_nas/fig1[_<name>].json)")
    ap.add_argument("--only", choices=sorted(ONLY), default=None,
                    help="only the gallery, the BCT supernet and its R3 search (what tab13.py needs)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    runs, out = default_paths(args.experiment, "fig1")
    root, out = Path(args.runs or runs), Path(args.out or out)
    base = [f"experiment={args.experiment}", "progress=false", *args.overrides]
    wanted = ONLY[args.only] if args.only else tuple((m, r) for m in ("vanilla", "BCT") for r in REWARDS)

    shared = f"gallery.checkpoint={(root / 'supernet_vanilla' / 'gallery' / 'model.pt').resolve()}"
    rows = []
    for bct in (0, 1):
        mode = "BCT" if bct else "vanilla"
        sdir = root / f"supernet_{mode}"
        if not any(m == mode for m, _ in wanted):
            if not bct:  # the gallery model alone, where every other run expects it
                r = start(_cfg([*base, "train.loss.bct.weight=0", "stages=[train]", f"paths.run_dir={sdir}"]))
                r.method.reference(r)
            continue
        gal = [shared] if bct else []  # the vanilla run trains the gallery model every other run shares
        run(_cfg([*base, f"train.loss.bct.weight={bct}", "stages=[train]", f"paths.run_dir={sdir}", *gal]))
        for reward in REWARDS:
            if (mode, reward) not in wanted:
                continue
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
            record = {"rows": rows, "overrides": args.overrides}
            if args.experiment != DEFAULT_EXPERIMENT or args.only:  # the digits' fig1.json keeps its old form
                record = {"experiment": args.experiment, "only": args.only, **record}
            artifacts.write_json(out, record)
    print(f"| supernet | reward | mean hom top-1 (best {args.top}) | mean het top-1 (best {args.top}) | mean MFLOPs |")
    print("|---|---|---|---|---|")
    for mode, reward in wanted:
        sel = [x for x in rows if x["supernet"] == mode and x["reward"] == reward]
        n = len(sel)
        print(f"| {mode} | {reward} | {sum(x['hom'] for x in sel) / n:.3f} | {sum(x['het'] for x in sel) / n:.3f} "
              f"| {sum(x['mflops'] for x in sel) / n:.3f} |")


if __name__ == "__main__":
    main()
