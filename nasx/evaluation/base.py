"""The evaluator protocol: ``evaluate(arch)`` / ``evaluate_many(archs)`` → metrics of each candidate.

Every supernet evaluator scores a candidate the same way: ``extract(arch)`` (a static module with the inherited
weights, no per-forward branching), BN recalibration on a fixed, cached set of training batches, then the method's
metrics on cached data. Results are cached per arch, so a candidate is never evaluated twice [ref: SPOS's visited
dict]. Subclasses implement only :meth:`SupernetEvaluator.score`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from nasx.arch import Arch

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def bn_recalibrate(model: nn.Module, batches: Batches) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them as an exact average (``momentum=None``) over
    ``batches`` in train mode [ref: SPOS, OFA, MixPath]. Leaves the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _ in batches:
        model(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    return model.eval()


def to_device(batches: Iterable, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches moved to ``device`` once, to be reused for every candidate."""
    return [(x.to(device), y.to(device)) for x, y in batches]


class Evaluator(ABC):
    """``evaluate(arch) -> {metric: value}``; ``metrics`` names what it produces (a reward may use only these)."""

    metrics: tuple[str, ...] = ()

    @abstractmethod
    def evaluate(self, arch: Arch) -> dict[str, float]:
        """The metrics of one candidate."""

    def evaluate_many(self, archs: Sequence[Arch],
                      on_result: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """The metrics of several candidates (one round of a search), in order. ``on_result(i, metrics)`` is called
        as each result comes, so the caller can persist it before the next is done."""
        out = []
        for i, arch in enumerate(archs):
            out.append(self.evaluate(arch))
            if on_result is not None:
                on_result(i, out[-1])
        return out


class SupernetEvaluator(Evaluator):
    """Scores candidates from a trained supernet: extract, recalibrate BN on ``calibration``, :meth:`score`.

    ``calibrate=False`` keeps the BN statistics the supernet accumulated in training (the "before calibration"
    setting of MixPath's ranking study)."""

    def __init__(self, supernet: nn.Module, calibration: Batches, device: str | torch.device = "cpu",
                 calibrate: bool = True):
        self.device = torch.device(device)
        self.supernet = supernet.to(self.device).eval()
        self.calibrate = calibrate
        self.calibration = to_device(calibration, self.device)
        self.cache: dict[Arch, dict[str, float]] = {}

    def model(self, arch: Arch) -> nn.Module:
        """The candidate as a static module with inherited weights and recalibrated BN statistics (eval mode)."""
        model = self.supernet.extract(arch).to(self.device)
        return bn_recalibrate(model, self.calibration) if self.calibrate else model.eval()

    @abstractmethod
    def score(self, arch: Arch, model: nn.Module) -> dict[str, float]:
        """The metrics of ``model``, the calibrated static module of ``arch``."""

    def evaluate(self, arch: Arch) -> dict[str, float]:
        if arch not in self.cache:
            self.cache[arch] = self.score(arch, self.model(arch))
        return self.cache[arch]


class FunctionEvaluator(Evaluator):
    """An evaluator from a plain function ``arch -> {metric: value}`` (toy problems, cost-only protocols)."""

    def __init__(self, fn: Callable[[Arch], dict[str, float]], metrics: Sequence[str] = ()):
        self.fn, self.metrics = fn, tuple(metrics)

    def evaluate(self, arch: Arch) -> dict[str, float]:
        return self.fn(arch)
