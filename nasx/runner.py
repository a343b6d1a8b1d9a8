"""The one runner: a run directory, its stages in order, resume and DDP ranks — for every method.

``run(cfg)`` is a plain function (tests call it with a composed config); the CLI wraps it with Hydra. The method is
the object ``cfg.method`` names by ``_target_`` (``conf/method/<name>.yaml``, chosen by the experiment); it supplies
what each stage does (:class:`nasx.methods.base.Method`). The runner never names a method.

Every stage is resumable: run it again in the same run directory and it continues (training from ``last.ckpt``,
search from ``state.pt`` + ``history.jsonl``) or skips what is finished. Under DDP (``trainer=ddp``), the ranks > 0
take part in the training stage and, for a method with ``parallel_search`` (SPOS, CMP-NAS, MixPath), score their share
of every search round (:mod:`nasx.distributed`); rank 0 alone writes artifacts, retrains and evaluates.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nasx import artifacts, distributed, tracking
from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import ConfigError, NasxError
from nasx.rewards import make_reward
from nasx.stages import build, device_of
from nasx.training.base import OPTIMIZERS, SCHEDULES

log = logging.getLogger("nasx")
STAGES = ("train", "search", "retrain", "evaluate")


def is_ddp_worker() -> bool:
    """True in a DDP rank other than 0 (started by Lightning's or Fabric's launcher, torchrun, or SLURM tasks)."""
    return distributed.is_worker()


def _global_rank() -> int:
    return distributed.rank_world()[0]


class Run:
    """What the stages of a run share, built and validated before any work starts: the config, the run directory,
    the data module, the space, budget and reward, the arch given by ``arch=``, and whatever the method adds in its
    :meth:`~nasx.methods.base.Method.setup` (e.g. the search strategy)."""

    def __init__(self, cfg: DictConfig, method):
        self.cfg, self.method = cfg, method
        self.dir = Path(cfg.paths.run_dir)
        self.is_ddp_worker = is_ddp_worker()
        check_config(cfg)
        method.check_config(cfg)
        self.data = build(cfg.data, "data")
        self.data.check()
        if getattr(self.data, "video", False) and not _takes_video(cfg.space):
            raise ConfigError(f"data: {type(self.data).__name__} gives video clips (B, T, C, H, W) and space "
                              f"{cfg.space.get('_target_')} takes images (B, C, H, W); use a space that takes video")
        self.space: SearchSpace = build(cfg.space, "space", in_channels=self.data.in_channels,
                                        num_classes=self.data.num_classes)
        self.budget = Budget(mflops=cfg.budget.mflops, params=cfg.budget.params)
        self.space.check_feasible(self.budget)
        self.reward = make_reward(cfg.reward)
        self.fixed_arch = self._load_arch(cfg.arch) if cfg.arch else None
        self.device = distributed.device(device_of(cfg))
        method.setup(self)

    def _load_arch(self, value: str) -> Arch:
        """``arch=`` is a JSON file (e.g. a run's search/best.json) or an arch string as nasx prints it."""
        p = Path(str(value))
        if p.is_file():
            try:
                text = p.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"arch: '{p}' is unreadable ({type(e).__name__})") from None
            arch, where = self.space.validate(Arch.from_json(text, where=str(p)), where=str(p)), str(p)
        elif ":" in str(value) and "=" in str(value):
            arch, where = self.space.validate(Arch.from_str(str(value), where="arch"), where="arch"), "arch"
        else:
            raise ConfigError(f"arch: no such file '{p}' (expected a JSON arch such as a run's search/best.json, or "
                              f"an arch string such as '{self.space.name}:g0=1,...')")
        cost = self.space.cost(arch)
        if not self.budget.admits(cost):
            raise ConfigError(f"arch: '{where}' costs {cost.mflops:.3f} MFLOPs and {cost.params / 1e6:.4f} M params, "
                              f"over the budget {self.budget}; retrain it anyway with budget=none")
        return arch


def _takes_video(space_cfg: DictConfig) -> bool:
    """Whether the space class names ``video = True`` (its supernet takes clips (B, T, C, H, W)); an unresolvable
    ``_target_`` counts as yes, so that building the space reports it."""
    from hydra.utils import get_class

    try:
        return bool(getattr(get_class(str(space_cfg.get("_target_"))), "video", False))
    except Exception:  # noqa: BLE001 - hydra raises several types for a bad path
        return True


