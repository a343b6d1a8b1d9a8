"""Candidates scored against a reference architecture: top-1 and the negative / positive flip rates from the
reference to the candidate on the same validation samples (REG-NAS's reward R2 = λ1·top-1 − λ2·NFR, METHODS.md §4).
The reference is scored like any candidate (inherited weights, BN recalibrated), so both sides are measured alike."""
from __future__ import annotations

import torch
from torch import nn

from nasx.arch import Arch
from nasx.evaluation.classification import ClassificationEvaluator
from nasx.metrics.flips import negative_flip_rate, positive_flip_rate


class FlipEvaluator(ClassificationEvaluator):
    """:class:`ClassificationEvaluator` plus ``nfr`` and ``pfr`` (fractions) against ``reference`` when one is
    given; without one, only top-1/top-5/loss (REG-NAS's first member, searched with R0)."""

    metrics = ("top1", "top5", "loss", "nfr", "pfr")

    def __init__(self, supernet: nn.Module, calibration, validation, reference: Arch | None = None,
                 device: str | torch.device = "cpu", calibrate: bool = True):
        super().__init__(supernet, calibration, validation, device=device, calibrate=calibrate)
        self.reference = reference
        self._ref_pred: torch.Tensor | None = None
        self._labels = self.labels()

    def reference_predictions(self) -> torch.Tensor:
        if self._ref_pred is None:
            self._ref_pred = self.predictions(self.reference)
        return self._ref_pred

    def score(self, arch: Arch, model: nn.Module) -> dict[str, float]:
        metrics = super().score(arch, model)
        if self.reference is not None and arch != self.reference:
            ref, new = self.reference_predictions(), self._predictions[arch]
            metrics["nfr"] = negative_flip_rate(ref, new, self._labels)
            metrics["pfr"] = positive_flip_rate(ref, new, self._labels)
        elif self.reference is not None:
            metrics["nfr"] = metrics["pfr"] = 0.0
        return metrics
