"""Video clips for training and testing: the temporal samplers of Kinetics (a strided clip) and Something-Something V2
(segments), spatial views, the clip data set and the data module both real video sets share.

A clip is x (T, 3, S, S) float32, frames first [nasx: a frame is a token group for the ViT, so frames lead and images
are 1-frame videos]; a test item holds all its views, x (V, T, 3, S, S) with V = temporal clips x spatial crops, which
:func:`average_views` turns into one prediction.

Decoding is streamed (:mod:`nasx.data.decode`): a file is opened when its item is drawn, decoded up to the last frame
the item needs, and only those frames are kept, already resized; nothing is cached, so memory per item is its T
frames (all views' frames for a test item) whatever the video's length or the data set's size.
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nasx.data.decode import VideoFile
from nasx.data.listing import first_per_class
from nasx.data.memory import EpochSampler, calibration_indices, carve
from nasx.errors import ConfigError, DatasetError

log = logging.getLogger("nasx")

MEAN = torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1)  # [ref: SlowFast's Kinetics and SSV2 configs]
STD = torch.tensor([0.225, 0.225, 0.225]).view(1, 3, 1, 1)
SHORT_POLICIES = ("pad", "loop", "error")
CORRUPT_POLICIES = ("error", "skip")
MISSING_POLICIES = ("skip", "error")
SKIP_TRIES = 10  # with corrupt=skip, how many following items are tried before giving up


# ---- temporal sampling ----------------------------------------------------------------------------------------------

def extend(indices: Sequence[int], num_frames: int, policy: str) -> list[int]:
    """Indices chosen on a video virtually extended past its ``num_frames`` frames, mapped back onto it: ``pad``
    repeats the last frame, ``loop`` starts again from the first. Indices inside the video are unchanged."""
    if policy == "loop":
        return [int(i) % num_frames for i in indices]
    return [min(int(i), num_frames - 1) for i in indices]


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in low..high inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


@dataclass(frozen=True)
class StridedClip:
    """Kinetics [ref: SlowFast]: T = ``frames`` frames ``stride`` apart. Training starts the clip uniformly in
    0..N-span; testing takes ``clips`` clips whose starts are the centres of ``clips`` equal bins of 0..N-span
    [nasx: symmetric about the video's middle; SlowFast's default starts clip i at (N-span)·i/clips, so its last
    clip stops short of the end]."""

    frames: int = 8
    stride: int = 8
    clips: int = 10

    @property
    def span(self) -> int:
        """Frames a clip covers, (T-1)·stride + 1: a shorter video is extended by the short-clip policy."""
        return (self.frames - 1) * self.stride + 1

    def clip(self, start: int) -> list[int]:
        return [start + k * self.stride for k in range(self.frames)]

    def train(self, num_frames: int, generator: torch.Generator) -> list[int]:
        return self.clip(_randint(generator, 0, max(num_frames - self.span, 0)))

    def views(self, num_frames: int, clips: int | None = None) -> list[list[int]]:
        n, delta = clips or self.clips, max(num_frames - self.span, 0)
        return [self.clip((delta * (2 * i + 1)) // (2 * n)) for i in range(n)]


@dataclass(frozen=True)
class Segments:
    """Something-Something V2 [ref: TSN; SlowFast's SSv2 loader]: the video is cut into T = ``frames`` equal
    segments, segment i covering frames floor(i·N/T) .. floor((i+1)·N/T) - 1; training takes a random frame of
    each segment, testing its middle frame (one temporal view)."""

    frames: int = 8

    @property
    def span(self) -> int:
        return self.frames

    def _bounds(self, num_frames: int) -> list[tuple[int, int]]:
        t = self.frames
        return [((i * num_frames) // t, ((i + 1) * num_frames) // t - 1) for i in range(t)]

    def train(self, num_frames: int, generator: torch.Generator) -> list[int]:
        return [_randint(generator, lo, hi) for lo, hi in self._bounds(num_frames)]

    def views(self, num_frames: int, clips: int | None = None) -> list[list[int]]:
        return [[(lo + hi) // 2 for lo, hi in self._bounds(num_frames)]]


# ---- spatial views --------------------------------------------------------------------------------------------------

def scaled_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``short`` and the aspect ratio kept."""
    if height <= width:
        return short, max(short, round(width * short / height))
    return max(short, round(height * short / width)), short


def crop_offsets(height: int, width: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of ``crops`` size x size crops [ref: SlowFast ``uniform_crop``]: 1 is the centre; 3 are the
    start, centre and end of the longer side."""
    cy, cx = (height - size) // 2, (width - size) // 2
    if crops == 1:
        return [(cy, cx)]
    if height > width:
        return [(0, cx), (cy, cx), (height - size, cx)]
    return [(cy, 0), (cy, cx), (cy, width - size)]


def normalise(frames: np.ndarray) -> Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) standardised with MEAN/STD."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def average_views(model, x: Tensor, *args) -> Tensor:
    """Softmax probabilities (B, K) of a multi-view test batch x (B, V, T, C, S, S), averaged over the V views
    [ref: SlowFast sums the views' softmax scores]. ``args`` go on to ``model`` (e.g. an arch, a head)."""
    b, v = x.shape[:2]
    return model(x.flatten(0, 1), *args).softmax(-1).view(b, v, -1).mean(1)


# ---- data set and module --------------------------------------------------------------------------------------------

class VideoClipDataset(Dataset):
    """Video files under ``root`` with labels; one clip (or all test views) decoded per item.

    ``mode`` is "train" (a random clip; with ``augment`` also a random short side in ``jitter`` x S, a random
    S x S crop and, if ``hflip``, a coin-flip mirror; else the centre crop at short side S), "single" (the
    central clip, short side S, centre crop: the val split) or "views" (every temporal view x ``crops`` crops: the
    test split). Items: (x (T, 3, S, S) or (V, T, 3, S, S) float32, y int64 scalar). Training draws come from a
    generator seeded by (seed, epoch, index), so an item depends on those three only. ``files`` is a numpy bytes
    array (no per-item Python objects for forked workers to copy).
    """

    def __init__(self, root: Path, files: np.ndarray, labels: Tensor, sampling, image_size: int, mode: str,
                 seed: int = 0, augment: bool = True, hflip: bool = False,
                 jitter: tuple[float, float] = (8 / 7, 10 / 7), crops: int = 3, short_clip: str = "pad",
                 corrupt: str = "error", threads: int = 1) -> None:
        self.root, self.files, self.labels, self.sampling = root, files, labels, sampling
        self.image_size, self.mode, self.seed, self.augment, self.hflip = image_size, mode, seed, augment, hflip
        self.jitter, self.crops, self.threads = jitter, crops, threads
        self.short_clip, self.corrupt = short_clip, corrupt
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.files[i])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if self.corrupt == "error":
            return self.clip(i), self.labels[i]
        for k in range(SKIP_TRIES):
            j = (int(i) + k) % len(self)
            try:
                return self.clip(j), self.labels[j]
            except DatasetError as exc:
                log.warning("%s; skipped (data.corrupt=skip), using the next item", exc)
        raise DatasetError(f"'{self.path(i)}' and the {SKIP_TRIES - 1} items after it cannot be decoded "
                           "(data.corrupt=skip gives up)")

    def clip(self, i: int) -> Tensor:
        """Item i's x: (T, 3, S, S), or (V, T, 3, S, S) in "views" mode."""
        path, size = self.path(i), self.image_size
        with VideoFile(path, self.threads) as video:
            n = video.num_frames
            if n < self.sampling.span and self.short_clip == "error":
                raise DatasetError(f"'{path}': {n} frames, shorter than the {self.sampling.span} a clip needs "
                                   "(data.short_clip=pad or loop extends it)")
            virtual = max(n, self.sampling.span)
            if self.mode == "train":
                g = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) % (2**63))
                clips = [self.sampling.train(virtual, g)]
                if self.augment:
                    lo, hi = (max(round(size * s), size) for s in self.jitter)
                    h, w = scaled_size(video.height, video.width, _randint(g, lo, hi))
                    offsets = [(_randint(g, 0, h - size), _randint(g, 0, w - size))]
                    flip = self.hflip and _randint(g, 0, 1) == 1
                else:
                    h, w = scaled_size(video.height, video.width, size)
                    offsets, flip = crop_offsets(h, w, size, 1), False
            else:
                clips = self.sampling.views(virtual, clips=1 if self.mode == "single" else None)
                h, w = scaled_size(video.height, video.width, size)
                offsets = crop_offsets(h, w, size, 1 if self.mode == "single" else self.crops)
                flip = False
            clips = [extend(c, n, self.short_clip) for c in clips]
            union = sorted({f for c in clips for f in c})
            frames = video.frames(union, h, w)
        where = {f: k for k, f in enumerate(union)}
        views = []
        for c in clips:
            x = normalise(frames[[where[f] for f in c]])
            for top, left in offsets:
                v = x[:, :, top:top + size, left:left + size]
                views.append(v.flip(-1) if flip else v)
        return views[0] if self.mode != "views" else torch.stack(views)


