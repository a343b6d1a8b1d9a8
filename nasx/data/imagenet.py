"""ImageNet ILSVRC-2012 read from JPEG folders, decoded and augmented per sample in DataLoader workers.

Too large for memory, so unlike ``InMemoryDataModule`` images stay on disk; the public interface
(``check``/``setup``/loaders/``calibration_batches``, ``in_channels``/``num_classes``) is the same.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import lightning as L
import numpy as np
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nasx.data.listing import first_per_class
from nasx.data.memory import EpochSampler, calibration_indices, carve
from nasx.data.randaugment import RandAugment
from nasx.data.randaugment import rand_augment as parse_rand_augment
from nasx.errors import ConfigError, DatasetError, one_line

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
EVAL_CROP = 0.875  # eval resizes the shorter side to image_size / 0.875 (256 for 224), then centre-crops
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
KAGGLE_CSV = "LOC_val_solution.csv"
# where the devkit's ground truth and meta.mat are looked for, relative to root, in this order
DEVKIT_DIRS = (".", "devkit/data", "ILSVRC2012_devkit_t12/data")
LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (or a flat val/ with the devkit's labels or LOC_val_solution.csv)"



def _images(directory: Path) -> list[str]:
    """Sorted names of the image files directly inside ``directory``."""
    with os.scandir(directory) as it:
        return sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))


def _subdirs(directory: Path) -> list[str]:
    """Sorted names of the non-hidden subdirectories of ``directory``."""
    with os.scandir(directory) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def decode(path: str | Path) -> Tensor:
    """An image file -> uint8 (3, H, W) RGB (greyscale, CMYK and palette images are converted)."""
    try:
        with Image.open(path) as img:
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"'{path}': cannot decode image ({one_line(exc)})") from exc


def resize(x: Tensor, height: int, width: int) -> Tensor:
    """uint8 or float (3, h, w) -> float32 (3, height, width) in the same units; antialiased bilinear."""
    return F.interpolate(x[None].float(), size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def normalise(x: Tensor) -> Tensor:
    """(3, H, W) in 0..255 units -> float32 standardised with the ImageNet mean/std."""
    return (x / 255.0 - MEAN) / STD


def eval_transform(x: Tensor, size: int) -> Tensor:
    """uint8 (3, h, w) -> float32 (3, size, size): shorter side to round(size / 0.875), centre crop, normalise.

    The geometry follows torchvision's Resize(int) + CenterCrop, so accuracies compare with published ones.
    """
    h, w = x.shape[-2:]
    short = round(size / EVAL_CROP)
    nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    top, left = round((nh - size) / 2), round((nw - size) / 2)
    return normalise(resize(x, nh, nw)[:, top:top + size, left:left + size])


def train_transform(x: Tensor, size: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), policy: RandAugment | None = None) -> Tensor:
    """uint8 (3, h, w) -> float32 (3, size, size): random-resized crop, coin-flip mirror, RandAugment ``policy``
    when given (:mod:`nasx.data.randaugment`), normalise.

    The crop is torchvision's RandomResizedCrop algorithm: up to 10 draws of an area fraction in ``scale``
    and a log-uniform aspect ratio in ``ratio`` that must fit the image, else the central crop with the
    aspect ratio clamped to ``ratio``. All draws come from ``generator``.
    """
    h, w = x.shape[-2:]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u_area, u_ratio = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        area = h * w * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            break
    else:
        cw, ch = w, h
        if w / h < ratio[0]:
            ch = round(w / ratio[0])
        elif w / h > ratio[1]:
            cw = round(h * ratio[1])
        top, left = (h - ch) // 2, (w - cw) // 2
    out = resize(x[:, top:top + ch, left:left + cw], size, size)
    if float(torch.rand(1, generator=generator)) < 0.5:
        out = out.flip(-1)
    if policy is not None:
        out = policy(out, generator)
    return normalise(out)


class ImageFileDataset(Dataset):
    """Image files under ``root`` with labels; items are (x (3, S, S) float32 normalised, y int64 scalar).

    ``files`` holds paths relative to ``root`` as a numpy bytes array: unlike a list of str, it has no
    per-item Python objects whose refcounts would copy the forked workers' memory page by page.
    With ``train`` set each item is augmented by a generator seeded from (seed, epoch, index), so a
    sample's augmentation depends only on those three; ``set_epoch`` moves to a new epoch's draws.
    """

    def __init__(self, root: Path, files: np.ndarray, labels: Tensor, image_size: int, train: bool,
                 seed: int = 0, policy: RandAugment | None = None) -> None:
        self.root, self.files, self.labels = root, files, labels
        self.image_size, self.train, self.seed, self.policy = image_size, train, seed, policy
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = decode(self.root / os.fsdecode(self.files[i]))
        if self.train:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) % (2**63))
            return train_transform(x, self.image_size, g, policy=self.policy), self.labels[i]
        return eval_transform(x, self.image_size), self.labels[i]


class ImageNetDataModule(L.LightningDataModule):
    """ImageNet ILSVRC-2012 (or any folder-per-class subset of it) from ``root``.

    Train images are ``root/train/<wnid>/*.JPEG``; class index = position of the wnid in the sorted list of
    those directories. The "val" split is a seeded ``val_fraction`` of them (the search reward is measured
    on it), "train" the rest, and "test" the official validation set, in one of three layouts:

    * ``root/val/<wnid>/*.JPEG`` (prepared);
    * flat ``root/val/*.JPEG`` with the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one
      ILSVRC2012_ID per line, for the files in name order) and ``meta.mat`` (ID -> wnid), both looked for in
      ``root``, then ``root/devkit/data``, then ``root/ILSVRC2012_devkit_t12/data``;
    * flat ``root/val/*.JPEG`` with Kaggle's ``root/LOC_val_solution.csv`` (``ImageId,PredictionString``,
      the first token is the wnid of ``val/<ImageId>.JPEG``).

    Batches are x (B, 3, image_size, image_size) float32 normalised with the ImageNet mean/std, y (B,) int64.
    Training images get a random-resized crop and mirror when ``augment`` is set, then RandAugment when
    ``rand_augment`` is (a timm policy string such as ``rand-m9-mstd0.5-inc1`` or a mapping; see
    :mod:`nasx.data.randaugment`); everything else is
    resized to image_size / 0.875 and centre-cropped. ``max_per_class`` keeps the first (by file name)
    images of each class in train and test, for quick runs.
    """

    in_channels = 3
    num_classes: int  # set by check(): the number of wnid directories in train/

    def __init__(self, root: str, image_size: int = 224, batch_size: int = 128, eval_batch_size: int = 500,
                 val_fraction: float = 0.04, seed: int = 0, augment: bool = True, num_workers: int = 0,
                 max_per_class: int | None = None, rand_augment=None) -> None:
        super().__init__()
        self.policy = parse_rand_augment(rand_augment)
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                           ("image_size", image_size)):
            if int(value) < 1:
                raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
        if max_per_class is not None and int(max_per_class) < 1:
            raise ConfigError(f"data.max_per_class must be a positive integer or null, got {max_per_class!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
        if int(num_workers) < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers!r}")
        self.root = Path(root).expanduser()
        self.image_size, self.batch_size, self.eval_batch_size = int(image_size), int(batch_size), int(eval_batch_size)
        self.val_fraction, self.seed, self.augment = float(val_fraction), int(seed), bool(augment)
        self.num_workers = int(num_workers)
        self.max_per_class = None if max_per_class is None else int(max_per_class)
        self.classes: list[str] = []  # sorted wnids, set by check()
        self._splits: dict[str, tuple[np.ndarray, Tensor]] | None = None  # name -> (files under root, labels)

    # ---- layout -----------------------------------------------------------------------------------------

    def _devkit_file(self, name: str) -> Path | None:
        return next((self.root / d / name for d in DEVKIT_DIRS if (self.root / d / name).is_file()), None)

    def _test_layout(self) -> str:
        """'prepared', 'devkit' or 'kaggle' for root/val; raises DatasetError when none matches."""
        val = self.root / "val"
        if not val.is_dir():
            raise DatasetError(f"ImageNet validation directory missing: '{val}' (expected {LAYOUT})")
        if _subdirs(val):
            return "prepared"
        if self._devkit_file(GROUND_TRUTH) is not None:
            if self._devkit_file(META) is None:
                raise DatasetError(f"'{val}' is flat with {GROUND_TRUTH} but {META} is missing "
                                   f"(looked in {', '.join(str(self.root / d) for d in DEVKIT_DIRS)})")
            return "devkit"
        if (self.root / KAGGLE_CSV).is_file():
            return "kaggle"
        raise DatasetError(f"'{val}' has no class directories and no labels: expected val/<wnid>/*.JPEG, or "
                           f"{GROUND_TRUTH} + {META} in {self.root} or {self.root}/devkit/data, "
                           f"or {self.root / KAGGLE_CSV}")

    def check(self) -> None:
        """Validates the directory layout and sets ``classes``/``num_classes``; reads no image or label file."""
        train = self.root / "train"
        if not self.root.is_dir():
            raise DatasetError(f"ImageNet not found at '{self.root}': expected {LAYOUT}")
        if not train.is_dir():
            raise DatasetError(f"ImageNet train directory missing: '{train}' (expected {LAYOUT})")
        classes = _subdirs(train)
        if not classes:
            raise DatasetError(f"'{train}' holds no class directories: expected train/<wnid>/*.JPEG")
        for wnid in classes:
            with os.scandir(train / wnid) as it:
                if not any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in it):
                    raise DatasetError(f"'{train / wnid}' holds no images: expected train/<wnid>/*.JPEG")
        self.classes, self.num_classes = classes, len(classes)
        if self._test_layout() == "prepared":
            known = set(classes)
            for wnid in _subdirs(self.root / "val"):
                if wnid not in known:
                    raise DatasetError(f"'{self.root / 'val' / wnid}': no class directory '{wnid}' in '{train}'")

    # ---- listing ----------------------------------------------------------------------------------------

    def _limit(self, files: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
        return first_per_class(files, labels, self.max_per_class)

    def _list_train(self) -> tuple[list[str], list[int]]:
        files, labels = [], []
        for y, wnid in enumerate(self.classes):
            names = _images(self.root / "train" / wnid)[:self.max_per_class]
            files += [f"train/{wnid}/{n}" for n in names]
            labels += [y] * len(names)
        return files, labels

    def _list_test(self) -> tuple[list[str], list[int]]:
        val = self.root / "val"
        index = {wnid: y for y, wnid in enumerate(self.classes)}
        layout = self._test_layout()
        if layout == "prepared":
            files, labels = [], []
            for wnid in _subdirs(val):
                names = _images(val / wnid)
                files += [f"val/{wnid}/{n}" for n in names]
                labels += [index[wnid]] * len(names)
            return self._limit(files, labels)
        names = _images(val)
        if layout == "devkit":
            wnids = self._read_ground_truth(len(names))
        else:
            wnids = self._read_kaggle(names)
        labels = []
        for wnid, source, line in wnids:
            if wnid not in index:
                raise DatasetError(f"'{source}' line {line}: wnid '{wnid}' has no class directory in "
                                   f"'{self.root / 'train'}'")
            labels.append(index[wnid])
        return self._limit([f"val/{n}" for n in names], labels)

    def _read_meta(self, path: Path) -> dict[int, str]:
        """meta.mat -> {ILSVRC2012_ID: wnid} for the 1000 leaf classes (IDs 1..1000)."""
        try:
            synsets = np.atleast_1d(scipy.io.loadmat(str(path), squeeze_me=True)["synsets"])
            pairs = [(int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets]
        except Exception as exc:  # loadmat raises many types on a foreign file, a missing field KeyError/ValueError
            raise DatasetError(f"'{path}': expected the devkit's struct array 'synsets' with fields "
                               f"ILSVRC2012_ID and WNID ({one_line(exc)})") from exc
        return {i: w for i, w in pairs if 1 <= i <= 1000}

    def _read_ground_truth(self, n_files: int) -> list[tuple[str, Path, int]]:
        """(wnid, file, line number) per val file in name order, from the devkit ground truth and meta.mat."""
        path, meta_path = self._devkit_file(GROUND_TRUTH), self._devkit_file(META)
        meta = self._read_meta(meta_path)
        lines = path.read_text().splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) != n_files:
            raise DatasetError(f"'{path}': {len(lines)} lines for {n_files} images in '{self.root / 'val'}' "
                               "(expected one ILSVRC2012_ID per image, in file-name order)")
        out = []
        for k, line in enumerate(lines, 1):
            try:
                wnid = meta[int(line)]
            except ValueError:
                raise DatasetError(f"'{path}' line {k}: expected an integer ILSVRC2012_ID, got {line!r}") from None
            except KeyError:
                raise DatasetError(f"'{path}' line {k}: ILSVRC2012_ID {line.strip()} is not a leaf class "
                                   f"(1..1000) of '{meta_path}'") from None
            out.append((wnid, path, k))
        return out

    def _read_kaggle(self, names: list[str]) -> list[tuple[str, Path, int]]:
        """(wnid, file, line number) per val file in ``names``, from LOC_val_solution.csv."""
        path = self.root / KAGGLE_CSV
        stems = {os.path.splitext(n)[0]: i for i, n in enumerate(names)}
        found: list[tuple[str, Path, int] | None] = [None] * len(names)
        with path.open(newline="") as f:
            rows = csv.reader(f)
            if [c.strip() for c in next(rows, [])][:2] != ["ImageId", "PredictionString"]:
                raise DatasetError(f"'{path}' line 1: expected the header 'ImageId,PredictionString'")
            for k, row in enumerate(rows, 2):
                if not row:
                    continue
                tokens = row[1].split() if len(row) == 2 else []
                if not tokens:
                    raise DatasetError(f"'{path}' line {k}: expected 'ImageId,<wnid> <box> ...', got {','.join(row)!r}")
                i = stems.get(row[0].strip())
                if i is None:
                    raise DatasetError(f"'{path}' line {k}: no image '{row[0]}' in '{self.root / 'val'}'")
                if found[i] is not None:
                    raise DatasetError(f"'{path}' line {k}: ImageId '{row[0]}' repeats line {found[i][2]}")
                found[i] = (tokens[0], path, k)
        missing = [n for n, f in zip(names, found) if f is None]
        if missing:
            raise DatasetError(f"'{path}': no row for {len(missing)} images in '{self.root / 'val'}', "
                               f"e.g. '{missing[0]}'")
        return found

    # ---- Lightning interface ----------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Lists every split once (file names only; images are decoded as batches are drawn)."""
        if self._splits is not None:
            return
        self.check()
        files, labels = self._list_train()
        keep, val = carve(len(files), self.val_fraction, torch.Generator().manual_seed(self.seed))
        if len(keep) == 0 or len(val) == 0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} of {len(files)} training images leaves "
                              "the train or val split empty")
        # bytes arrays: see ImageFileDataset
        all_files, all_labels = np.array([os.fsencode(f) for f in files]), torch.tensor(labels, dtype=torch.long)
        keep, val = keep.sort().values, val.sort().values
        test_files, test_labels = self._list_test()
        self._splits = {
            "train": (all_files[keep.numpy()], all_labels[keep]),
            "val": (all_files[val.numpy()], all_labels[val]),
            "test": (np.array([os.fsencode(f) for f in test_files]), torch.tensor(test_labels, dtype=torch.long)),
        }

    def dataset(self, name: str, train: bool = False) -> ImageFileDataset:
        """Split ``name`` ("train"|"val"|"test"); ``train`` turns on random augmentation."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected one of ('train', 'val', 'test')")
        self.setup()
        files, labels = self._splits[name]
        return ImageFileDataset(self.root, files, labels, self.image_size, train, self.seed,
                                self.policy if train else None)

    def _loader(self, ds: ImageFileDataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train", train=self.augment)
        # a split smaller than one batch would otherwise yield zero steps under drop_last
        return self._loader(ds, min(self.batch_size, len(ds)), sampler=EpochSampler(ds, self.seed), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size)

    def calibration_batches(self, n_batches: int, batch_size: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """``n_batches`` fixed, unaugmented train batches (x (B, 3, S, S) normalised, y (B,)) on the CPU.

        Drawn without replacement from a permutation seeded by ``seed``; a split smaller than
        n_batches * batch_size is walked again in a fresh permutation. Identical across calls.
        """
        ds = self.dataset("train")
        bs = self.batch_size if batch_size is None else int(batch_size)
        idx = calibration_indices(len(ds), n_batches, bs, self.seed)
        return [(x, y) for x, y in self._loader(ds, bs, sampler=idx.tolist())]
