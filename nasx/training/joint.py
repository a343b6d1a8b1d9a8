"""Joint training on several data sets with one head each [seed: VIM-NAS]: each step trains the data set its batch
comes from (:class:`nasx.data.joint.JointBatch`; drawn by :class:`nasx.data.joint.JointDataModule`), through that
data set's head only, and the optimizer steps on that one loss — never on a sum over data sets."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F

from nasx.errors import ConfigError
from nasx.training.base import System


class JointTraining(System):
    """``model(x, head)`` must return head ``head``'s logits (:class:`nasx.models.multihead.MultiHead`); ``names``
    are the data sets in head order (for logging)."""

    def __init__(self, model, names: Sequence[str], **optim):
        super().__init__(model, **optim)
        self.names = [str(n) for n in names]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.trainer.accumulate_grad_batches != 1:
            raise ConfigError(f"trainer.accumulate_grad_batches must be 1 for joint training, got "
                              f"{self.trainer.accumulate_grad_batches}: each step's gradient comes from one data set")

    def training_step(self, batch, batch_idx):
        x, y, d = batch
        loss, logits = self.objective(x, y, d)
        self.guard(loss, f"data set {self.names[d]}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        self.log(f"train/{self.names[d]}/loss", loss, batch_size=len(y))
        self.log(f"train/{self.names[d]}/top1", self.top1(logits, y), batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y, d = batch
        logits = self.model(x, d)
        self.log(f"val/{self.names[d]}/loss", F.cross_entropy(logits, y), add_dataloader_idx=False, batch_size=len(y))
        self.log(f"val/{self.names[d]}/top1", self.top1(logits, y), add_dataloader_idx=False, batch_size=len(y),
                 prog_bar=True)
