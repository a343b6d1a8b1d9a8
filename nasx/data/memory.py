"""Small image datasets held in memory as tensors, batched by indexing, augmented on the device."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from nasx.errors import ConfigError

SPLITS = ("train", "val", "test")


class TensorPairDataset(Dataset):
    """Images x (N, C, H, W) in raw units (any dtype) and labels y (N,) int64; items come out normalised.

    ``mean``/``std`` are per-channel float32 tensors (C,) in x's raw units. ``__getitems__`` lets the
    DataLoader fetch a whole batch with one indexing op instead of N ``__getitem__`` calls and a stack.
    """

    def __init__(self, x: Tensor, y: Tensor, mean: Tensor, std: Tensor) -> None:
        self.x, self.y = x, y
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return (self.x[i].float() - self.mean) / self.std, self.y[i]

    def __getitems__(self, indices: list[int] | Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return (self.x[idx].float() - self.mean) / self.std, self.y[idx]


def collate_pair(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``__getitems__`` already returns the batched pair; module-level so DataLoaders pickle (DDP spawn)."""
    return batch


def shift_images(x: Tensor, dy: Tensor, dx: Tensor, fill: Tensor | None = None) -> Tensor:
    """Translate each image x[n] (N, C, H, W) by dy[n] rows down and dx[n] columns right (int64, (N,)).

    Pixels moved past the border are dropped and uncovered pixels take ``fill`` (C,) (default 0): no
    wrap-around, unlike ``torch.roll``.
    """
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device) - dy.view(n, 1)  # source row of each output row, (N, H)
    cols = torch.arange(w, device=x.device) - dx.view(n, 1)
    valid = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    out = x.gather(2, rows.clamp(0, h - 1).view(n, 1, h, 1).expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1).view(n, 1, 1, w).expand(n, c, h, w))
    fill_t = torch.zeros(c, dtype=x.dtype, device=x.device) if fill is None else fill.to(x)
    return torch.where(valid, out, fill_t.view(1, c, 1, 1))


def random_shift_flip(x: Tensor, shift: int, hflip: bool, generator: torch.Generator,
                      fill: Tensor | None = None) -> Tensor:
    """Random translation by up to ``shift`` pixels per axis, then a coin-flip horizontal mirror if ``hflip``.

    x: (N, C, H, W) float; ``generator`` must live on x's device. Returns a new tensor of x's shape.
    """
    n = x.shape[0]
    if shift > 0:
        d = torch.randint(-shift, shift + 1, (2, n), generator=generator, device=x.device)
        x = shift_images(x, d[0], d[1], fill)
    if hflip:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return x


def calibration_indices(n: int, n_batches: int, batch_size: int, seed: int) -> Tensor:
    """The ``n_batches * batch_size`` sample indices of a split's fixed calibration batches: a permutation seeded by
    ``seed``, walked again in a fresh permutation when the split is too short. Identical across calls."""
    g = torch.Generator().manual_seed(seed)
    passes = max(math.ceil(n_batches * batch_size / n), 1)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(passes)])[:n_batches * batch_size]


