"""Is the cluttered-digits data set hard enough to tell architectures apart? (issue 11)

Trains three ``shufflenet_cpu`` archs standalone for ``--epochs`` on ``data=cluttered_digits`` (32x32, the space's
input size) with nasx's own training (StandaloneTraining + fit_quiet, SGD nesterov, cosine) and reports test top-1:

- ``mid``: the middle choice of every gene ((n - 1) // 2: shuffle5 x 1.0 in every layer, 1.10 MFLOPs; the median
  of uniformly sampled archs is 1.17 MFLOPs);
- ``small``: the first choice of every gene (shuffle3 x 0.2, the cheapest arch);
- ``large``: the last choice of every gene (xception x 2.0, the costliest arch).

It also times one generation of the full data set (single-threaded if run as below).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python experiments/data/cluttered_difficulty.py
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python experiments/data/cluttered_difficulty.py --preview   # + the PNG grid

Results go to ``--out`` (JSON, written atomically after each model; a rerun with the same settings reuses the
models already trained). Extra ``--data`` overrides (Hydra syntax, e.g. ``data.noise=0.1``) change the recipe.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from nasx import artifacts
from nasx.data.cluttered import fingerprint, generate
from nasx.evaluation import classification_metrics
from nasx.training.base import fit_quiet
from nasx.training.standalone import StandaloneTraining

CONF = str(Path(__file__).resolve().parents[2] / "conf")
ARCHS = {"mid": lambda n: (n - 1) // 2, "small": lambda n: 0, "large": lambda n: n - 1}


def preview(data, path: Path, n: int = 40) -> None:
    """A 5 x 8 grid of the first ``n`` test images (32x32, as stored) titled with their labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = data._raw["test"]
    x = x[:n].float() if data.image_size == 32 else x[:n]
    fig, axes = plt.subplots(5, 8, figsize=(8, 5.6))
    for i, ax in enumerate(axes.flat):
        ax.imshow((x[i].permute(1, 2, 0) / 255).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(str(int(y[i])), fontsize=9)
        ax.axis("off")
    fig.suptitle("cluttered digits (nasx recipe), test split, data_seed 0", fontsize=10)
    artifacts.save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="mid,small,large", help=f"comma-separated, of {sorted(ARCHS)}")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="training seed (init, batch order); the data uses data_seed")
    ap.add_argument("--data-dir", default="data", help="paths.data_dir: the cache goes to <data-dir>/cluttered_digits")
    ap.add_argument("--data", nargs="*", default=[], help="extra Hydra overrides, e.g. data.noise=0.1")
    ap.add_argument("--preview", action="store_true", help="also write experiments/data/cluttered_digits.png")
    ap.add_argument("--out", default="experiments/data/cluttered_difficulty.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one core

    overrides = ["space=shufflenet_cpu", "data=cluttered_digits", f"data.batch_size={args.batch_size}",
                 f"paths.data_dir={args.data_dir}", f"seed={args.seed}", "paths.run_dir=unused", *args.data]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    data = instantiate(cfg.data)
    out = Path(args.out)
    state = json.loads(out.read_text()) if out.exists() else {}
    key = (f"{data.recipe.digest()}:d{data.data_seed}:n{data.n_train}/{data.n_test}:e{args.epochs}:lr{args.lr:g}:"
           f"bs{args.batch_size}:s{args.seed}")
    run = state.setdefault("runs", {}).setdefault(key, {"overrides": overrides, "models": {}})

    t = time.perf_counter()
    full = generate(data.data_seed, data.n_train, data.n_test, data.recipe)
    gen_s = time.perf_counter() - t
    run["generation"] = {"seconds": round(gen_s, 2), "threads": torch.get_num_threads(),
                         "sha256": fingerprint(full), "n_train": data.n_train, "n_test": data.n_test}
    print(f"generation of {data.n_train} + {data.n_test} images: {gen_s:.1f} s "
          f"({torch.get_num_threads()} thread), sha256 {run['generation']['sha256'][:16]}…", flush=True)
    del full
    data.setup()
    print(f"cache: {data.cache_path}; train {len(data._raw['train'][1])}, val {len(data._raw['val'][1])}, "
          f"test {len(data._raw['test'][1])}", flush=True)
    if args.preview:
        preview(data, Path("experiments/data/cluttered_digits.png"))
        print("preview: experiments/data/cluttered_digits.png", flush=True)

    space = instantiate(cfg.space, in_channels=data.in_channels, num_classes=data.num_classes)
    test = list(data.test_dataloader())
    val = list(data.val_dataloader())
    for name in args.archs.split(","):
        arch = space.arch({g: ARCHS[name](n) for g, n in space.genes.items()})
        if name in run["models"]:
            print(f"{name}: {run['models'][name]['test_top1']:.4f} (from {out})")
            continue
        torch.manual_seed(args.seed)
        model = space.supernet().extract(arch)  # fresh weights
        t = time.perf_counter()
        fit_quiet(StandaloneTraining(model, lr=args.lr, momentum=0.9, weight_decay=4e-5, nesterov=True,
                                     schedule="cosine"), data, args.epochs, args.seed)
        seconds = time.perf_counter() - t
        model.eval()
        cost = space.cost(arch)
        run["models"][name] = {"arch": str(arch), "describe": space.describe(arch), "mflops": round(cost.mflops, 4),
                               "params": cost.params, "test_top1": classification_metrics(model, test)["top1"],
                               "val_top1": classification_metrics(model, val)["top1"],
                               "train_seconds": round(seconds, 1)}
        artifacts.write_json(out, state)
        m = run["models"][name]
        print(f"{name}: test top-1 {m['test_top1']:.4f}, val {m['val_top1']:.4f} ({m['mflops']:.2f} MFLOPs, "
              f"{m['params']:,} params, {seconds:.0f} s)", flush=True)
    artifacts.write_json(out, state)


if __name__ == "__main__":
    main()
