"""``nasx`` console script (also ``python -m nasx``): Hydra composes the config, :func:`nasx.pipeline.run` runs it.

``nasx resume=<run dir> [overrides]`` continues a killed run in its own directory with its own overrides (read from
``<run dir>/.hydra/overrides.yaml``); overrides given now win, e.g. ``nasx resume=<dir> stages=[search]``.
User errors (:class:`nasx.errors.NasxError`) print one line and exit with status 2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

# The configs ship as the package nasx.conf (pyproject.toml maps the top-level conf/ to it, for regular and editable
# installs); a checkout that is imported without that install (PYTHONPATH, an editable install from before the mapping)
# falls back to the repo's conf/ directory.
CONF_PKG = "nasx.conf"
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite ``resume=<dir> ...`` into the run's original overrides + the new ones + ``hydra.run.dir=<dir>``."""
    resume = [a for a in argv if _key(a) == "resume"]
    if not resume:
        return argv
    run_dir = Path(resume[-1].split("=", 1)[1])
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        sys.exit(f"nasx: error: resume={run_dir}: not a nasx run directory (no {overrides_file})")
    original = yaml.safe_load(overrides_file.read_text()) or []
    new_keys = {_key(a) for a in argv}
    kept = [o for o in original if _key(o) not in new_keys and _key(o) not in ("resume", "hydra.run.dir")]
    return kept + argv + [f"hydra.run.dir={run_dir}"]


MAX_DIRNAME = 120  # characters of a sweep job's directory name (file systems allow 255 bytes)


def short_dirname(name: str) -> str:
    """A sweep job's override string as a directory name: whole if short, else its head and a hash of the whole.
    The overrides themselves are in the job's ``.hydra/overrides.yaml`` and ``config.yaml``."""
    if len(name) <= MAX_DIRNAME:
        return name
    import hashlib

    return f"{name[:MAX_DIRNAME - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def main() -> None:
    from importlib.util import find_spec

    config_path = f"pkg://{CONF_PKG}" if find_spec(CONF_PKG) else str(CONF_DIR) if CONF_DIR.is_dir() else None
    if config_path is None:
        sys.exit(f"nasx: error: configs not found: no package {CONF_PKG} and no directory {CONF_DIR} (reinstall nasx)")
    sys.argv = [sys.argv[0]] + resume_argv(sys.argv[1:])
    os.environ.setdefault("WANDB_MODE", "offline")

    import hydra
    from omegaconf import DictConfig, OmegaConf

    if not OmegaConf.has_resolver("nasx_dirname"):
        OmegaConf.register_new_resolver("nasx_dirname", short_dirname)

    @hydra.main(config_path=config_path, config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        from nasx.errors import NasxError
        from nasx.pipeline import run

        _quiet_libraries()  # after the imports: importing Lightning sets its own log level
        try:
            results = run(cfg)
        except NasxError as e:
            print(f"nasx: error: {e}", file=sys.stderr)
            sys.exit(2)
        if results:
            _print_results(results)

    _main()


def _quiet_libraries() -> None:
    """Keep the console for nasx's own output: Lightning's banners and known-harmless warnings go."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*validation_step.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


def _print_results(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if r.get("method") == "nss":
        t = Table(title=f"nasx · {r['experiment']} · NSS protocol (within {100 * r['tolerance']:g} % of target)")
        console = Console()
        console.print("[bold]elite spaces[/bold] (depth range × width range, per stage):")
        for row in r["rows"]:
            spaces = " | ".join(f"d {b[0]}-{b[1]} × w {b[2]}-{b[3]}" for b in row["elite_bounds"])
            console.print(f"  {row['target_mflops']:g} MFLOPs: {spaces}")
        for col in ("target MFLOPs", "elite |Δ| %", "elite samples", "elite error %", "expanded |Δ| %",
                    "expanded samples", "expanded error %"):
            t.add_column(col, justify="right")
        fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        for row in r["rows"]:
            e, x = row["elite"], row["expanded"]
            t.add_row(f"{row['target_mflops']:g}", f"{e['delta_pct']:.1f}", f"{e['samples']:.1f}",
                      fmt(e["test_error_pct"]), f"{x['delta_pct']:.1f}", f"{x['samples']:.1f}", fmt(x["test_error_pct"]))
        a = r["average"]
        t.add_row("average", f"{a['elite']['delta_pct']:.1f}", f"{a['elite']['samples']:.1f}",
                  fmt(a["elite"]["test_error_pct"]), f"{a['expanded']['delta_pct']:.1f}",
                  f"{a['expanded']['samples']:.1f}", fmt(a["expanded"]["test_error_pct"]))
        console.print(t)
        return

    if r.get("method") == "cmp_nas":
        t = Table(title=f"nasx · {r['experiment']} · CMP-NAS: {r['mflops']:.3f} MFLOPs, reward {r['reward']}")
        from nasx.cmp_nas import table

        header, rows = table(r)  # one row per test metric, one column per model and side (hom / het), in %
        for i, col in enumerate(header):
            t.add_column(col, justify="right" if i else "left")
        for row in rows:
            t.add_row(*row)
        Console().print(t)
        return

    if r.get("method") == "mixpath":
        hv = r["hypervolume"]
        t = Table(title=f"nasx · {r['experiment']} · MixPath: {r['evaluations']} archs per search, hypervolume "
                        f"NSGA-II {hv['nsga2']:.4f} vs random {hv['random']:.4f}")
        for col in ("k", "MFLOPs", "params", "supernet val top-1", "retrained test top-1"):
            t.add_column(col, justify="right")
        for m in r["models"]:
            t.add_row(str(m["k"]), f"{m['mflops']:.3f}", f"{m['params']:,}", f"{100 * m['supernet_val_top1']:.2f} %",
                      f"{100 * m['test_top1']:.2f} %")
        Console().print(t)
        return

    t = Table(title=f"nasx · {r['experiment']}")
    t.add_column("metric")
    t.add_column("value", justify="right", overflow="fold")
    t.add_row("arch", r["arch_str"])
    t.add_row("MFLOPs", f"{r['mflops']:.3f}")
    t.add_row("params", f"{r['params']:,}")
    if r.get("search_reward") is not None:
        t.add_row("search reward (supernet, val)", f"{r['search_reward']:.4f}")
    if "supernet_test_top1" in r:
        t.add_row("test top-1, inherited weights", f"{100 * r['supernet_test_top1']:.2f} %")
    t.add_row("test top-1, retrained", f"{100 * r['retrain']['test_top1']:.2f} %")
    Console().print(t)


if __name__ == "__main__":
    main()
