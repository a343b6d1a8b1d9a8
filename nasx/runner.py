"""The one runner: a run directory, its stages in order, resume and DDP ranks — for every method.

``run(cfg)`` is a plain function (tests call it with a composed config); the CLI wraps it with Hydra. The method is
the object ``cfg.method`` names by ``_target_`` (``conf/method/<name>.yaml``, chosen by the experiment); it supplies
what each stage does (:class:`nasx.methods.base.Method`). The runner never names a method.

Every stage is resumable: run it again in the same run directory and it continues (training from ``last.ckpt``,
search from ``state.pt`` + ``history.jsonl``) or skips what is finished. Under DDP (``trainer=ddp``), the processes
Lightning starts for ranks > 0 only take part in the training stage; rank 0 alone goes on.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nasx import artifacts
from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import ConfigError, NasxError
from nasx.rewards import make_reward
from nasx.stages import device_of

log = logging.getLogger("nasx")
STAGES = ("train", "search", "retrain", "evaluate")


def is_ddp_worker() -> bool:
    """True in the processes Lightning's DDP launcher starts for ranks other than 0."""
    return int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0


def _global_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() \
        else 0


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
        self.data = instantiate(cfg.data)
        self.data.check()
        self.space: SearchSpace = instantiate(cfg.space, in_channels=self.data.in_channels,
                                              num_classes=self.data.num_classes)
        self.budget = Budget(mflops=cfg.budget.mflops, params=cfg.budget.params)
        self.space.check_feasible(self.budget)
        self.reward = make_reward(cfg.reward)
        self.fixed_arch = self._load_arch(cfg.arch) if cfg.arch else None
        self.device = device_of(cfg)
        method.setup(self)

    def _load_arch(self, value: str) -> Arch:
        """``arch=`` is a JSON file (e.g. a run's search/best.json) or an arch string as nasx prints it."""
        p = Path(str(value))
        if p.is_file():
            return self.space.validate(Arch.from_json(p.read_text(), where=str(p)), where=str(p))
        if ":" in str(value) and "=" in str(value):
            return self.space.validate(Arch.from_str(str(value), where="arch"), where="arch")
        raise ConfigError(f"arch: no such file '{p}' (expected a JSON arch such as a run's search/best.json, or an "
                          f"arch string such as '{self.space.name}:g0=1,...')")


def check_stages(cfg: DictConfig) -> None:
    bad = [s for s in cfg.stages if s not in STAGES]
    if bad:
        raise ConfigError(f"stages: unknown stage '{bad[0]}' (accepted: {', '.join(STAGES)})")


def check_config(cfg: DictConfig) -> None:
    """Config errors every method shares name the key and what it accepts, before any work starts."""
    check_stages(cfg)
    for key in ("budget.mflops", "budget.params"):
        v = OmegaConf.select(cfg, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ConfigError(f"{key} must be a positive number or null, got {v!r}")


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


def start(cfg: DictConfig, method) -> Run:
    """Validate and set up a run. A bad config leaves no run directory behind; a fresh run records its composed
    config in ``config.yaml`` (resume reads it)."""
    run_dir = Path(cfg.paths.run_dir)
    fresh = not (run_dir / "config.yaml").exists()
    try:
        r = Run(cfg, method)
    except NasxError:
        if fresh:
            _remove_empty_run_dir(run_dir)
        raise
    if fresh:
        artifacts.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    return r


def make_method(cfg: DictConfig):
    """The method object of ``cfg.method`` (a ``_target_`` node)."""
    node = cfg.get("method")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError("method must be a config with a _target_ (choose one with method=<name>, e.g. method=spos; "
                          "see conf/method/)")
    return instantiate(node, _convert_="object")


def run(cfg: DictConfig) -> dict:
    """Run ``cfg.stages`` in ``cfg.paths.run_dir``. Returns the results (empty unless evaluate is a stage)."""
    method = make_method(cfg)
    if is_ddp_worker():  # started by Lightning's DDP launcher: it only takes part in training
        r = Run(cfg, method)
        if "train" in cfg.stages:
            method.train(r)
        return {}
    if not cfg.stages:
        raise ConfigError(f"stages is empty: nothing to run (accepted: {', '.join(STAGES)})")
    r = start(cfg, method)
    results = {}
    for stage in STAGES:
        if stage not in cfg.stages:
            continue
        log.info("stage %s", stage)
        out = getattr(method, stage)(r)
        if stage == "train" and _global_rank() != 0:
            return {}  # a DDP rank > 0 that shares this process's entry point: rank 0 alone goes on
        if stage == "evaluate":
            results = out
    return results


def results_table(cfg: DictConfig, results: dict):
    """The method's table of a run's results (for the CLI)."""
    return make_method(cfg).table(results)
