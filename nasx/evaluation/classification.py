"""Classification evaluation: top-1/top-5/loss of a candidate on cached validation batches, with its per-sample
predictions kept (REG-NAS's negative flip rate compares two models sample by sample)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasx.arch import Arch
from nasx.evaluation.base import Batches, SupernetEvaluator, to_device


@torch.no_grad()
def scored_predictions(model: nn.Module, batches: Batches) -> tuple[dict[str, float], torch.Tensor]:
    """(``top1`` and ``top5`` as fractions in [0, 1] and ``loss`` as mean cross-entropy (nats); the predicted class
    per sample (N,), in batch order)."""
    correct1 = correct5 = loss = n = 0.0
    preds = []
    for x, y in batches:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), 1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        n += len(y)
        preds.append(top[:, 0])
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n}, torch.cat(preds)


def classification_metrics(model: nn.Module, batches: Batches) -> dict[str, float]:
    """``top1``, ``top5`` (fractions) and ``loss`` (nats) of ``model`` over ``batches``."""
    return scored_predictions(model, batches)[0]


class ClassificationEvaluator(SupernetEvaluator):
    """Top-1/top-5/loss on the same cached validation batches for every candidate; :meth:`predictions` gives a
    scored candidate's predicted class per validation sample (N,), in loader order."""

    metrics = ("top1", "top5", "loss")

    def __init__(self, supernet: nn.Module, calibration: Batches, validation: Batches,
                 device: str | torch.device = "cpu", calibrate: bool = True):
        super().__init__(supernet, calibration, device, calibrate)
        self.validation = to_device(validation, self.device)
        self._predictions: dict[Arch, torch.Tensor] = {}

    def score(self, arch: Arch, model: nn.Module) -> dict[str, float]:
        metrics, self._predictions[arch] = scored_predictions(model, self.validation)
        self._predictions[arch] = self._predictions[arch].cpu()
        return metrics

    def predictions(self, arch: Arch) -> torch.Tensor:
        """Predicted class per validation sample (N,) of ``arch`` (evaluated first if needed)."""
        self.evaluate(arch)
        return self._predictions[arch]

    def labels(self) -> torch.Tensor:
        """The validation labels (N,), in the order of :meth:`predictions`."""
        return torch.cat([y for _, y in self.validation]).cpu()
