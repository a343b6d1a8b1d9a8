"""Standalone training of one static network (the retrain stage)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nasx.losses import kd_loss
from nasx.training.base import System


class StandaloneTraining(System):
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, logits = self.objective(x, y)
        self.guard(loss, "standalone")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/top1", self.top1(logits, y), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=False)
        self.log("val/top1", self.top1(logits, y), prog_bar=True)


class DistillationTraining(StandaloneTraining):
    """Standalone training with knowledge distillation from a frozen teacher (Hinton et al.):
    ``CE(logits, y) + kd_weight · kd_loss(logits, teacher(x), T)``. CMP-NAS Tab. 4's "KD" query model."""

    def __init__(self, model, teacher, kd_weight: float = 1.0, temperature: float = 4.0, **kwargs):
        super().__init__(model, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.kd_weight, self.temperature = kd_weight, temperature

    def objective(self, x, y, *arch):
        loss, logits = super().objective(x, y, *arch)
        with torch.no_grad():
            self.teacher.eval()
            teacher_logits = self.teacher(x)
        return loss + self.kd_weight * kd_loss(logits, teacher_logits, self.temperature), logits
