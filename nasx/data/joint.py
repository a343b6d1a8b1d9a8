"""Joint training data: one LightningDataModule over several data sets, one classifier head per data set.

VIM-NAS [seed]: epochs 1..E/3 train on the image data set only; from there on every optimizer step draws one data set
with probability proportional to its size, and the loss uses that data set's head only — gradients are never
accumulated across data sets [ref: PolyViT draws one task per step; Omnivore draws data sets in proportion to their
size]. The draw at step s is a pure function of (seed, s), so every DDP rank draws the same data set without
communication and a resumed run sees the same sequence.

The interface: a training batch is a :class:`JointBatch` ``(x, y, dataset)``, ``dataset`` being the index of the data
set (and head) in :attr:`JointDataModule.names`; a model with one head per data set picks its head from it
(:class:`nasx.models.multihead.MultiHead`, trained by :class:`nasx.training.joint.JointTraining`). Validation and test
loaders are one per data set, in ``names`` order; their batches become ``JointBatch`` too (dataset = loader index).
With ``images_as_videos`` image batches (B, C, H, W) become 1-frame clips (B, 1, C, H, W) [nasx: VIM-NAS treats images
as 1-frame videos], so every x is (B, T, C, H, W) (test batches of multi-view videos: (B, V, T, C, H, W)).

Epochs [nasx]: every epoch has the same number of steps, by default the sum over data sets of their full batches per
epoch (with equal batch sizes each data set is then seen about once per joint epoch); image-only epochs spend all of
them on the image data set, walking it in fresh permutations as needed. Within an epoch each data set's batches come
from permutations seeded by (seed, data set, epoch, pass), split between DDP ranks, so the batches too are a pure
function of (seed, epoch, step).
"""
from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from nasx.errors import ConfigError

PASS_KEY = 1024  # a data set's augmentation epoch within joint epoch e, pass p: e * PASS_KEY + p


class JointBatch(NamedTuple):
    """One step's batch: x (B, ...) and y (B,) int64 of data set ``dataset`` (an index into the module's names)."""

    x: Tensor
    y: Tensor
    dataset: int


def draw_dataset(seed: int, step: int, sizes: Sequence[int]) -> int:
    """The data set trained at ``step`` in the joint phase: index d with probability sizes[d] / sum(sizes), a pure
    function of (seed, step) (Python's string-seeded Random: the same on every machine and rank)."""
    u = random.Random(f"nasx:joint:{seed}:{step}").random()
    cum, total = [], 0
    for n in sizes:
        total += n
        cum.append(total)
    return bisect.bisect_right(cum, u * total)


class JointBatchSampler(Sampler[list]):
    """Yields each step's batch as a list of (data set, sample index, augmentation epoch) triples, all of one data set.

    ``sizes``/``batch_sizes``: per data set, training samples and per-rank batch size. ``image``: the data set of
    the first ``image_only_epochs`` epochs. ``steps_per_epoch``: steps of every epoch. Lightning calls
    ``set_epoch`` before each epoch (through ``.sampler``, where it looks for it).
    """

    def __init__(self, sizes: Sequence[int], batch_sizes: Sequence[int], image: int, image_only_epochs: int,
                 steps_per_epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.sizes, self.batch_sizes = [int(n) for n in sizes], [int(b) for b in batch_sizes]
        self.image, self.image_only_epochs, self.steps = int(image), int(image_only_epochs), int(steps_per_epoch)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.per_pass = [n // (b * self.world_size) for n, b in zip(self.sizes, self.batch_sizes)]
        if min(self.per_pass) < 1:
            d = self.per_pass.index(min(self.per_pass))
            raise ConfigError(f"joint data set {d} has {self.sizes[d]} training samples, fewer than one batch of "
                              f"{self.batch_sizes[d]} on each of {self.world_size} ranks")
        self.epoch = 0

    @property
    def sampler(self):
        return self  # Lightning calls set_epoch on `loader.sampler`

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def dataset_at(self, step: int) -> int:
        """The data set of global step ``step``."""
        if step // self.steps < self.image_only_epochs:
            return self.image
        return draw_dataset(self.seed, step, self.sizes)

    def _permutation(self, d: int, epoch: int, p: int) -> Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, d, epoch, p)) % (2**63))
        return torch.randperm(self.sizes[d], generator=g)

    def batches(self, epoch: int):
        """(data set, sample indices of this rank, augmentation epoch) for each step of ``epoch``."""
        used = [0] * len(self.sizes)  # batches each data set gave this epoch
        perms: dict[tuple[int, int], Tensor] = {}
        for j in range(self.steps):
            d = self.dataset_at(epoch * self.steps + j)
            p, pos = divmod(used[d], self.per_pass[d])
            used[d] += 1
            if (d, p) not in perms:
                perms = {k: v for k, v in perms.items() if k[0] != d}  # a finished pass is not needed again
                perms[(d, p)] = self._permutation(d, epoch, p)
            b = self.batch_sizes[d]
            start = (pos * self.world_size + self.rank) * b
            yield d, perms[(d, p)][start:start + b].tolist(), epoch * PASS_KEY + p

    def __iter__(self):
        for d, indices, aug in self.batches(self.epoch):
            yield [(d, i, aug) for i in indices]


