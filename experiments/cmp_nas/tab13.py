"""CMP-NAS Tab. 1/3 on an embedded data set: the searched query model against hand-picked fixed architectures of
similar MFLOPs from the same space, all retrained with BCT, homogeneous and heterogeneous top-1/5/10.

Uses the BCT + R3 search of ``experiments/cmp_nas/fig1.py`` with the same ``--experiment`` (run that first; its
``--only bct_r3`` is enough). Hand-picked: every layer the same block (shuffle 3×3, 5×5, 7×7 or Xception) at the one
width index that brings the arch closest to the searched arch's MFLOPs without leaving the tier's budget.

    python experiments/cmp_nas/tab13.py       # the digits table in experiments/cmp_nas/RESULTS.md
    python experiments/cmp_nas/tab13.py --experiment cmp_nas_cluttered   # → experiments/cmp_nas/tab13_cluttered.json

Default paths follow the experiment as in fig1.py: ``outputs/cmp_fig1`` and ``tab13.json`` for ``cmp_nas_digits``,
``outputs/cmp_fig1_<name>`` and ``tab13_<name>.json`` for ``cmp_nas_<name>``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir

from nasx import artifacts
from nasx.arch import Arch
from nasx.evaluation.compatibility import retrieval_metrics
from nasx.evaluation.embedding import embed
from nasx.methods.cmp_nas import CMPNAS
from nasx.runner import Run
from nasx.stages import load_model, train_standalone
from nasx.spaces.shufflenet import BLOCKS

CONF = str(Path(__file__).resolve().parents[2] / "conf")
DEFAULT_EXPERIMENT = "cmp_nas_digits"


def default_paths(experiment: str) -> tuple[str, str]:
    """(runs root, output JSON): fig1.py's runs root for the experiment, and tab13[_<name>].json."""
    if experiment == DEFAULT_EXPERIMENT:
        return "outputs/cmp_fig1", "experiments/cmp_nas/tab13.json"
    tag = experiment.removeprefix("cmp_nas_")
    return f"outputs/cmp_fig1_{tag}", f"experiments/cmp_nas/tab13_{tag}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="the CMP-NAS experiment fig1.py ran")
    ap.add_argument("--runs", default=None, help="fig1.py's runs root (default: see above)")
    ap.add_argument("--out", default=None, help="results JSON (default experiments/cmp_nas/tab13[_<name>].json)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (e.g. retrain.epochs=1)")
    args = ap.parse_args()
    runs, out = default_paths(args.experiment)
    root, out = Path(args.runs or runs).resolve(), Path(args.out or out)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"experiment={args.experiment}", "progress=false", "train.loss.bct.weight=1", "reward=cmp_r3",
            f"paths.run_dir={root / 'BCT_cmp_r3'}",
            f"gallery.checkpoint={root / 'supernet_vanilla' / 'gallery' / 'model.pt'}", *args.overrides])
    method = CMPNAS()
    run = Run(cfg, method)
    gallery = method.reference(run)
    best = artifacts.read_json(run.dir / "search" / "best.json")
    searched = run.space.validate(Arch.from_dict(best["arch"]))
    target = run.space.cost(searched).mflops
    models = {"searched (BCT, R3)": searched}
    n_layers = len(run.space.genes) // 2
    for b, block in enumerate(BLOCKS):
        fits = [run.space.arch([v for _ in range(n_layers) for v in (b, w)]) for w in range(10)]
        fits = [a for a in fits if run.budget.admits(run.space.cost(a))]
        if fits:
            models[f"all {block}"] = min(fits, key=lambda a: abs(run.space.cost(a).mflops - target))

    run.data.setup("fit")
    (qx, qy), (gx, gy) = run.data.split("test"), run.data.split("train")
    g_emb = embed(gallery, gx)
    rows = {}
    for i, (name, arch) in enumerate(models.items()):
        train_standalone(run, arch, f"tab13/{i}", method.retrain_loss(run))  # BCT against the gallery
        model = load_model(run, arch, f"tab13/{i}").eval()
        q = embed(model, qx)
        rows[name] = {"arch": str(arch), "mflops": run.space.cost(arch).mflops,
                      **retrieval_metrics(q, embed(model, gx), qy, gy, "hom"),
                      **retrieval_metrics(q, g_emb, qy, gy, "het")}
        artifacts.write_json(out, rows)
    rows["paragon A(φg, φg)"] = {"arch": "gallery ResNet", "mflops": None,
                                 **retrieval_metrics(embed(gallery, qx), g_emb, qy, gy, "hom")}
    artifacts.write_json(out, rows)
    print("| query model | MFLOPs | hom top-1 | hom top-5 | hom top-10 | het top-1 | het top-5 | het top-10 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        cells = [f"{r[k]:.3f}" if k in r else "—" for k in
                 ("hom_top1", "hom_top5", "hom_top10", "het_top1", "het_top5", "het_top10")]
        mf = "—" if r["mflops"] is None else f"{r['mflops']:.3f}"
        print(f"| {name} | {mf} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
