"""Evaluation on several data sets at once, one head each (VIM-NAS's joint image + video models).

``top1/<name>`` is a candidate's top-1 on data set ``<name>`` through its head; ``top1`` is the mean over the data sets
[nasx: the search's default reward; VIM-NAS reports each data set's top-1]. A multi-view test batch x (B, V, T, C, S, S)
is one prediction per item, the views' softmax averaged (:func:`nasx.data.video.average_views`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nasx.arch import Arch
from nasx.data.video import average_views
from nasx.evaluation.base import Batches, SupernetEvaluator


@torch.no_grad()
def top1_per_head(model: nn.Module, batches: Mapping[str, Batches], names: Sequence[str]) -> dict[str, float]:
    """``model(x, head)`` over each data set's batches: ``top1/<name>`` per data set and their mean ``top1``."""
    out = {}
    for head, name in enumerate(names):
        correct = n = 0
        for x, y in batches[name]:
            scores = average_views(model, x, head) if x.dim() == 6 else model(x, head)
            correct += (scores.argmax(1) == y).sum().item()
            n += len(y)
        out[f"top1/{name}"] = correct / max(n, 1)
    out["top1"] = sum(out[f"top1/{n}"] for n in names) / len(names)
    return out


class JointEvaluator(SupernetEvaluator):
    """Scores a candidate of a multi-head supernet on every data set's cached validation batches (no BN to
    recalibrate in a ViT: ``calibrate`` is off)."""

    def __init__(self, supernet: nn.Module, validation: Mapping[str, Batches], names: Sequence[str],
                 device: str | torch.device = "cpu"):
        super().__init__(supernet, [], device, calibrate=False)
        self.names = [str(n) for n in names]
        self.validation = {n: [(x.to(self.device), y.to(self.device)) for x, y in validation[n]] for n in self.names}
        self.metrics = ("top1", *(f"top1/{n}" for n in self.names))

    def score(self, arch: Arch, model: nn.Module) -> dict[str, float]:
        return top1_per_head(model, self.validation, self.names)
