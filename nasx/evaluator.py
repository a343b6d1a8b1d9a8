"""Scores architectures from a trained supernet.

For each candidate: ``extract(arch)`` (a static module with the inherited weights, no per-forward branching), BN
recalibration on a fixed, cached set of training batches, then metrics on the cached validation batches. Results are
cached per arch, so a candidate is never evaluated twice [ref: SPOS's visited dict].
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
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


@torch.no_grad()
def classification_metrics(model: nn.Module, batches: Batches) -> dict[str, float]:
    """``top1`` and ``top5`` as fractions in [0, 1], ``loss`` as mean cross-entropy (nats)."""
    correct1 = correct5 = loss = n = 0.0
    for x, y in batches:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), 1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        n += len(y)
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n}


class Evaluator:
    """``evaluator(arch) -> {metric: value}``.

    ``calibration`` and ``validation`` are lists of (x, y) batches, moved to ``device`` once and reused for every
    candidate, so every candidate is scored on identical data. ``calibrate=False`` scores with the BN statistics the
    supernet accumulated in training (the "before calibration" setting of MixPath's ranking study).
    """

    metrics = ("top1", "top5", "loss")

    def __init__(self, supernet: nn.Module, calibration: Batches, validation: Batches,
                 device: str | torch.device = "cpu", calibrate: bool = True):
        self.supernet = supernet.eval()
        self.calibrate = calibrate
        self.device = torch.device(device)
        self.calibration = [(x.to(self.device), y.to(self.device)) for x, y in calibration]
        self.validation = [(x.to(self.device), y.to(self.device)) for x, y in validation]
        self.cache: dict[Arch, dict[str, float]] = {}
        self.evaluations = 0

    def extract(self, arch: Arch) -> nn.Module:
        """The candidate as a static module with inherited weights and recalibrated BN statistics."""
        model = self.supernet.extract(arch).to(self.device)
        return bn_recalibrate(model, self.calibration) if self.calibrate else model.eval()

    def __call__(self, arch: Arch) -> dict[str, float]:
        if arch not in self.cache:
            self.cache[arch] = classification_metrics(self.extract(arch), self.validation)
            self.evaluations += 1
        return self.cache[arch]