def check_stages(cfg: DictConfig) -> None:
    if not OmegaConf.is_list(cfg.get("stages")):
        raise ConfigError(f"stages must be a list such as [train,search] (accepted: {', '.join(STAGES)}), got "
                          f"{cfg.get('stages')!r}")
    if not cfg.stages:
        raise ConfigError(f"stages is empty: nothing to run (accepted: {', '.join(STAGES)})")
    bad = [s for s in cfg.stages if s not in STAGES]
    if bad:
        raise ConfigError(f"stages: unknown stage '{bad[0]}' (accepted: {', '.join(STAGES)})")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_training_group(cfg: DictConfig, group: str) -> None:
    """The optimiser and schedule keys of a training group (``train``, ``retrain``, ``gallery``)."""
    c = cfg.get(group)
    if not isinstance(c, DictConfig):
        return
    checks = (("epochs", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
              ("warmup_epochs", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
              ("lr", lambda v: _number(v) and v > 0, "a positive number"),
              ("momentum", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
              ("weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
              ("schedule", lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
              ("optimizer", lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
              ("warmup_steps", lambda v: _integer(v) and v >= 0, "an integer >= 0"))
    for key, ok, what in checks:
        if key in c and not ok(c[key]):
            raise ConfigError(f"{group}.{key} must be {what}, got {c[key]!r}")


def check_trainer(cfg: DictConfig) -> None:
    devices = OmegaConf.select(cfg, "trainer.devices")
    ok = devices == "auto" or devices == -1 or (_integer(devices) and devices > 0) or \
        (OmegaConf.is_list(devices) and len(devices) > 0 and all(_integer(d) and d >= 0 for d in devices))
    if not ok:
        raise ConfigError(f"trainer.devices must be a positive integer, -1 (all), 'auto' or a list of device "
                          f"indices, got {devices!r}")


def check_config(cfg: DictConfig) -> None:
    """Config errors every method shares name the key and what it accepts, before any work starts."""
    check_stages(cfg)
    if not _integer(cfg.get("seed")):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")
    for key in ("budget.mflops", "budget.params"):
        v = OmegaConf.select(cfg, key)
        if v is not None and (not _number(v) or not v > 0):
            raise ConfigError(f"{key} must be a positive number or null, got {v!r}")
    for group in ("train", "retrain", "gallery"):
        check_training_group(cfg, group)
    check_trainer(cfg)
    from nasx.launcher import check_tasks

    check_tasks(cfg)  # inside a SLURM job: its tasks per node against trainer.devices


def _remove_empty_run_dir(run_dir: Path) -> None:
    """A run that failed validation leaves no directory behind: remove Hydra's files (``.hydra/``, the job log)
    and the directory if nothing else is in it. Never removes anything else."""
    if not run_dir.is_dir():
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    for f in run_dir.glob("*.log"):
        f.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


def start(cfg: DictConfig) -> Run:
    """Validate and set up a run before any stage touches it. A bad config leaves no run directory behind; an existing
    run is left exactly as it was (its artifacts are checked readable first). A fresh run records its composed config
    in ``config.yaml``; a resumed one loses the temporary files of writes a kill interrupted."""
    run_dir = Path(cfg.paths.run_dir)
    fresh = not (run_dir / "config.yaml").exists()
    resumed = bool(cfg.get("resume"))  # a resumed run's directory is never removed, even one killed before config.yaml
    try:
        check_stages(cfg)
        if not fresh:
            artifacts.check_run(run_dir)
        r = Run(cfg, make_method(cfg))
    except NasxError:
        if fresh and not resumed:
            _remove_empty_run_dir(run_dir)
        raise
    if fresh:
        artifacts.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    else:
        for p in artifacts.remove_stale_tmp(run_dir):
            log.info("removed %s, left by a write that a kill interrupted", p)
    return r


def make_method(cfg: DictConfig):
    """The method object of ``cfg.method`` (a ``_target_`` node)."""
    node = cfg.get("method")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError("method must be a config with a _target_ (choose one with method=<name>, e.g. method=spos; "
                          "see conf/method/)")
    return build(node, "method", _convert_="object")


def run(cfg: DictConfig) -> dict:
    """Run ``cfg.stages`` in ``cfg.paths.run_dir``. Returns the results (empty unless evaluate is a stage)."""
    if is_ddp_worker():  # a rank > 0: it takes part in training, and in the search if the method splits it
        return _worker(cfg)
    r = start(cfg)
    method = r.method
    results = {}
    with tracking.track(r) as tracker:  # the configured experiment tracker (W&B), fed from the run directory
        for stage in STAGES:
            if stage not in cfg.stages:
                continue
            log.info("stage %s", stage)
            if stage == "search" and _parallel_search(cfg, method):
                distributed.ensure_process_group(cfg)  # the ranks Lightning's fit started, or new ones
                distributed.barrier()  # every rank reads what rank 0 wrote (train/last.ckpt, a resumed search)
            out = getattr(method, stage)(r)
            if stage == "train" and _global_rank() != 0:
                return {}  # a DDP rank > 0 that shares this process's entry point: rank 0 alone goes on
            tracker.stage_done(stage)
            if stage == "evaluate":
                results = out
    return results


def _parallel_search(cfg: DictConfig, method) -> bool:
    return "search" in cfg.stages and getattr(method, "parallel_search", False) and distributed.planned_world(cfg) > 1


def _worker(cfg: DictConfig) -> dict:
    """A DDP rank > 0: joins rank 0's supernet fit (unless the training is done), then, for a method with
    ``parallel_search``, scores its share of every search round without writing anything (nasx.distributed)."""
    method = make_method(cfg)
    r = Run(cfg, method)
    if "train" in cfg.stages:
        method.train(r)
    if _parallel_search(cfg, method):
        distributed.ensure_process_group(cfg)
        distributed.barrier()
        with artifacts.read_only():
            method.search(r)
    return {}


def results_table(cfg: DictConfig, results: dict):
    """The method's table of a run's results (for the CLI)."""
    return make_method(cfg).table(results)
