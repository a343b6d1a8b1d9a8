"""Standalone training of one static network (the retrain stage)."""
from __future__ import annotations

import torch.nn.functional as F

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
