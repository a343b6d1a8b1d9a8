"""Uniform single-path supernet training (SPOS; CMP-NAS §A.2).

Each step samples one path uniformly — a block and a width per layer — and updates only its weights. The sampled
arch is a pure function of (seed, global step), so every DDP rank draws the same path without communication and a
resumed run draws the same paths. The first ``warmup_epochs`` train without sampling: every layer outputs the mean
of its blocks at the largest width [seed: CMP-NAS trains 10 warm-up epochs].
"""
from __future__ import annotations

import torch

from nasx.arch import SearchSpace, step_rng
from nasx.errors import NasxError
from nasx.training.base import System


class SupernetTraining(System):
    def __init__(self, model, space: SearchSpace, seed: int = 0, warmup_epochs: int = 0, **optim):
        super().__init__(model, **optim)
        self.space, self.seed, self.warmup_epochs = space, seed, warmup_epochs

    def sampled_arch(self, step: int):
        """The arch trained at ``step``: ``None`` (all blocks, widest) during warm-up."""
        if self.current_epoch < self.warmup_epochs:
            return None
        return self.space.train_sample(step_rng(self.seed, step))

    def training_step(self, batch, batch_idx):
        x, y = batch
        arch = self.sampled_arch(self.global_step)
        if batch_idx == 0 and self.trainer.world_size > 1:
            self._check_ranks_agree(arch)
        loss, logits = self.objective(x, y, arch)
        self.guard(loss, "warm-up" if arch is None else f"arch {arch}")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/top1", self.top1(logits, y), prog_bar=True)
        return loss

    def _check_ranks_agree(self, arch) -> None:
        """Every rank must train the same path; DDP would otherwise average gradients of different subnets
        without complaint (unsampled weights are legitimately unused). Checked once per epoch."""
        choices = torch.tensor(arch.choices() if arch is not None else [-1], device=self.device)
        gathered = self.all_gather(choices)
        if not bool((gathered == gathered[0]).all()):
            raise NasxError(f"DDP ranks sampled different archs at step {self.global_step}: the sampler must be a "
                            f"pure function of (seed, step)")
