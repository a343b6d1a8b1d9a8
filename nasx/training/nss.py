"""Network Space Search (NSS; METHODS.md §2): learn which network space per stage, not which network.

Θ holds one logit per candidate space per stage, shape (3, n_spaces). After the warm-up, every step:

1. draws Gumbel-softmax weights g (3, n_spaces) at the annealed temperature [seed: 5 → 0.001, linear over the
   whole search];
2. draws, for every candidate space j of every stage, one architecture uniformly inside it [seed: the S1
   derivation — the expected loss over a space is the loss of a uniform sample from it];
3. forms each stage's channel mask as the g-weighted sum of the candidates' width masks, and its depth weights as the
   g-weighted sum of the candidates' one-hot depths [nasx], so the loss is differentiable in Θ;
4. updates the weights on a training batch (g detached), then Θ on a validation batch with
   ``CE + λ · max(0, E[MFLOPs]/target − 1)²`` [nasx], where E[MFLOPs] is the exact expectation under softmax(Θ).

Warm-up [seed: the first 30 % of the epochs, weights only]: each step trains a uniformly sampled architecture in
which every further channel and every further block is also enabled with probability p, annealed linearly from 1 to
0 over the warm-up (filter and block warm-up), so right-most channels and deepest blocks get trained too.

Randomness (Gumbel noise, sampled architectures, warm-up enables) is a pure function of (seed, global step).
"""
from __future__ import annotations

import itertools
import math

import lightning as L
import torch
import torch.nn.functional as F

from nasx.arch import step_rng
from nasx.errors import ConfigError
from nasx.ops import clear_extents
from nasx.training.base import stop_on_nonfinite
from nasx.training.optim import SlicedSGD, param_groups


