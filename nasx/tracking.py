"""Experiment tracking of a whole run: with ``logger=wandb``, one W&B run per nasx run, fed from the run directory.

The runner opens a :class:`Tracker` when a run starts (:func:`track`), tells it after each stage and closes it at the
end. With a W&B logger (``conf/logger/wandb.yaml``) the tracker opens one W&B run for the nasx run, and after each
stage it logs what the stage left in the run directory, so every method gets the same dashboard without logging
anything itself:

* every ``history.jsonl`` (the search records): a table ``<dir>/records`` (generation, arch string, reward, MFLOPs,
  params, one column per metric, ...), and per generation ``<dir>/best_reward``, ``<dir>/mean_reward`` and
  ``<dir>/best_so_far`` against ``<dir>/generation`` (``<dir>`` is the history's directory, e.g. ``search`` or
  ``search/nsga2``);
* every ``*.png`` (search plots, Pareto fronts) as an image keyed by its path without the suffix (``search/search``,
  ``search/pareto``);
* ``results.json`` as the run summary.

Training curves come from Lightning: :class:`WandbLogger` (the ``_target_`` of ``conf/logger/wandb.yaml``) logs each
stage's fit into the tracker's W&B run instead of opening one per stage. The supernet's curves keep Lightning's keys
(``train/loss``) against ``trainer/global_step``; every other fit's go under its stage directory
(``retrain/train/loss``, ``retrain/val/top1``, ``gallery/...``) against ``<stage>/global_step``.

The runs of one sweep (``nasx -m``) share a W&B group (``<name>/<sweep directory name>``; a single run: ``name``) and
are tagged ``method=…``, ``reward=…``, ``budget=…`` and ``<key>=<value>`` for every swept key; the same values are in
the W&B config under ``sweep`` (next to the whole composed config). The W&B run's id, group, name and tags are
chosen once and kept in ``<run>/wandb/nasx.json``, so ``nasx resume=<run dir>`` continues the same W&B run
(``resume="allow"``), and what was logged already (by file size and time) is not logged again. Offline unless
``logger.offline=false`` and ``WANDB_MODE=online``; ``wandb sync <run dir>/wandb/offline-run-*`` uploads later.

``wandb`` is imported only when a W&B logger is configured: other loggers never need it.
"""
from __future__ import annotations

import json
import logging
import math
import secrets
import string
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nasx import artifacts
from nasx.errors import ConfigError, NasxError, one_line

log = logging.getLogger("nasx")

STATE_FILE = "nasx.json"  # under <run>/wandb/: the W&B run's identity and what was logged
MAX_TAG = 64  # W&B refuses longer tags
SKIP_DIRS = ("wandb", "logs", "lightning_logs", "tensorboard", "tb")  # loggers' own directories

_active: WandbTracker | None = None  # the open W&B tracker of this process (its stage loggers attach to it)


class Tracker:
    """What the runner tells a tracker; this one tracks nothing (every logger but W&B)."""

    def stage_done(self, stage: str) -> None:
        """``stage`` finished: log what it left in the run directory."""

    def close(self, failed: bool = False) -> None:
        """The run ended (``failed``: by an exception)."""


@contextmanager
def track(run):
    """The tracker of ``run`` (a :class:`~nasx.runner.Run`), closed when the block ends: as failed if it raised."""
    tracker = make_tracker(run)
    try:
        yield tracker
    except BaseException:
        try:
            tracker.close(failed=True)
        except Exception as e:  # noqa: BLE001 -- the run's own error is the one to report
            log.warning("could not close the experiment tracker (%s: %s)", type(e).__name__, e)
        raise
    tracker.close()


def make_tracker(run) -> Tracker:
    """A :class:`WandbTracker` when ``logger`` is a W&B logger and this process is rank 0, else a no-op tracker."""
    if not uses_wandb(run.cfg) or _launch_rank() != 0:
        return Tracker()
    return WandbTracker(run)


def uses_wandb(cfg: DictConfig) -> bool:
    """``cfg.logger`` builds Lightning's WandbLogger (or a subclass such as :class:`WandbLogger`)."""
    node = cfg.get("logger")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return False
    from hydra.utils import get_class

    try:
        cls = get_class(str(node._target_))
    except Exception:  # a bad _target_ is the logger's build error to report
        return False
    return isinstance(cls, type) and issubclass(cls, _LightningWandbLogger)


