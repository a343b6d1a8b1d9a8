"""VIM-NAS supernet training [seed: VIM-NAS Alg. 1]: a random ViT subnet trains its slice of the weights on every
training batch, then the architecture parameters α take one step on a validation batch.

Per optimizer step (manual optimisation: two optimizers):

1. the step's subnet is drawn uniformly from the space by (seed, step) — a pure function, so a resumed run and every
   DDP rank draw the same one [seed: "random sample one ViT architecture"];
2. its loss on the batch's data set, through that data set's head (the batch comes from
   :class:`nasx.data.joint.JointDataModule`: image data only for the first E/3 epochs, then one data set per step
   drawn in proportion to its size [seed]), with that data set's label smoothing [seed Tab. 10];
3. :class:`~nasx.training.optim.SlicedAdamW` updates only the subnet's slice [seed: "update the corresponding part
   of w in w_A while freezing the remaining part"], learning rate with linear warm-up then cosine [seed Tab. 10];
4. α ← α − γ ∇α L_val [seed]: the loss of the α-mixed supernet (:meth:`nasx.spaces.vit.ViTSupernet.forward_mixed`:
   every layer mixes its head and MLP-ratio choices by softmax(α), depth mixes the candidate depths) at the step's
   embedding dim, on a validation batch of the same data set. Only α moves (``torch.autograd.grad`` w.r.t. α; the
   weights get no gradient from this loss).

[nasx] choices the seed does not fix: α's optimiser is Adam (lr ``alpha_lr``, betas (0.5, 0.999), weight decay
``alpha_weight_decay``: DARTS's settings); the validation batches are a fixed list of ``alpha_batches`` batches per
data set, batch ``step mod n`` at step ``step`` (so that a resumed run continues identically); α starts moving at
``alpha_start_epoch``. Mixup, cutmix and random erasing per data set (``augment``; :mod:`nasx.training.mix`)
[seed Tab. 10]; RandAugment runs per sample in the image data set's loader
(``rand_augment`` of :class:`nasx.data.imagenet.ImageNetDataModule`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from nasx.arch import step_rng
from nasx.errors import ConfigError
from nasx.ops import clear_extents
from nasx.training.base import System
from nasx.training.mix import mix_batch, random_erase, soft_cross_entropy

AUGMENTATIONS = ("mixup", "cutmix", "random_erasing")  # per data set: Beta α, Beta α, probability per sample


class VIMTraining(System):
    def __init__(self, model, space, alpha, names: Sequence[str], seed: int = 0,
                 label_smoothing: Mapping[str, float] | None = None, alpha_lr: float = 3e-4,
                 alpha_weight_decay: float = 1e-3, alpha_start_epoch: int = 0,
                 alpha_batches: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]] = (),
                 augment: Mapping[str, Mapping[str, float]] | None = None, **optim):
        super().__init__(model, **optim)
        self.automatic_optimization = False
        self.space, self.alpha, self.seed = space, alpha, int(seed)
        self.names = [str(n) for n in names]
        smoothing = dict(label_smoothing or {})
        unknown = sorted(set(smoothing) - set(self.names))
        if unknown:
            raise ConfigError(f"train.label_smoothing.{unknown[0]}: no such data set (the data sets are "
                              f"{', '.join(self.names)})")
        self.smoothing = [float(smoothing.get(n, 0.0)) for n in self.names]
        augment = dict(augment or {})
        for name, a in augment.items():
            if name not in self.names:
                raise ConfigError(f"train.augment.{name}: no such data set (the data sets are {', '.join(self.names)})")
            bad = sorted(set(a) - set(AUGMENTATIONS))
            if bad:
                raise ConfigError(f"train.augment.{name}.{bad[0]}: unknown (nasx has {', '.join(AUGMENTATIONS)}; "
                                  f"RandAugment is data.datasets.<image set>.rand_augment)")
            for k, v in a.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "random_erasing" and v > 1):
                    raise ConfigError(f"train.augment.{name}.{k} must be a number >= 0"
                                      f"{' and <= 1' if k == 'random_erasing' else ''}, got {v!r}")
        self.augment = [{k: float(v) for k, v in augment.get(n, {}).items()} for n in self.names]
        self.alpha_lr, self.alpha_weight_decay = float(alpha_lr), float(alpha_weight_decay)
        self.alpha_start_epoch = int(alpha_start_epoch)
        self._alpha_batches = [list(b) for b in alpha_batches]
        self._on_device: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def configure_optimizers(self):
        base = super().configure_optimizers()
        alpha_opt = torch.optim.Adam(self.alpha.parameters(), lr=self.alpha_lr, betas=(0.5, 0.999),
                                     weight_decay=self.alpha_weight_decay)
        return [base["optimizer"], alpha_opt], [base["lr_scheduler"]]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.trainer.accumulate_grad_batches != 1:
            raise ConfigError(f"trainer.accumulate_grad_batches must be 1 for VIM-NAS, got "
                              f"{self.trainer.accumulate_grad_batches}: each step's gradient comes from one data set")

    def sampled_arch(self, step: int):
        return self.space.sample(step_rng(self.seed, step))

    def _alpha_batch(self, d: int, step: int):
        if self._on_device is None:
            self._on_device = [[(x.to(self.device), y.to(self.device)) for x, y in batches]
                               for batches in self._alpha_batches]
        batches = self._on_device[d] if d < len(self._on_device) else []
        return batches[step % len(batches)] if batches else None

    def training_step(self, batch, batch_idx):
        x, y, d = batch
        opt, alpha_opt = self.optimizers()
        sched = self.lr_schedulers()
        step = self.global_step  # counts the weight optimizer's steps only (α steps on the raw optimizer)
        arch = self.sampled_arch(step)
        aug = self.augment[d]
        if any(aug.values()):  # [seed Tab. 10]; randomness from (seed, step), so a resumed run repeats it
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            x = random_erase(x, aug.get("random_erasing", 0.0), g)
            x, targets = mix_batch(x, y, self.space.head_classes[d], aug.get("mixup", 0.0), aug.get("cutmix", 0.0),
                                   self.smoothing[d], g)
            logits = self.model(x, arch, d)
            loss = soft_cross_entropy(logits, targets)
        else:
            logits = self.model(x, arch, d)
            loss = F.cross_entropy(logits, y, label_smoothing=self.smoothing[d])
        self.guard(loss, f"data set {self.names[d]}, arch {arch}")
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        sched.step()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        self.log(f"train/{self.names[d]}/loss", loss, batch_size=len(y))
        self.log(f"train/{self.names[d]}/top1", self.top1(logits, y), batch_size=len(y))
        val = self._alpha_batch(d, step) if self.current_epoch >= self.alpha_start_epoch else None
        if val is not None:
            xv, yv = val
            embed = self.space.embed_dims[arch["embed"]]
            params = list(self.alpha.parameters())
            val_loss = F.cross_entropy(self.model.forward_mixed(xv, self.alpha, embed=embed, head=d), yv)
            grads = torch.autograd.grad(val_loss, params)
            clear_extents(self.model.parameters())  # the mixed forward marked slices: not this step's subnet
            raw = alpha_opt.optimizer
            raw.zero_grad()
            for p, g in zip(params, grads):
                p.grad = g
            raw.step()
            raw.zero_grad()
            self.log("train/alpha_val_loss", val_loss, batch_size=len(yv))
        return loss
