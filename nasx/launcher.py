"""SLURM launches: hydra-submitit-launcher's launcher with nasx's checks (``hydra/launcher=slurm``,
conf/hydra/launcher/slurm.yaml).

One SLURM job per sweep point, one task per device: Lightning's SLURMEnvironment makes each task a DDP rank, so
``tasks_per_node`` must equal ``trainer.devices`` and ``nodes`` ``trainer.num_nodes``. A bad setting is one line on
the console before anything is submitted.

Requeue: submitit owns it. SLURM signals the job ``signal_delay_s`` before its time limit (or on preemption);
submitit's handler in task 0 pickles the job's call again and requeues it. The requeued job runs the same Hydra job
(the sweep directory was resolved once, at submission, and travels in the pickle), so it finds its run directory with
``config.yaml`` in it and resumes: training from ``train/last.ckpt``, the search from ``search/state.pt``. Lightning's
own SLURM auto-requeue is switched off (:func:`nasx.distributed.lightning_plugins`) so that the two never both requeue.
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

INSTALL = "pip install 'nasx[slurm]' (or: pip install hydra-submitit-launcher)"


def check_slurm(params: dict, cfg: DictConfig) -> None:
    """The launcher's settings against the trainer's: raises :class:`~nasx.errors.ConfigError` naming the key."""
    from nasx.errors import ConfigError

    t = cfg.get("trainer")
    devices = OmegaConf.select(cfg, "trainer.devices")
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1)
    tasks = params.get("tasks_per_node")
    ddp = isinstance(t, DictConfig) and "ddp" in str(t.get("strategy", ""))
    for key in ("tasks_per_node", "nodes", "timeout_min"):
        v = params.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"hydra.launcher.{key} must be a positive integer, got {v!r}"
                              + (" (it follows trainer.devices: set trainer.devices to the devices per node)"
                                 if key == "tasks_per_node" else ""))
    if ddp and tasks != devices:
        raise ConfigError(f"hydra.launcher.tasks_per_node={tasks} does not match trainer.devices={devices}: under "
                          f"SLURM every task is one DDP rank, so they must be equal")
    if not ddp and tasks != 1:
        raise ConfigError(f"hydra.launcher.tasks_per_node={tasks} with a single-process trainer "
                          f"({OmegaConf.select(cfg, 'hydra.runtime.choices.trainer', default='trainer')}): every "
                          f"task would run the whole job; use trainer=ddp trainer.devices={tasks} or tasks_per_node=1")
    if params.get("nodes") != nodes:
        raise ConfigError(f"hydra.launcher.nodes={params.get('nodes')} does not match trainer.num_nodes={nodes}")
    import shutil

    if shutil.which("srun") is None:
        raise ConfigError("hydra/launcher=slurm: no 'srun' on PATH; submit from a SLURM login node (to try a sweep on "
                          "this machine, use hydra/launcher=submitit_local)")


def checked_params(params: dict, cfg: DictConfig) -> dict:
    """The launcher's parameters after :func:`check_slurm` (a bad one prints one line and exits with status 2, the
    way the CLI reports every user error: this runs inside Hydra), with no GPUs asked for a CPU trainer."""
    from nasx.errors import NasxError

    try:
        check_slurm(params, cfg)
    except NasxError as e:
        print(f"nasx: error: {e}", file=sys.stderr)
        sys.exit(2)
    if OmegaConf.select(cfg, "trainer.accelerator") == "cpu":
        params = {**params, "gpus_per_node": None}
    return params


def check_tasks(cfg: DictConfig) -> None:
    """Inside a SLURM job: the tasks SLURM started per node equal ``trainer.devices`` (Lightning would stop with a
    traceback much later)."""
    import os

    from nasx.distributed import slurm_tasks
    from nasx.errors import ConfigError

    if not slurm_tasks():
        return
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE", "")
    per_node = per_node.split("(")[0]
    devices = OmegaConf.select(cfg, "trainer.devices")
    if per_node.isdigit() and isinstance(devices, int) and devices > 0 and int(per_node) != devices:
        raise ConfigError(f"trainer.devices={devices} does not match the {per_node} SLURM tasks per node of this job "
                          f"(hydra.launcher.tasks_per_node): every task is one DDP rank, so they must be equal")