def linear(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0, ``end`` at progress 1 (clamped)."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)


class NSSTraining(L.LightningModule):
    """Joint training of the masked supernet's weights and the space logits Θ for one MFLOPs target."""

    def __init__(self, model, space, target_mflops: float, seed: int = 0, warmup_epochs: int = 15,
                 tau_start: float = 5.0, tau_end: float = 0.001, penalty: float = 1.0, lr: float = 0.025,
                 momentum: float = 0.9, weight_decay: float = 3e-4, theta_lr: float = 3e-4,
                 theta_weight_decay: float = 1e-3, checkpoint_dir: str | None = None):
        super().__init__()
        if target_mflops < space.min_cost().mflops:
            raise ConfigError(f"NSS target of {target_mflops:g} MFLOPs is below the smallest network of space "
                              f"'{space.name}' ({space.min_cost().mflops:.3f} MFLOPs)")
        if not tau_start > tau_end > 0:
            raise ConfigError(f"train.tau_start must exceed train.tau_end > 0, got {tau_start} and {tau_end}")
        self.automatic_optimization = False
        self.model, self.space = model, space
        self.theta = torch.nn.Parameter(torch.zeros(3, space.n_spaces))
        self.target, self.seed, self.warmup_epochs = float(target_mflops), seed, warmup_epochs
        self.tau_start, self.tau_end, self.penalty = tau_start, tau_end, penalty
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.theta_lr, self.theta_weight_decay = theta_lr, theta_weight_decay
        self.checkpoint_dir = checkpoint_dir
        self._val_batches = None
        # the search's own step counter (Lightning's global_step counts both optimizers' steps); checkpointed
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    # -- schedules ----------------------------------------------------------------------------------------------
    def total_steps(self) -> int:
        # with manual optimization Lightning counts one stepping batch per training batch
        return max(1, int(self.trainer.estimated_stepping_batches))

    def progress(self) -> float:
        """Fraction of the whole search done, in training steps (0 → 1)."""
        return int(self.steps) / self.total_steps()

    def temperature(self, progress: float) -> float:
        """Gumbel-softmax temperature: linear from ``tau_start`` to ``tau_end`` over the whole search [seed]."""
        return linear(self.tau_start, self.tau_end, progress)

    def warmup_enable_prob(self, epoch: int, batch_idx: int, batches: int) -> float:
        """Probability that a channel or block beyond the sampled arch is enabled: 1 → 0 over the warm-up."""
        if epoch >= self.warmup_epochs:
            return 0.0
        return 1.0 - (epoch + batch_idx / max(1, batches)) / self.warmup_epochs

    # -- masks ----------------------------------------------------------------------------------------------------
    def _generator(self, step: int) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.seed) * 1_000_003 + int(step))
        return g

    def warmup_masks(self, step: int, p: float):
        """Hard masks of a uniform arch with every further channel/block enabled with probability ``p``."""
        rng, gen = step_rng(self.seed, step), self._generator(step)
        arch = self.space.sample(rng)
        W, D = self.space.max_width, self.space.max_depth
        widths, depths = [], []
        for i in range(3):
            w, d = self.space.width(arch, i), self.space.depth(arch, i)
            extra = torch.rand(W, generator=gen) < p
            mask = (torch.arange(W) < w) | extra
            blocks = [k for k in range(D) if k + 1 <= d or torch.rand(1, generator=gen).item() < p]
            depth = torch.zeros(D)
            depth[max(blocks)] = 1.0
            widths.append(mask.float())
            depths.append(depth)
        return widths, depths

    def candidate_masks(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One uniform arch per candidate space per stage, as (3, n, W) width masks and (3, n, D) one-hot depths."""
        return self.space.candidate_masks(step_rng(self.seed, step))

    def gumbel_weights(self, step: int, tau: float) -> torch.Tensor:
        """(3, n_spaces) Gumbel-softmax weights of Θ, noise a pure function of (seed, step)."""
        u = torch.rand(self.theta.shape, generator=self._generator(step)).clamp_(1e-9, 1 - 1e-9)
        gumbel = -torch.log(-torch.log(u)).to(self.theta.device)
        return F.softmax((self.theta + gumbel) / tau, dim=-1)

    def soft_masks(self, g: torch.Tensor, candidates: tuple[torch.Tensor, torch.Tensor]):
        """Per stage, the g-weighted sum of the candidates' width masks and of their one-hot depths."""
        cw, cd = (c.to(g.device) for c in candidates)
        return [g[i] @ cw[i] for i in range(3)], [g[i] @ cd[i] for i in range(3)]

    def expected_mflops(self) -> torch.Tensor:
        return self.space.expected_mflops(F.softmax(self.theta, dim=-1))

    def flops_penalty(self) -> torch.Tensor:
        return self.penalty * torch.clamp(self.expected_mflops() / self.target - 1.0, min=0.0) ** 2

    # -- training -------------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._val_batches = itertools.cycle(list(self.trainer.datamodule.val_dataloader()))

    def _next_val(self):
        x, y = next(self._val_batches)
        return x.to(self.device), y.to(self.device)

    def _guard(self, loss: torch.Tensor, what: str) -> None:
        stop_on_nonfinite(self, loss, f"NSS step {int(self.steps)} ({what})", self.checkpoint_dir)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_w, opt_t = self.optimizers()
        step = int(self.steps)
        self.steps += 1
        dev = x.device
        if self.current_epoch < self.warmup_epochs:
            p = self.warmup_enable_prob(self.current_epoch, batch_idx, self.trainer.num_training_batches)
            widths, depths = self.warmup_masks(step, p)
            widths, depths = [w.to(dev) for w in widths], [d.to(dev) for d in depths]
            loss = F.cross_entropy(self.model.forward_soft(x, widths, depths), y)
            self._guard(loss, "warm-up")
            opt_w.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_w.step()
            self.log_dict({"train/loss": loss, "nss/enable_prob": p}, prog_bar=True)
        else:
            tau = self.temperature(self.progress())
            candidates = self.candidate_masks(step)
            g = self.gumbel_weights(step, tau)
            # weights on a training batch, Θ held fixed
            widths, depths = self.soft_masks(g.detach(), candidates)
            loss = F.cross_entropy(self.model.forward_soft(x, widths, depths), y)
            self._guard(loss, "weights")
            opt_w.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_w.step()
            # Θ on a validation batch, through the masks and the expected-MFLOPs penalty
            xv, yv = self._next_val()
            widths, depths = self.soft_masks(g, candidates)
            ce = F.cross_entropy(self.model.forward_soft(xv, widths, depths), yv)
            penalty = self.flops_penalty()
            theta_loss = ce + penalty
            self._guard(theta_loss, "space logits")
            opt_t.zero_grad(set_to_none=True)
            self.manual_backward(theta_loss)
            opt_t.step()
            # the Θ forward recorded the extents of this step's path on the weights; SlicedSGD clears extents only
            # in its own step, so without this the next weight step would widen its boxes to them and give
            # channels off its path momentum and weight decay
            clear_extents(self.model.parameters())
            self.log_dict({"train/loss": loss, "nss/val_ce": ce, "nss/penalty": penalty, "nss/tau": tau,
                           "nss/expected_mflops": self.expected_mflops().detach()}, prog_bar=True)
        sch = self.lr_schedulers()
        if sch is not None:
            sch.step()

    def configure_optimizers(self):
        # masked channels and blocks not run get no update, not even momentum or decay (the masked forwards record
        # the active extent of every weight for SlicedSGD)
        opt_w = SlicedSGD(param_groups(self.model, self.weight_decay), lr=self.lr, momentum=self.momentum)
        opt_t = torch.optim.Adam([self.theta], lr=self.theta_lr, betas=(0.5, 0.999),
                                 weight_decay=self.theta_weight_decay)  # DARTS's architecture optimizer
        total = self.total_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt_w, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        return [opt_w, opt_t], [sched]

    def space_probabilities(self) -> list[list[float]]:
        return F.softmax(self.theta.detach(), dim=-1).cpu().tolist()
