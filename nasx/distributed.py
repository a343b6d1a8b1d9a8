"""Ranks, and candidate-parallel search under DDP.

With a multi-process trainer (``trainer=ddp``, ``ddp_sim``, or SLURM tasks), every rank takes part in the search of a
method whose ``parallel_search`` is true (SPOS, CMP-NAS, MixPath): each rank runs the same strategy with the same
seed, so every rank asks the same candidates; a round's new candidates are split over the ranks (rank r scores
candidates r, r + W, r + 2W, ...: extract, recalibrate BN, score), and the metrics are gathered (``all_gather_object``,
exact floats), so every rank tells its strategy the same outcomes and the history equals a single-process search's.
Rank 0 alone writes artifacts; the other ranks read the run directory (to resume) and write nothing
(:func:`nasx.artifacts.read_only`). Retrain and evaluate stay on rank 0.

The process group is the one Lightning's DDP fit created when the training stage ran in this process; otherwise
(search only, or a resumed run whose training is done) :func:`ensure_process_group` starts it with Lightning Fabric,
whose launcher starts the other ranks by re-running the command line, as the trainer does.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from nasx.arch import Arch
from nasx.evaluation.base import Evaluator


def slurm_tasks() -> bool:
    """True inside a SLURM job step whose tasks Lightning treats as ranks (``srun`` with several tasks)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def lightning_plugins() -> list:
    """Under SLURM tasks, Lightning's SLURMEnvironment without auto-requeue: submitit owns the requeue
    (nasx.launcher)."""
    if not slurm_tasks():
        return []
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def is_worker() -> bool:
    """Whether this process is a rank other than 0, as the environment says before any process group exists:
    ``SLURM_PROCID`` under SLURM tasks, else ``RANK`` (torchrun), else Lightning's launcher variables (``LOCAL_RANK``,
    ``NODE_RANK``)."""
    if slurm_tasks():
        return int(os.environ.get("SLURM_PROCID", "0")) != 0
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) != 0
    return int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0


def rank_world() -> tuple[int, int]:
    """(global rank, world size) of the initialised process group, or (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def planned_world(cfg: DictConfig) -> int:
    """How many processes the trainer config asks for (devices × nodes under a DDP strategy; 1 otherwise)."""
    t = cfg.get("trainer")
    if not isinstance(t, DictConfig) or "ddp" not in str(t.get("strategy", "")):
        return 1
    devices = t.get("devices", 1)
    if OmegaConf.is_list(devices):
        n = len(devices)
    elif devices in (-1, "auto"):
        n = torch.cuda.device_count() if t.get("accelerator") == "gpu" else (os.cpu_count() or 1)
    else:
        n = int(devices)
    return n * int(t.get("num_nodes", 1) or 1)


def ensure_process_group(cfg: DictConfig) -> None:
    """Make sure every rank the trainer asks for is running and joined: nothing to do for one process or when a
    group exists (Lightning's fit made it); else Lightning Fabric launches the other ranks (re-running this command
    line, as Lightning's trainer does) and initialises the group."""
    if planned_world(cfg) <= 1 or rank_world()[1] > 1:
        return
    from lightning.fabric import Fabric

    t = cfg.trainer
    plugins = lightning_plugins()  # under SLURM: submitit, not Lightning, owns the requeue
    fabric = Fabric(accelerator=t.get("accelerator", "auto"), devices=t.get("devices", "auto"),
                    num_nodes=int(t.get("num_nodes", 1) or 1), strategy="ddp", plugins=plugins)
    fabric.launch()


def barrier() -> None:
    if rank_world()[1] > 1:
        torch.distributed.barrier()


def device(base: torch.device) -> torch.device:
    """The device of this process: ``cuda:<local rank>`` for a CUDA base device (``LOCAL_RANK``, or ``SLURM_LOCALID``
    under SLURM tasks; 0 for a plain process), else ``base``."""
    if base.type != "cuda":
        return base
    local = os.environ.get("SLURM_LOCALID", "0") if slurm_tasks() else os.environ.get("LOCAL_RANK", "0")
    return torch.device("cuda", int(local))


class ShardedEvaluator(Evaluator):
    """Splits each round's candidates over the ranks and gathers their metrics (see the module doc). Every rank
    must call :meth:`evaluate_many` with the same candidates in the same order."""

    def __init__(self, inner: Evaluator, rank: int, world: int):
        self.inner, self.rank, self.world = inner, rank, world
        self.metrics = inner.metrics
        self.scored = self.total = 0  # candidates this rank scored, of all it was given

    def evaluate(self, arch: Arch) -> dict[str, float]:
        return self.evaluate_many([arch])[0]

    def evaluate_many(self, archs: Sequence[Arch],
                      on_result: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        mine = {i: dict(self.inner.evaluate(archs[i])) for i in range(self.rank, len(archs), self.world)}
        self.scored, self.total = self.scored + len(mine), self.total + len(archs)
        gathered: list[dict | None] = [None] * self.world
        torch.distributed.all_gather_object(gathered, mine)
        merged = {i: m for part in gathered for i, m in part.items()}
        out = [merged[i] for i in range(len(archs))]
        if on_result is not None:
            for i, m in enumerate(out):
                on_result(i, m)
        return out