def carve(n: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Seeded split of indices 0..n-1 into (rest, carved) with round(fraction * n) carved, both int64."""
    perm = torch.randperm(n, generator=generator)
    k = round(fraction * n)
    return perm[k:], perm[:k]


class EpochSampler(Sampler[int]):
    """A permutation of ``dataset`` that is a pure function of (seed, epoch), so a fit resumed at epoch e draws epoch
    e's order as the uninterrupted fit did (a generator seeded once per fit would replay epoch 0's order).

    Lightning calls ``set_epoch`` on a loader's sampler before each training epoch (and forwards it through its DDP
    sampler wrapper); it is passed on to a data set that has ``set_epoch`` so that per-sample augmentation follows.
    """

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch)) % (2**63))
        return iter(torch.randperm(len(self.dataset), generator=g).tolist())


class SeededShuffle(Sampler[int]):
    """Epoch e's order of 0..n-1 is the one ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))`` draws
    in its e-th epoch (what the in-memory loaders used before resume had to be exact, so existing results stand), but
    recomputed from (seed, e) alone: Lightning calls ``set_epoch`` before every epoch, so a fit resumed at epoch e draws
    epoch e's order, where a generator seeded once per fit would replay epoch 0's.

    That loader drew, per epoch, its workers' base seed and then the permutation from the one generator; the replay
    makes the same two draws per epoch (``tests/test_resume.py`` checks it against torch's DataLoader)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch + 1):
            torch.empty((), dtype=torch.int64).random_(generator=g)  # the loader's base seed for its workers
            perm = torch.randperm(self.n, generator=g)
        return iter(perm.tolist())


class InMemoryDataModule(L.LightningDataModule, ABC):
    """Base for data sets small enough to keep every split in memory.

    Subclasses set ``in_channels``/``num_classes`` in ``__init__`` and implement ``_load`` returning raw
    splits {"train","val","test"} -> (x (N, C, image_size, image_size) in any units, y (N,) int64); video clips
    x (N, T, C, image_size, image_size) work too (statistics over all frames; no device augmentation for them).
    Batches are normalised with the per-channel mean/std of the train split. When ``augment`` is set,
    training batches are shifted by up to ``shift`` pixels (and mirrored if ``hflip``) on the device.
    """

    in_channels: int
    num_classes: int

    def __init__(self, batch_size: int = 64, eval_batch_size: int = 512, val_fraction: float = 0.1,
                 seed: int = 0, augment: bool = True, image_size: int = 32, shift: int = 0,
                 hflip: bool = False) -> None:
        super().__init__()
        for key, value, least in (("batch_size", batch_size, 2), ("eval_batch_size", eval_batch_size, 1),
                                  ("image_size", image_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                why = " (BatchNorm needs two images per training batch)" if key == "batch_size" else ""
                raise ConfigError(f"data.{key} must be an integer >= {least}{why}, got {value!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ConfigError(f"data.shift must be >= 0 pixels, got {shift!r}")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.val_fraction, self.seed, self.augment = float(val_fraction), int(seed), bool(augment)
        self.image_size, self.shift, self.hflip = int(image_size), int(shift), bool(hflip)
        self.mean: Tensor | None = None  # (C,) float32, raw units of the stored images
        self.std: Tensor | None = None
        self._raw: dict[str, tuple[Tensor, Tensor]] | None = None
        self._aug_calls = 0  # batches augmented in the current epoch of the current fit
        self._aug_epoch = -1

    def check(self) -> None:
        """Cheaply validate what is on disk; raises nasx.errors.DatasetError. Nothing to check by default."""

    @abstractmethod
    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The raw splits: {"train"|"val"|"test": (images (N, C, H, W) in stored units, labels (N,) int64)}."""

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):  # every fit starts its augmentation stream afresh
            self._aug_epoch, self._aug_calls = -1, 0
        if self._raw is not None:
            return
        self.check()
        raw = self._load()
        x = raw["train"][0]
        if x.dim() == 5:  # video clips (N, T, C, H, W): per-channel statistics over all frames
            x = x.flatten(0, 1)
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        for chunk in x.split(4096):  # chunks keep the float64 copy small for CIFAR-sized splits
            chunk = chunk.double()
            total += chunk.sum(dim=(0, 2, 3))
            total_sq += chunk.square().sum(dim=(0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        # a constant channel would otherwise divide by zero
        std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
        self.mean, self.std = mean.float(), std.float()
        self._raw = raw

    def resize(self, x: Tensor) -> Tensor:
        """Stored images (N, C, H, W) in any units -> float32 (N, C, image_size, image_size) in the same units,
        bilinear (antialiased when shrinking), in chunks that bound the float copy's peak memory."""
        size = (self.image_size, self.image_size)
        return torch.cat([F.interpolate(c.float(), size=size, mode="bilinear", align_corners=False,
                                        antialias=self.image_size < x.shape[-1]) for c in x.split(8192)])

    def _dataset(self, name: str) -> TensorPairDataset:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        self.setup()
        x, y = self._raw[name]
        return TensorPairDataset(x, y, self.mean, self.std)

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """Whole split ``name``: x (N, C, H, W) float32 normalised, y (N,) int64. Built on each call."""
        ds = self._dataset(name)
        return ds.__getitems__(torch.arange(len(ds)))

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train")
        # a split smaller than one batch would otherwise yield zero steps under drop_last
        # the order is a function of (seed, epoch); the loader's own generator keeps its draws off the global RNG
        return DataLoader(ds, batch_size=min(self.batch_size, len(ds)), sampler=SeededShuffle(len(ds), self.seed),
                          drop_last=True, num_workers=0, collate_fn=collate_pair,
                          pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(self.seed))

    def _eval_loader(self, name: str) -> DataLoader:
        return DataLoader(self._dataset(name), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=0, collate_fn=collate_pair, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def calibration_batches(self, n_batches: int, batch_size: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """``n_batches`` fixed, unaugmented train batches (x (B, C, H, W) normalised, y (B,)) on the CPU.

        Drawn without replacement from a permutation seeded by ``seed``; a split smaller than
        n_batches * batch_size is walked again in a fresh permutation. Identical across calls.
        """
        ds = self._dataset("train")
        bs = self.batch_size if batch_size is None else int(batch_size)
        idx = calibration_indices(len(ds), n_batches, bs, self.seed)
        return [ds.__getitems__(idx[i * bs:(i + 1) * bs]) for i in range(n_batches)]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augments training batches on their device; val/test/calibration batches pass through unchanged."""
        trainer = self.trainer
        if trainer is None or not trainer.training or not self.augment or (self.shift == 0 and not self.hflip):
            return batch
        x, y = batch
        rank = getattr(trainer, "global_rank", 0)
        # a fresh generator per batch seeded from (seed, rank, counter) makes the stream reproducible
        # and gives each DDP rank different draws
        g = torch.Generator(device=x.device)
        # seeded by (seed, rank, epoch, batch of the epoch): a fit augments the same way whatever ran before it in the
        # process, and a run resumed at an epoch boundary augments as an uninterrupted one
        epoch = getattr(trainer, "current_epoch", 0)
        if epoch != self._aug_epoch:
            self._aug_epoch, self._aug_calls = epoch, 0
        g.manual_seed(hash((self.seed, rank, epoch, self._aug_calls)) % (2**63))
        self._aug_calls += 1
        fill = -self.mean / self.std  # a raw-zero (black) pixel after normalisation
        return random_shift_flip(x, self.shift, self.hflip, g, fill), y