def _launch_rank() -> int:
    """The global rank the launcher gave this process (0 without one): SLURM's or torchrun's tasks > 0 track nothing."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    return _get_rank() or 0


def active_run():
    """The W&B run of the open tracker, or None."""
    return _active.wandb_run if _active is not None else None


# -- what identifies a run: sweep, group, tags -------------------------------------------------------------------
def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:
        return None


def choices(cfg: DictConfig) -> dict[str, str]:
    """The run's method, reward and budget as config-group choices (``spos``, ``cmp_r2``, ``mflops_100``): Hydra's
    when the CLI composed the config, else read from the config itself."""
    hc = _hydra_config()
    picked = dict(hc.runtime.choices) if hc is not None else {}
    out = {}
    for group in ("method", "reward", "budget"):
        value = picked.get(group)
        out[group] = str(value) if value is not None else _choice_from_config(cfg, group)
    return out


def _choice_from_config(cfg: DictConfig, group: str) -> str:
    node = cfg.get(group)
    if group == "method" and isinstance(node, DictConfig) and "_target_" in node:
        target = str(node._target_)
        try:
            from hydra.utils import get_class

            return str(getattr(get_class(target), "name", target.rsplit(".", 1)[-1].lower()))
        except Exception:
            return target.rsplit(".", 1)[-1].lower()
    if group == "reward" and isinstance(node, DictConfig) and node.get("name"):
        return str(node.name)
    if group == "budget" and isinstance(node, DictConfig):
        mflops, params = node.get("mflops"), node.get("params")
        if mflops is None and params is None:
            return "none"
        return "_".join(f"{k}_{v:g}" for k, v in (("mflops", mflops), ("params", params)) if v is not None)
    return "none" if node is None else "custom"


def swept_values(cfg: DictConfig) -> dict[str, str]:
    """``key -> value`` of this job's swept overrides (``nasx -m reward=a,b seed=1,2``: ``{reward: a, seed: 1}``);
    empty for a single run."""
    hc = _hydra_config()
    if hc is None:
        return {}
    from nasx import cli

    swept = set(cli.swept())
    out = {}
    for o in hc.overrides.task:
        key = cli._key(o)
        if key in swept and "=" in o:
            out[key] = o.split("=", 1)[1]
    return out


def typed(cfg: DictConfig, swept: dict[str, str], picked: dict[str, str]) -> dict:
    """The swept keys' values as the config holds them (``seed=1`` → 1, ``train.lr=1e-3`` → 0.001); a config group's
    value is its choice (``reward=cmp_r2`` → ``"cmp_r2"``)."""
    out = {}
    for key, text in swept.items():
        value = picked.get(key, OmegaConf.select(cfg, key, default=text))
        out[key] = text if OmegaConf.is_config(value) else value
    return out


def default_group(cfg: DictConfig) -> str:
    """The runs of one sweep share a group: ``<name>/<sweep directory name>``; a single run's group is ``name``."""
    from hydra.types import RunMode

    hc = _hydra_config()
    if hc is not None and hc.mode == RunMode.MULTIRUN:
        return f"{cfg.name}/{Path(str(hc.sweep.dir)).name}"
    return str(cfg.name)


def run_name(base: str, swept: dict[str, str], run_dir: Path) -> str:
    """The W&B run's display name: ``<name>/<swept key=value,...>`` in a sweep, else ``<name>/<run dir name>``."""
    return f"{base}/{','.join(f'{k}={v}' for k, v in swept.items()) if swept else Path(run_dir).name}"


def make_tags(picked: dict[str, str], swept: dict[str, str], extra=()) -> list[str]:
    """``method=…``, ``reward=…``, ``budget=…``, then ``key=value`` of every swept key, then ``extra``; each cut
    to W&B's 64 characters, without repeats."""
    tags = [f"{k}={v}" for k, v in picked.items()] + [f"{k}={v}" for k, v in swept.items()] + [str(t) for t in extra]
    return list(dict.fromkeys(t[:MAX_TAG] for t in tags))


