"""``nasx`` console script (also ``python -m nasx``): Hydra composes the config, :func:`nasx.runner.run` runs it, and the method's
results table is printed.

``nasx compare <run or sweep dir>...`` tables the runs' results side by side (:mod:`nasx.compare`).
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
    from nasx.errors import ConfigError

    resume = [a for a in argv if _key(a) == "resume"]
    if not resume:
        return argv
    run_dir = Path(resume[-1].split("=", 1)[1])
    if not run_dir.is_dir():
        raise ConfigError(f"resume={run_dir}: no such directory (give the directory of a run, e.g. "
                          f"outputs/<name>/<time>)")
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise ConfigError(f"resume={run_dir}: not a nasx run directory (no {overrides_file})")
    try:
        original = yaml.safe_load(overrides_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"resume={run_dir}: '{overrides_file}' is unreadable ({type(e).__name__}); it lists the "
                          f"run's overrides: restore it, or start a new run") from None
    if original is None:
        original = []
    if not isinstance(original, list) or not all(isinstance(o, str) and "=" in o for o in original):
        raise ConfigError(f"resume={run_dir}: '{overrides_file}' is not a list of key=value overrides; it lists the "
                          f"run's overrides: restore it, or start a new run")
    new_keys = {_key(a) for a in argv}
    kept = [o for o in original if _key(o) not in new_keys and _key(o) not in ("resume", "hydra.run.dir")]
    return kept + argv + [f"hydra.run.dir={run_dir}"]


MAX_DIRNAME = 120  # characters of a sweep job's directory name (file systems allow 255 bytes)
_SWEPT: list[str] = []  # the keys a `nasx -m` command line sweeps, in its order (set by main)


def swept() -> list[str]:
    """The swept keys of this command line, or, in a job a cluster launcher runs in another process (submitit), of
    the command that submitted it (``NASX_SWEPT``, set by :func:`main` and inherited by the job)."""
    return list(_SWEPT) or [k for k in os.environ.get("NASX_SWEPT", "").split(",") if k]


def short_dirname(name: str) -> str:
    """A sweep job's override string as a directory name: whole if short, else its head and a hash of the whole.
    The overrides themselves are in the job's ``.hydra/overrides.yaml`` and ``config.yaml``."""
    if len(name) <= MAX_DIRNAME:
        return name
    import hashlib

    return f"{name[:MAX_DIRNAME - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def job_dirname(overrides, exclude=()) -> str:
    """A sweep job's directory name from its overrides (``hydra.overrides.task``): the swept keys first, in the
    command line's order, so that jobs are told apart by the start of their names; then the other overrides, sorted;
    ``exclude`` keys left out. Cut and hashed by :func:`short_dirname` when long."""
    items = {_key(o): o.lstrip("+~") for o in overrides if _key(o) not in set(exclude)}
    swept_first = [k for k in swept() if k in items]
    return short_dirname(",".join([items[k] for k in swept_first] +
                                  [items[k] for k in sorted(items) if k not in swept_first]))