class VideoDataModule(L.LightningDataModule, ABC):
    """Base of the real video data sets: lists (file, label) pairs, carves val from train, serves the loaders.

    Subclasses implement :meth:`check` (sets ``classes``/``num_classes``), :meth:`_list_train` and
    :meth:`_list_test` (paths relative to ``root``) and :meth:`sampling`. The "val" split is a seeded
    ``val_fraction`` of the training list (the search reward is measured on it, one central view per video);
    "test" is the official validation list, every view. Batches: train/val x (B, T, 3, S, S), test
    x (B, V, T, 3, S, S) float32, y (B,) int64.
    """

    in_channels = 3
    num_classes: int
    video = True  # batches are clips (B, T, C, H, W): the runner refuses a space without ``video = True``
    hflip = False  # whether training mirrors clips; Kinetics sets it from its config

    def __init__(self, root: str, frames: int = 8, image_size: int = 112, batch_size: int = 16,
                 eval_batch_size: int = 16, val_fraction: float = 0.05, seed: int = 0, augment: bool = True,
                 num_workers: int = 0, test_crops: int = 3, jitter: Sequence[float] = (8 / 7, 10 / 7),
                 short_clip: str = "pad", corrupt: str = "error", missing: str = "skip",
                 decode_threads: int = 1, max_per_class: int | None = None) -> None:
        super().__init__()
        for key, value, least in (("frames", frames, 1), ("image_size", image_size, 1), ("batch_size", batch_size, 1),
                                  ("eval_batch_size", eval_batch_size, 1), ("num_workers", num_workers, 0),
                                  ("decode_threads", decode_threads, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"data.{key} must be an integer >= {least}, got {value!r}")
        if test_crops not in (1, 3):
            raise ConfigError(f"data.test_crops must be 1 or 3, got {test_crops!r}")
        jitter = tuple(float(v) for v in jitter)
        if len(jitter) != 2 or not 1.0 <= jitter[0] <= jitter[1]:
            raise ConfigError(f"data.jitter must be [low, high] with 1 <= low <= high (short side / image_size), "
                              f"got {list(jitter)!r}")
        for key, value, accepted in (("short_clip", short_clip, SHORT_POLICIES), ("corrupt", corrupt, CORRUPT_POLICIES),
                                     ("missing", missing, MISSING_POLICIES)):
            if value not in accepted:
                raise ConfigError(f"data.{key} must be one of {', '.join(accepted)}, got {value!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
        if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
            raise ConfigError(f"data.max_per_class must be a positive integer or null, got {max_per_class!r}")
        self.root = Path(root).expanduser()
        self.frames, self.image_size, self.batch_size, self.eval_batch_size = frames, image_size, batch_size, \
            eval_batch_size
        self.val_fraction, self.seed, self.augment, self.num_workers = float(val_fraction), int(seed), bool(augment), \
            num_workers
        self.test_crops, self.jitter, self.short_clip, self.corrupt, self.missing = test_crops, jitter, short_clip, \
            corrupt, missing
        self.decode_threads, self.max_per_class = decode_threads, max_per_class
        self.classes: list[str] = []
        self._splits: dict[str, tuple[np.ndarray, Tensor]] | None = None

    @abstractmethod
    def check(self) -> None:
        """Validates the layout cheaply and sets ``classes``/``num_classes``; raises DatasetError."""

    @abstractmethod
    def _list_train(self) -> tuple[list[str], list[int]]:
        """Training (file relative to root, class index) pairs, missing files already handled."""

    @abstractmethod
    def _list_test(self) -> tuple[list[str], list[int]]:
        """The official validation pairs (nasx's test split)."""

    @abstractmethod
    def sampling(self):
        """The temporal sampler (:class:`StridedClip` or :class:`Segments`)."""

    def _missing(self, what: str, missing: list[str], total: int, where: Path) -> None:
        """Reports files listed in ``what`` but absent under ``where``: skipped with a warning, or an error."""
        if not missing:
            return
        msg = f"'{what}': {len(missing)} of {total} listed videos are missing under '{where}', e.g. '{missing[0]}'"
        if self.missing == "error" or len(missing) == total:
            raise DatasetError(msg + ("" if self.missing == "error" else " (all of them)"))
        log.warning("%s; skipped (data.missing=error makes this an error)", msg)

    def _limit(self, files: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
        return first_per_class(files, labels, self.max_per_class)

    def setup(self, stage: str | None = None) -> None:
        """Lists every split once (names only; videos are decoded as batches are drawn)."""
        if self._splits is not None:
            return
        self.check()
        files, labels = self._limit(*self._list_train())
        keep, val = carve(len(files), self.val_fraction, torch.Generator().manual_seed(self.seed))
        if len(keep) == 0 or len(val) == 0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} of {len(files)} training videos leaves the "
                              "train or val split empty")
        all_files, all_labels = np.array([os.fsencode(f) for f in files]), torch.tensor(labels, dtype=torch.long)
        keep, val = keep.sort().values, val.sort().values
        test_files, test_labels = self._limit(*self._list_test())
        self._splits = {"train": (all_files[keep.numpy()], all_labels[keep]),
                        "val": (all_files[val.numpy()], all_labels[val]),
                        "test": (np.array([os.fsencode(f) for f in test_files]),
                                 torch.tensor(test_labels, dtype=torch.long))}

    @property
    def views(self) -> int:
        """V, the views of a test item: temporal clips x spatial crops."""
        return len(self.sampling().views(self.sampling().span)) * self.test_crops

    def dataset(self, name: str, train: bool = False) -> VideoClipDataset:
        """Split ``name`` ("train"|"val"|"test"); ``train`` samples random clips with augmentation."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected one of ('train', 'val', 'test')")
        self.setup()
        files, labels = self._splits[name]
        mode = "train" if train else "views" if name == "test" else "single"
        return VideoClipDataset(self.root, files, labels, self.sampling(), self.image_size, mode, seed=self.seed,
                                augment=self.augment, hflip=self.hflip, jitter=self.jitter,
                                crops=self.test_crops, short_clip=self.short_clip, corrupt=self.corrupt,
                                threads=self.decode_threads)

    def _loader(self, ds: Dataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        # random clips even without augment: a clip's start is part of the sampling, not of the augmentation
        ds = self.dataset("train", train=True)
        return self._loader(ds, min(self.batch_size, len(ds)), sampler=EpochSampler(ds, self.seed), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size)

    def calibration_batches(self, n_batches: int, batch_size: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """``n_batches`` fixed train batches of central clips (x (B, T, 3, S, S), y (B,)) on the CPU, identical
        across calls (a seeded permutation, walked again when the split is too short)."""
        ds = self.dataset("train")
        bs = self.batch_size if batch_size is None else int(batch_size)
        idx = calibration_indices(len(ds), n_batches, bs, self.seed)
        return [(x, y) for x, y in self._loader(ds, bs, sampler=idx.tolist())]


def scan(directory: Path) -> tuple[list[str], list[str]]:
    """Sorted (subdirectory names, file names) directly inside ``directory``; hidden entries are skipped."""
    dirs, files = [], []
    with os.scandir(directory) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            (dirs if e.is_dir() else files).append(e.name)
    return sorted(dirs), sorted(files)