class JointDataset(Dataset):
    """The training sets side by side; a batch of (data set, index, augmentation epoch) triples becomes
    (x, y, data set) with the data set's own collate."""

    def __init__(self, datasets: Sequence[Dataset], collates: Sequence) -> None:
        self.datasets, self.collates = list(datasets), list(collates)

    def __len__(self) -> int:
        return sum(len(ds) for ds in self.datasets)

    def __getitems__(self, triples: list[tuple[int, int, int]]) -> tuple[Tensor, Tensor, int]:
        d, aug = triples[0][0], triples[0][2]
        ds, indices = self.datasets[d], [i for _, i, _ in triples]
        if callable(getattr(ds, "set_epoch", None)):
            ds.set_epoch(aug)  # this worker's copy: draws differ between passes of one epoch
        if callable(getattr(ds, "__getitems__", None)):
            x, y = self.collates[d](ds.__getitems__(indices))
        else:
            x, y = self.collates[d]([ds[i] for i in indices])
        return x, y, d


def collate_joint(batch: tuple[Tensor, Tensor, int]) -> JointBatch:
    """``JointDataset.__getitems__`` already collated the batch; module-level so DataLoaders pickle."""
    return JointBatch(*batch)


class JointLoader:
    """The training loader: a DataLoader over :class:`JointDataset` driven by :class:`JointBatchSampler`.

    Not a DataLoader itself, so Lightning does not replace its sampler under DDP (the batch sampler splits each
    step's batch between ranks itself); Lightning still finds ``sampler.set_epoch``."""

    def __init__(self, loader: DataLoader, batch_sampler: JointBatchSampler) -> None:
        self.loader, self.sampler = loader, batch_sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.loader)


