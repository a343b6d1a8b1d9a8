"""``nasx`` console script (also ``python -m nasx``): Hydra composes the config, :func:`nasx.runner.run` runs it, and the method's
results table is printed.

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
        from nasx.runner import results_table, run

        _quiet_libraries()  # after the imports: importing Lightning sets its own log level
        try:
            results = run(cfg)
        except NasxError as e:
            print(f"nasx: error: {e}", file=sys.stderr)
            sys.exit(2)
        if results:
            print_table(results_table(cfg, results))

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


def print_table(table) -> None:
    """A method's :class:`~nasx.methods.base.ResultsTable` on the console."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for line in table.notes:
        console.print(line)
    t = Table(title=table.title)
    for i, col in enumerate(table.columns):
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in table.rows:
        t.add_row(*row)
    console.print(t)


if __name__ == "__main__":
    main()