def register_resolvers() -> None:
    """nasx's OmegaConf resolvers (``nasx_dirname``: a sweep job's directory name, see conf/hydra/default.yaml)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("nasx_dirname"):
        OmegaConf.register_new_resolver("nasx_dirname", job_dirname)


# A submitit job unpickles the task function (which refers to this module) in a new process, where Hydra resolves the
# job's directory name: the resolver must be there before main() runs.
register_resolvers()


def swept_keys(argv: list[str]) -> list[str]:
    """The keys of ``argv``'s sweep overrides (``seed=1,2``, ``range(...)``, ``choice(...)``, ...)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        overrides = [a for a in argv if "=" in a and not a.startswith("-")]  # not Hydra's flags (-m, --cfg, ...)
        return [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    except Exception:  # a malformed override: Hydra reports it itself
        return []


SUBMITIT_LAUNCHERS = {"slurm": "SlurmQueueConf", "submitit_slurm": "SlurmQueueConf",
                      "submitit_local": "LocalQueueConf"}


def check_launcher(argv: list[str]) -> None:
    """``hydra/launcher=`` and ``hydra.launcher.<key>=`` overrides, before Hydra composes anything: an unknown
    launcher, a cluster launcher whose plugin is not installed, or a key the launcher does not have is one line."""
    from nasx.errors import ConfigError

    names = [a.split("=", 1)[1] for a in argv if _key(a) == "hydra/launcher"]
    name = names[-1] if names else "basic"
    keys = [_key(a).split(".", 2)[2] for a in argv if _key(a).startswith("hydra.launcher.")]
    ours = sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml"))
    known = sorted({"basic", *SUBMITIT_LAUNCHERS, *ours})
    if name in SUBMITIT_LAUNCHERS:
        from nasx.launcher import INSTALL

        if not submitit_installed():
            raise ConfigError(f"hydra/launcher={name} needs hydra-submitit-launcher, which is not installed: {INSTALL}")
        _discoverable_plugin()
        import dataclasses

        from hydra_plugins.hydra_submitit_launcher import config

        fields = {f.name for f in dataclasses.fields(getattr(config, SUBMITIT_LAUNCHERS[name]))}
        for key in keys:
            if key.split(".")[0] not in fields:
                extra = " (other sbatch options go in hydra.launcher.additional_parameters)" if "slurm" in name else ""
                raise ConfigError(f"hydra.launcher.{key}: launcher '{name}' has no such key; its keys: "
                                  f"{', '.join(sorted(fields - {'_target_'}))}{extra}")
    elif name not in known and not name.startswith(("joblib", "ray", "rq")):
        raise ConfigError(f"hydra/launcher={name}: no such launcher (nasx knows {', '.join(known)})")
    elif name == "basic" and keys:
        raise ConfigError(f"hydra.launcher.{keys[0]}: the default launcher (basic) has no settings; choose a cluster "
                          f"launcher first, e.g. hydra/launcher=slurm")


def _discoverable_plugin() -> None:
    """Hydra finds launcher classes by walking the ``hydra_plugins`` namespace package's directories; an editable
    install of nasx imports ``hydra_plugins.nasx_launcher`` through setuptools' finder, which that walk does not see,
    so the checkout's directory is added to the namespace's path (a regular install puts it in site-packages)."""
    import hydra_plugins

    here = str(CONF_DIR.parent / "hydra_plugins")
    if Path(here, "nasx_launcher").is_dir() and here not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(here)


def submitit_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("hydra_plugins.hydra_submitit_launcher") is not None


class RunGuard:
    """What a failed command must leave as it was. A resumed run's ``.hydra/`` files and job log are put back (Hydra
    rewrites them before nasx sees the config); the directories a fresh run created for nothing are removed."""

    def __init__(self, argv: list[str]):
        self.snapshot: dict[Path, bytes] = {}
        run_dirs = [a.split("=", 1)[1] for a in argv if _key(a) == "hydra.run.dir"]
        if any(_key(a) == "resume" for a in argv) and run_dirs:
            run_dir = Path(run_dirs[-1])
            for p in [*(run_dir / ".hydra").glob("*"), *run_dir.glob("*.log")]:
                if p.is_file():
                    self.snapshot[p] = p.read_bytes()
            self.hydra_dir = run_dir / ".hydra"
        else:
            self.hydra_dir = None
        outputs = [a.split("=", 1)[1] for a in argv if _key(a) == "paths.output_dir"]
        self.output_dir = Path(outputs[-1] if outputs else "outputs").absolute()
        self.existed = {p for p in (self.output_dir, *self.output_dir.parents) if p.exists()}

    def check_output_dir(self) -> None:
        """The output directory (or its nearest existing parent) is a writable directory: Hydra would otherwise
        stop with a traceback when it makes the run directory."""
        from nasx.errors import ConfigError

        p = self.output_dir
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            raise ConfigError(f"paths.output_dir={self.output_dir}: '{p}' is a file, not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"paths.output_dir={self.output_dir}: '{p}' is not writable")

    def failed(self, run_dir: Path | None) -> None:
        for p, data in self.snapshot.items():
            if not p.exists() or p.read_bytes() != data:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        if self.hydra_dir is not None:
            for p in self.hydra_dir.glob("*"):
                if p.is_file() and p not in self.snapshot:
                    p.unlink()
            return
        # a fresh run: the runner removed its run directory; its parents made for it go too, if empty
        d = Path(run_dir).absolute() if run_dir is not None else None
        while d is not None and d not in self.existed and d != d.parent:
            if d.is_dir():
                if any(d.iterdir()):
                    break
                d.rmdir()
            d = d.parent


def _fail(e: BaseException) -> None:
    print(f"nasx: error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """The console script. ``argv`` (default ``sys.argv[1:]``) lets tests drive it in-process."""
    from importlib.util import find_spec

    from nasx.errors import NasxError, one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:  # `nasx compare <dirs>`: no Hydra, no run
        from nasx.compare import main as compare

        try:
            compare(argv[1:])
        except NasxError as e:
            _fail(e)
        return
    config_path = f"pkg://{CONF_PKG}" if find_spec(CONF_PKG) else str(CONF_DIR) if CONF_DIR.is_dir() else None
    if config_path is None:
        _fail(f"configs not found: no package {CONF_PKG} and no directory {CONF_DIR} (reinstall nasx)")
    try:
        argv = resume_argv(argv)
        check_launcher(argv)
        guard = RunGuard(argv)
        guard.check_output_dir()
    except NasxError as e:
        _fail(e)
    _SWEPT[:] = swept_keys(argv)
    os.environ["NASX_SWEPT"] = ",".join(_SWEPT)  # for jobs a cluster launcher runs in other processes
    prog = sys.argv[0] if sys.argv else "nasx"
    sys.argv = [prog] + argv
    os.environ.setdefault("WANDB_MODE", "offline")

    import hydra
    from omegaconf import DictConfig, OmegaConf

    register_resolvers()

    @hydra.main(config_path=config_path, config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        from nasx.runner import results_table, run

        _quiet_libraries()  # after the imports: importing Lightning sets its own log level
        run_dir = OmegaConf.select(cfg, "paths.run_dir", default=None)
        try:
            results = run(cfg)
        except NasxError as e:
            guard.failed(run_dir)
            _fail(e)
        except OSError as e:  # the machine refused a file operation (read-only or full disk, permissions)
            guard.failed(run_dir)
            where = f"'{e.filename}': " if e.filename else ""
            then = f"; fix it, then nasx resume={run_dir}" if run_dir and (Path(run_dir) / "config.yaml").exists() \
                else ""
            _fail(f"{where}{e.strerror or one_line(e)} ({type(e).__name__}){then}")
        except BaseException:
            guard.failed(run_dir)
            raise
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