def _new_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _container(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that only resolves under Hydra's runtime
        return OmegaConf.to_container(cfg, resolve=False)


# -- reading the run directory -------------------------------------------------------------------------------------
def _files(run_dir: Path, pattern: str) -> list[Path]:
    """``pattern`` files under the run directory, outside hidden and loggers' directories, in path order."""
    out = []
    for p in sorted(run_dir.rglob(pattern)):
        rel = p.relative_to(run_dir).parts
        if p.is_file() and not any(part.startswith(".") for part in rel) and not any(d in SKIP_DIRS for d in rel[:-1]):
            out.append(p)
    return out


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _cell(v):
    """A table cell: numbers, strings, booleans and None as they are; anything else as JSON text."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return _finite(v)
    return json.dumps(v, sort_keys=True)


FIXED_COLUMNS = ("generation", "round", "arch", "reward", "mflops", "params", "cached", "status", "feasible",
                 "objectives")


def records_table(records: list[dict]) -> tuple[list[str], list[list]]:
    """The search records as table columns and rows: the fixed columns, then one per metric (a metric named like a
    fixed column gets a ``metric.`` prefix)."""
    metric_names: list[str] = []
    for r in records:
        for k in (r.get("metrics") or {}):
            if k not in metric_names:
                metric_names.append(k)
    columns = list(FIXED_COLUMNS) + [f"metric.{m}" if m in FIXED_COLUMNS else m for m in metric_names]
    rows = []
    for r in records:
        metrics = r.get("metrics") or {}
        arch = r.get("arch_str") or json.dumps(r.get("arch"), sort_keys=True)
        rows.append([_cell(r.get("gen")), _cell(r.get("round", r.get("gen"))), arch, _cell(r.get("reward")),
                     _cell(r.get("mflops")), _cell(r.get("params")), _cell(r.get("cached")),
                     r.get("status", "ok"), _cell(r.get("feasible")), _cell(r.get("objectives"))]
                    + [_cell(metrics.get(m)) for m in metric_names])
    return columns, rows


def generation_rewards(records: list[dict]) -> list[dict]:
    """Per generation with a scored candidate: ``generation``, the generation's ``best_reward`` and
    ``mean_reward``, the ``best_so_far`` and the number of scored ``candidates``."""
    by_gen: dict[int, list[float]] = {}
    for r in records:
        v = r.get("reward")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "gen" in r:
            by_gen.setdefault(int(r["gen"]), []).append(float(v))
    out, best = [], -math.inf
    for g in sorted(by_gen):
        rewards = by_gen[g]
        best = max(best, max(rewards))
        out.append({"generation": g, "best_reward": max(rewards), "mean_reward": sum(rewards) / len(rewards),
                    "best_so_far": best, "candidates": len(rewards)})
    return out


# -- the W&B tracker -----------------------------------------------------------------------------------------------
class WandbTracker(Tracker):
    """One W&B run for one nasx run (see the module's docstring)."""

    def __init__(self, run):
        global _active
        try:
            import wandb
        except ImportError:
            raise ConfigError("logger=wandb needs the wandb package (pip install wandb), or choose another logger "
                              "(logger=csv, logger=tensorboard)") from None
        self.wandb = wandb
        self.dir = Path(run.dir)
        cfg, node = run.cfg, run.cfg.logger
        self.state_path = self.dir / "wandb" / STATE_FILE
        state = self._read_state()
        picked, swept = choices(cfg), swept_values(cfg)
        self.state = {"id": state.get("id") or _new_id(),
                      "group": state.get("group") or str(node.get("group") or default_group(cfg)),
                      "name": state.get("name") or run_name(str(node.get("name") or cfg.name), swept, self.dir),
                      "tags": state.get("tags") or make_tags(picked, swept, node.get("tags") or ()),
                      "sweep": state.get("sweep") or {**picked, "seed": cfg.get("seed"), **typed(cfg, swept, picked)},
                      "logged": state.get("logged") or {}}
        self._save_state()
        try:
            self.wandb_run = wandb.init(
                id=self.state["id"], resume="allow", project=str(node.get("project") or "nasx"),
                entity=node.get("entity"), group=self.state["group"], name=self.state["name"],
                tags=self.state["tags"], dir=str(self.dir), mode="offline" if node.get("offline", False) else None,
                job_type=node.get("job_type"))
        except Exception as e:  # e.g. online without a login: one line, before any stage runs
            raise NasxError(f"logger=wandb: W&B could not start a run ({one_line(e)}); logger.offline=true (the "
                            f"default) logs without an account") from None
        # the composed config and the sweep's values; a resumed run's overrides may change values
        self.wandb_run.config.update({**_container(cfg), "sweep": self.state["sweep"]}, allow_val_change=True)
        _active = self
        self._defined: set[str] = set()
        log.info("W&B run %s (group %s) in %s", self.state["id"], self.state["group"], self.dir / "wandb")

    # -- state ---------------------------------------------------------------------------------------------------
    def _read_state(self) -> dict:
        if not self.state_path.is_file():
            return {}
        try:
            state = artifacts.read_json(self.state_path)
            return state if isinstance(state, dict) else {}
        except (ValueError, UnicodeDecodeError, OSError):
            log.warning("'%s' is unreadable: this run gets a new W&B run", self.state_path)
            return {}

    def _save_state(self) -> None:
        artifacts.write_json(self.state_path, self.state)

    def _is_new(self, path: Path) -> bool:
        st = path.stat()
        return self.state["logged"].get(str(path.relative_to(self.dir))) != [st.st_size, st.st_mtime_ns]

    def _mark(self, path: Path) -> None:
        st = path.stat()
        self.state["logged"][str(path.relative_to(self.dir))] = [st.st_size, st.st_mtime_ns]

    def define(self, key: str, step_metric: str | None = None) -> None:
        """``key``'s x-axis (W&B ``define_metric``), once."""
        if key not in self._defined:
            if step_metric:
                self.wandb_run.define_metric(key, step_metric=step_metric)
            else:
                self.wandb_run.define_metric(key)
            self._defined.add(key)

    # -- logging ---------------------------------------------------------------------------------------------------
    def stage_done(self, stage: str) -> None:
        """Log every search history, plot and the results that are new or changed since they were last logged. A
        file that fails to log is a warning (the run's own artifacts are safe) and is tried again after the next
        stage."""
        results = self.dir / "results.json"
        todo = [(p, self.log_history) for p in _files(self.dir, "history.jsonl")] + \
               [(p, self.log_image) for p in _files(self.dir, "*.png")] + \
               ([(results, self.log_results)] if results.is_file() else [])
        for path, log_file in todo:
            if not self._is_new(path):
                continue
            try:
                log_file(path)
            except Exception as e:  # noqa: BLE001 -- tracking never stops a run
                log.warning("W&B: could not log '%s' after stage %s (%s: %s)", path, stage, type(e).__name__, e)
                continue
            self._mark(path)
        self._save_state()

    def log_history(self, path: Path) -> None:
        """A search's records as a table, and its per-generation rewards."""
        records = artifacts.read_jsonl(path)
        prefix = path.parent.relative_to(self.dir).as_posix()
        prefix = "search" if prefix == "." else prefix
        columns, rows = records_table(records)
        self.wandb_run.log({f"{prefix}/records": self.wandb.Table(columns=columns, data=rows,
                                                                  allow_mixed_types=True)})
        step = f"{prefix}/generation"
        self.define(step)
        for row in generation_rewards(records):
            keys = {f"{prefix}/{k}": v for k, v in row.items()}
            for k in keys:
                if k != step:
                    self.define(k, step)
            self.wandb_run.log(keys)

    def log_image(self, path: Path) -> None:
        key = path.relative_to(self.dir).with_suffix("").as_posix()
        self.wandb_run.log({key: self.wandb.Image(str(path))})

    def log_results(self, path: Path) -> None:
        """results.json as the run summary."""
        results = artifacts.read_json(path)
        if isinstance(results, dict):
            self.wandb_run.summary.update(results)

    def close(self, failed: bool = False) -> None:
        global _active
        if _active is self:
            _active = None
        self.wandb_run.finish(exit_code=1 if failed else 0)


# -- the Lightning logger ----------------------------------------------------------------------------------------
class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger that, while a nasx run's W&B tracker is open, logs into that W&B run instead of
    opening one of its own, under its stage's keys: the ``train`` stage's keys as they are (``train/loss``, against
    ``trainer/global_step``), any other stage's under its directory relative to the run (``retrain/train/loss``,
    against ``retrain/global_step``). Without an open tracker it is Lightning's WandbLogger."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stage_key = None  # None: not attached to a tracker's run
        save_dir = kwargs.get("save_dir")
        if _active is not None and save_dir is not None:
            try:
                rel = Path(save_dir).resolve().relative_to(_active.dir.resolve()).as_posix()
            except ValueError:
                rel = Path(save_dir).name
            self._stage_key = "" if rel in ("train", ".") else rel

    @property
    def experiment(self):
        if self._experiment is None and self._stage_key is not None and rank_zero_only.rank == 0:
            run = active_run()
            if run is not None:
                self._experiment = run
        return super().experiment

    def _key(self, key: str) -> str:
        return f"{self._stage_key}/{key}" if self._stage_key else key

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if self._stage_key is None or _active is None or self.experiment is not _active.wandb_run:
            return super().log_metrics(metrics, step)
        step_key = f"{self._stage_key}/global_step" if self._stage_key else "trainer/global_step"
        logged = {self._key(k): v for k, v in metrics.items()}
        _active.define(step_key)
        for k in logged:
            _active.define(k, step_key)
        if step is not None:
            logged[step_key] = step
        self.experiment.log(logged)

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        if self._stage_key is None or _active is None or self.experiment is not _active.wandb_run:
            return super().log_hyperparams(params)
        from lightning.fabric.utilities.logger import (_convert_json_serializable, _convert_params,
                                                       _sanitize_callable_params)

        params = _convert_json_serializable(_sanitize_callable_params(_convert_params(params)))
        if params:  # under the stage's own key: one stage's hyper-parameters never overwrite another's
            self.experiment.config.update({f"hparams/{self._stage_key or 'train'}": params}, allow_val_change=True)
