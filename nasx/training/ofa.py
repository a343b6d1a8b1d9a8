"""Once-for-all's progressive shrinking [ref: ``mit-han-lab/once-for-all``, ``train_ofa_net.py``; REG-NAS trains
its supernet this way, METHODS.md §4].

Training runs through ``phases`` (``train.phases``), each a number of epochs in which only the listed elastic
dimensions vary: OFA trains the full network first, then elastic kernel {3, 5, 7}, then depth ({3, 4}, then
{2, 3, 4}), then expand ({4, 6}, then {3, 4, 6}), each later phase keeping the earlier dimensions elastic. A dimension a
phase does not list stays at its largest value. Per phase:

* ``subnets``: subnets drawn per step, their losses summed (OFA accumulates the gradients of its
  ``dynamic_batch_size`` subnets: 1, 2 and 4 in the kernel, depth and expand phases);
* ``lr``: the phase's base learning rate (default ``train.lr``); the schedule restarts at every phase (OFA runs each
  phase as its own training with its own cosine schedule) and has ``train.warmup_steps`` of linear warm-up in the
  first phase only.

From the second phase on, every subnet also learns from the full network as it stood at the end of the first phase
(a frozen copy, OFA's teacher): ``kd_ratio · CE(softmax(teacher), student)`` with soft targets at temperature 1 (OFA's
``kd_type='ce'``), added to the configured loss. The teacher is kept in every checkpoint, so a resumed run distils
from the same network. Subnets are a pure function of (seed, step), as in :mod:`nasx.training.supernet`.

Channel sorting (``train.sort_channels``, on by default) [ref: ``train_ofa_net.py`` calls
``re_organize_middle_weights`` when an expand phase starts]: at the first step of every phase that allows a smaller
expand ratio than the phase before it, every block's middle channels are permuted by importance (the supernet's
``reorganize_middle``); the ratios the previous phase already trained keep their channel sets (OFA's
``expand_ratio_stage``). The optimizer's state is permuted with the weights, and the phases already sorted are kept in
checkpoints, so a resumed run sorts each phase exactly once.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nasx.arch import step_rng
from nasx.errors import ConfigError
from nasx.ops.elastic import ChannelPermuter
from nasx.training.supernet import SupernetTraining

DIMS = ("kernel", "depth", "expand")
TEACHER_KEY = "nasx_ofa_teacher"
SORTED_KEY = "nasx_ofa_sorted_phases"
MAX_SUBNETS = 16  # subnet j of step t is drawn from (seed, 16·t + j)


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    elastic: dict  # dimension -> allowed values (a dimension left out stays at its largest)
    subnets: int = 1
    lr: float | None = None


def parse_phases(phases: Sequence[Mapping], space, where: str = "train.phases") -> list[Phase]:
    """Config phases -> :class:`Phase` list, every value checked against the space (one-line errors)."""
    if not phases:
        raise ConfigError(f"{where} must list at least one phase, e.g. [{{name: full, epochs: 2}}]")
    out = []
    for i, p in enumerate(phases):
        p = dict(p)
        name = str(p.pop("name", f"phase{i}"))
        epochs = p.pop("epochs", None)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"{where}[{i}] ({name}).epochs must be an integer >= 0, got {epochs!r}")
        subnets = p.pop("subnets", 1)
        if isinstance(subnets, bool) or not isinstance(subnets, int) or not 1 <= subnets <= MAX_SUBNETS:
            raise ConfigError(f"{where}[{i}] ({name}).subnets must be an integer in 1..{MAX_SUBNETS}, got {subnets!r}")
        lr = p.pop("lr", None)
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise ConfigError(f"{where}[{i}] ({name}).lr must be a number > 0 or null, got {lr!r}")
        elastic = {}
        dims = getattr(space, "elastic_dims", DIMS)
        for dim in list(p):
            if dim not in dims:
                raise ConfigError(f"{where}[{i}] ({name}).{dim}: unknown key (a phase has name, epochs, subnets, lr "
                                  f"and the elastic dimensions of space '{space.name}': {', '.join(dims)})")
            values = p.pop(dim)
            if values is not None:
                elastic[dim] = list(values)
        try:
            space.sample_elastic(step_rng(0, 0), **elastic)  # every value a choice of the space
        except ConfigError as e:
            raise ConfigError(f"{where}[{i}] ({name}): {e}") from None
        out.append(Phase(name, epochs, elastic, subnets, None if lr is None else float(lr)))
    return out


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return torch.sum(-F.softmax(teacher, dim=1) * F.log_softmax(student, dim=1), dim=1).mean()


class ProgressiveShrinking(SupernetTraining):
    def __init__(self, model, space, phases: Sequence[Phase], seed: int = 0, kd_ratio: float = 1.0,
                 sort_channels: bool = True, **optim):
        super().__init__(model, space, seed=seed, warmup_epochs=0, **optim)
        if not isinstance(kd_ratio, (int, float)) or isinstance(kd_ratio, bool) or kd_ratio < 0:
            raise ConfigError(f"train.kd_ratio must be a number >= 0, got {kd_ratio!r}")
        if not isinstance(sort_channels, bool):
            raise ConfigError(f"train.sort_channels must be true or false, got {sort_channels!r}")
        self.phases, self.kd_ratio, self.sort_channels = list(phases), float(kd_ratio), sort_channels
        self.sorted_phases: list[int] = []
        self.ends = [sum(p.epochs for p in self.phases[:i + 1]) for i in range(len(self.phases))]
        self.teacher: torch.nn.Module | None = None

    # -- phases ---------------------------------------------------------------------------------------------------
    def phase_index(self, epoch: int) -> int:
        for i, end in enumerate(self.ends):
            if epoch < end:
                return i
        return len(self.phases) - 1

    def phase(self, epoch: int | None = None) -> Phase:
        return self.phases[self.phase_index(self.current_epoch if epoch is None else epoch)]

    def sampled_archs(self, step: int, epoch: int) -> list:
        p = self.phase(epoch)
        return [self.space.sample_elastic(step_rng(self.seed, step * MAX_SUBNETS + j), **p.elastic) for j in range(p.subnets)]

    def sampled_arch(self, step: int):  # the first subnet (what SupernetTraining's DDP check compares)
        return self.sampled_archs(step, self.current_epoch)[0]

    # -- schedule: a cosine restart per phase -------------------------------------------------------------------------
    def configure_optimizers(self):
        conf = super().configure_optimizers()
        opt = conf["optimizer"]
        total_epochs = max(1, self.ends[-1])
        per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // total_epochs)
        starts = [0] + [e * per_epoch for e in self.ends[:-1]]
        lengths = [max(1, p.epochs * per_epoch) for p in self.phases]
        scale = [(p.lr or self.lr) / self.lr for p in self.phases]
        warm = self.warmup_steps

        def factor(step: int) -> float:
            i = max(k for k, s in enumerate(starts) if step >= s) if step >= 0 else 0
            s = step - starts[i]
            if i == 0 and s < warm:
                return scale[0] * (s + 1) / warm
            t = min(s - (warm if i == 0 else 0), lengths[i])
            n = max(1, lengths[i] - (warm if i == 0 else 0))
            return scale[i] * 0.5 * (1 + math.cos(math.pi * min(t, n) / n))

        conf["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return conf

    # -- teacher ------------------------------------------------------------------------------------------------------
    def _teacher(self) -> torch.nn.Module | None:
        if self.kd_ratio == 0 or self.phase_index(self.current_epoch) == 0:
            return None
        if self.teacher is None:  # the first step after the first phase: freeze a copy of the full network
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        return self.teacher

    # -- channel sorting --------------------------------------------------------------------------------------------
    def sort_keep(self, i: int) -> list[float] | None:
        """The expand ratios whose channel sets phase ``i``'s sort keeps, or ``None`` when phase ``i`` does not sort
        (it allows no smaller expand ratio than phase ``i - 1``)."""
        if i == 0 or "expand" not in self.phases[i].elastic:
            return None
        before = self.phases[i - 1].elastic.get("expand")
        now = self.phases[i].elastic["expand"]
        floor = min(before) if before is not None else max(getattr(self.space, "expands", now))
        if min(now) >= floor:
            return None
        return sorted(set(before or []) - {max(before or [0])})  # the full width is no band

    def on_train_epoch_start(self) -> None:
        i = self.phase_index(self.current_epoch)
        keep = self.sort_keep(i) if self.sort_channels else None
        if keep is None or i in self.sorted_phases or not hasattr(self.model, "reorganize_middle"):
            return
        self.model.reorganize_middle(keep, ChannelPermuter(self.trainer.optimizers))
        self.sorted_phases.append(i)

    def on_save_checkpoint(self, checkpoint):
        checkpoint[SORTED_KEY] = list(self.sorted_phases)
        if self.teacher is not None:
            checkpoint[TEACHER_KEY] = self.teacher.state_dict()

    def on_load_checkpoint(self, checkpoint):
        self.sorted_phases = list(checkpoint.get(SORTED_KEY, []))
        state = checkpoint.get(TEACHER_KEY)
        if state is not None:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.teacher.load_state_dict(state)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.teacher is not None:
            self.teacher.to(self.device)

    # -- step ---------------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        archs = self.sampled_archs(self.global_step, self.current_epoch)
        if batch_idx == 0 and self.trainer.world_size > 1:
            self._check_ranks_agree(archs[0])
        teacher = self._teacher()
        soft = None
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(x)  # the full network: arch None
        total, first_logits = None, None
        for arch in archs:
            loss, logits = self.objective(x, y, arch)
            if soft is not None:
                loss = loss + self.kd_ratio * soft_cross_entropy(logits, soft)
            self.guard(loss, f"phase {self.phase().name}, arch {arch}")
            total = loss if total is None else total + loss
            first_logits = logits if first_logits is None else first_logits
        self.log("train/loss", total / len(archs), prog_bar=True)
        self.log("train/top1", self.top1(first_logits, y), prog_bar=True)
        return total