class JointDataModule(L.LightningDataModule):
    """Several data modules trained together, one head each.

    ``datasets``: {name: data module} (names become the heads' names), or a list (named by position, "0", "1", ...).
    Every module must have the same ``in_channels``. ``image_dataset``: the name trained alone during the first
    ``image_only_epochs`` epochs (default: the first listed; epochs default to max_epochs // 3 [seed: E/3]).
    ``steps_per_epoch``: default the sum of the data sets' full (per-rank) batches per epoch [nasx]. Batch sizes are
    each module's own. ``num_workers``: DataLoader workers of the joint training loader (the modules' own settings
    serve their val/test loaders).
    """

    def __init__(self, datasets: Mapping[str, L.LightningDataModule] | Sequence[L.LightningDataModule],
                 image_dataset: str | None = None, image_only_epochs: int | None = None,
                 steps_per_epoch: int | None = None, seed: int = 0, num_workers: int = 0,
                 images_as_videos: bool = True) -> None:
        super().__init__()
        if isinstance(datasets, Mapping):
            self.names, self.datamodules = [str(k) for k in datasets], list(datasets.values())
        else:
            self.datamodules = list(datasets)
            self.names = [str(k) for k in range(len(self.datamodules))]
        if not self.datamodules:
            raise ConfigError("data.datasets is empty: list the data sets to train jointly")
        for name, m in zip(self.names, self.datamodules):
            if not isinstance(m, L.LightningDataModule):
                raise ConfigError(f"data.datasets.{name} must be a data module (a _target_ under nasx.data), got "
                                  f"{type(m).__name__}")
        image_dataset = self.names[0] if image_dataset is None else str(image_dataset)
        if image_dataset not in self.names:
            raise ConfigError(f"data.image_dataset must be one of {', '.join(self.names)}, got {image_dataset!r}")
        for key, value, least in (("image_only_epochs", image_only_epochs, 0), ("steps_per_epoch", steps_per_epoch, 1),
                                  ("num_workers", num_workers, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                null = " or null" if key != "num_workers" else ""
                raise ConfigError(f"data.{key} must be an integer >= {least}{null}, got {value!r}")
        self.image = self.names.index(image_dataset)
        self.image_only_epochs, self.steps_per_epoch = image_only_epochs, steps_per_epoch
        self.seed, self.num_workers, self.images_as_videos = int(seed), int(num_workers), bool(images_as_videos)

    @property
    def video(self) -> bool:
        """Whether batches are clips (B, T, C, H, W) (the runner then requires a space that takes video)."""
        return self.images_as_videos or any(getattr(m, "video", False) for m in self.datamodules)

    @property
    def in_channels(self) -> int:
        channels = {name: m.in_channels for name, m in zip(self.names, self.datamodules)}
        if len(set(channels.values())) > 1:
            raise ConfigError("data.datasets must share their input channels, got "
                              + ", ".join(f"{k}: {v}" for k, v in channels.items()))
        return next(iter(channels.values()))

    @property
    def num_classes(self) -> tuple[int, ...]:
        """Classes per data set (one head each), in ``names`` order."""
        return tuple(m.num_classes for m in self.datamodules)

    def check(self) -> None:
        for m in self.datamodules:
            m.check()
        self.in_channels  # noqa: B018 - raises when the channels differ

    def setup(self, stage: str | None = None) -> None:
        for m in self.datamodules:
            m.setup(stage)

    def batch_sampler(self, rank: int = 0, world_size: int = 1, max_epochs: int | None = None,
                      train: list[DataLoader] | None = None) -> JointBatchSampler:
        """The sampler of the training loader (``train``: the modules' own training loaders, built when not given)."""
        train = train if train is not None else [m.train_dataloader() for m in self.datamodules]
        sizes = [len(dl.dataset) for dl in train]
        batch_sizes = [dl.batch_size for dl in train]
        image_only = self.image_only_epochs
        if image_only is None:
            if max_epochs is None or max_epochs < 0:
                raise ConfigError("data.image_only_epochs is null (= max_epochs // 3) but the trainer has no "
                                  "max_epochs; set either")
            image_only = max_epochs // 3
        steps = self.steps_per_epoch or sum(n // (b * world_size) for n, b in zip(sizes, batch_sizes))
        return JointBatchSampler(sizes, batch_sizes, self.image, image_only, steps, self.seed, rank, world_size)

    def train_dataloader(self) -> JointLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        train = [m.train_dataloader() for m in self.datamodules]
        for m in self.datamodules:
            m.trainer = trainer  # their device-side augmentation (on_after_batch_transfer) checks trainer.training
        sampler = self.batch_sampler(rank, world, trainer.max_epochs if trainer is not None else None, train)
        ds = JointDataset([dl.dataset for dl in train], [dl.collate_fn or default_collate for dl in train])
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=collate_joint,
                            pin_memory=torch.cuda.is_available())
        return JointLoader(loader, sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [m.val_dataloader() for m in self.datamodules]

    def test_dataloader(self) -> list[DataLoader]:
        return [m.test_dataloader() for m in self.datamodules]

    def _as_video(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if self.images_as_videos and x.dim() == 4 else x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Lets the batch's own data module augment it on the device, then makes it a :class:`JointBatch`."""
        if isinstance(batch, JointBatch):
            d, pair = batch.dataset, (batch.x, batch.y)
        else:
            d, pair = dataloader_idx, tuple(batch)
        module = self.datamodules[d]
        if module.trainer is not None:
            pair = module.on_after_batch_transfer(pair, 0)
        x, y = pair
        return JointBatch(self._as_video(x), y, d)

    def calibration_batches(self, n_batches: int, batch_size: int | None = None,
                            dataset: str | None = None) -> list[JointBatch]:
        """Fixed, unaugmented training batches of one data set (default: the image data set) as JointBatches."""
        d = self.image if dataset is None else self.names.index(dataset)
        return [JointBatch(self._as_video(x), y, d)
                for x, y in self.datamodules[d].calibration_batches(n_batches, batch_size)]
