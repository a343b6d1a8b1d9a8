"""What every nasx training system shares: SGD that respects sliced weights, the LR schedule, and the guard that
stops on a NaN or infinite loss with a checkpoint and a one-line message."""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from nasx.errors import ConfigError, NonFiniteLossError
from nasx.losses import Loss, cross_entropy
from nasx.training.optim import SlicedAdamW, SlicedSGD, param_groups

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("sgd", "adamw")


def lr_factor(schedule: str, warmup_steps: int, total_steps: int):
    """The learning-rate multiplier per optimizer step: a linear warm-up over ``warmup_steps`` (from 1/warmup to 1
    [seed: VIM-NAS Tab. 10, 20 steps]), then ``schedule`` over the remaining steps (cosine to 0, linear to 0
    [SPOS], or constant)."""
    total = max(1, total_steps - warmup_steps)

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        s = min(step - warmup_steps, total)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * s / total))
        if schedule == "linear":
            return max(0.0, 1 - s / total)
        return 1.0
    return f


def stop_on_nonfinite(module: L.LightningModule, loss: torch.Tensor, where: str,
                      checkpoint_dir: str | None) -> None:
    """Stop on a NaN or infinite loss: write ``nonfinite.ckpt`` (if a directory is given), then raise a one-line
    error saying where it happened."""
    if torch.isfinite(loss):
        return
    msg = f"loss became {loss.item()} at {where}"
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir) / "nonfinite.ckpt"
        module.trainer.save_checkpoint(path)
        msg += f"; checkpoint written to {path}"
    raise NonFiniteLossError(msg + "; lower train.lr or check the data")


class System(L.LightningModule):
    """Base LightningModule. ``model`` is the plain ``nn.Module`` being trained (a supernet or a static net);
    ``loss`` (:class:`nasx.losses.Loss`, built from ``train.loss`` / ``retrain.loss``) turns a batch into the
    training loss; plain cross-entropy when not given."""

    def __init__(self, model: torch.nn.Module, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 4e-5,
                 nesterov: bool = True, schedule: str = "cosine", checkpoint_dir: str | None = None,
                 loss: Loss | None = None, optimizer: str = "sgd", warmup_steps: int = 0,
                 betas: tuple[float, float] = (0.9, 0.999)):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got '{optimizer}'")
        self.optimizer_name, self.warmup_steps, self.betas = optimizer, int(warmup_steps), tuple(betas)
        self.model = model
        self.loss = loss if loss is not None else cross_entropy()
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self.schedule = schedule
        self.checkpoint_dir = checkpoint_dir

    def on_fit_start(self) -> None:
        if self.loss.reference is not None:  # a frozen model outside the module tree: not checkpointed, moved here
            self.loss.reference.to(self.device)

    def configure_optimizers(self):
        if self.optimizer_name == "adamw":  # VIM-NAS [seed Tab. 10]; a static model has no extents: plain AdamW
            opt = SlicedAdamW(param_groups(self.model, self.weight_decay), lr=self.lr, betas=self.betas)
        else:
            opt = SlicedSGD(param_groups(self.model, self.weight_decay), lr=self.lr, momentum=self.momentum,
                            nesterov=self.nesterov)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(self.schedule, self.warmup_steps,
                                                                 int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def objective(self, x: torch.Tensor, y: torch.Tensor, *arch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of the batch under the configured loss."""
        return self.loss(self.model, x, y, *arch)

    def guard(self, loss: torch.Tensor, what: str) -> None:
        stop_on_nonfinite(self, loss, f"step {self.global_step} (epoch {self.current_epoch}, {what})",
                          self.checkpoint_dir)

    @staticmethod
    def top1(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == y).float().mean()


def fit_quiet(system: L.LightningModule, data: L.LightningDataModule, epochs: int, seed: int | None = None,
              accelerator: str = "cpu") -> None:
    """Fit on one device (the CPU unless ``accelerator`` says otherwise) without logger, checkpoints, progress bar or
    validation: for benchmarks, experiment scripts and tests that train many small models."""
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if seed is not None:
        L.seed_everything(seed, verbose=False)
    L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              num_sanity_val_steps=0).fit(system, datamodule=data)
