"""CMP-NAS's real retrieval sets as streamed data modules: IMDb-Face (training) + IJB-C (test), and DeepFashion2.

The public interface is the pipeline's (``in_channels``, ``num_classes``, ``check``, ``setup``, the three loaders,
``calibration_batches``), as in :mod:`nasx.data.imagenet`; images stay on disk and are cropped and decoded per item
(:class:`nasx.data.crops.CropDataset`). On top, CMP-NAS reads the retrieval sets of its search reward and of its
evaluate stage (:mod:`nasx.evaluation.compatibility`, :mod:`nasx.methods.cmp_nas_protocols`):

* **face** — the classes are the IMDb-Face identities (all identities with a downloaded image); a seeded
  ``carve_fraction`` (5 % [seed]) of the *images* (``carve_records``, one group per image) is the search-reward
  split, the rest trains. Test: IJB-C (whole loose crops, each with its mirror, for template pooling).
* **fashion** — the classes are the (pair_id, style) with style > 0 of the DeepFashion2 training items that are
  not carved (``fashion_classes``); ``carve_fraction`` (10 % [seed]) of the training *pair_ids* is carved
  (``carve_records`` grouped by pair_id), so a carved user query has its shop matches in the carved gallery and no
  class is split between the sides. Test: the validation split. Ground-truth box crops on both sides.

Pixels [nasx]: crops in [0, 1] are normalised per channel with the config's ``mean``/``std`` (face: 0.5/0.5,
insightface's (x − 127.5)/127.5 up to its 1/128 scale; fashion: the ImageNet constants). Training augmentation
[nasx]: a coin-flip horizontal mirror drawn from a generator seeded by (seed, epoch, index), as in imagenet.py; no
crop jitter. The carve's classification batches (``val_dataloader``) only monitor training: the search reward is
a retrieval metric on the carve (:mod:`nasx.evaluation.compatibility`). Fashion's carve shares no class with training, so its
``val_dataloader`` is empty.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nasx.data.crops import CropDataset, carve_records, check_images
from nasx.data.face import IJBC, IJBC_META, ijbc_dataset, imdb_face_dataset, load_ijbc, load_imdb_face
from nasx.data.fashion import (FashionItem, deepfashion2_dataset, fashion_classes, fashion_gallery, fashion_queries,
                               load_deepfashion2)
from nasx.data.memory import EpochSampler, calibration_indices
from nasx.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class ImageSet:
    """Images to embed for retrieval: ``crops`` (items (x in [0, 1], index)) and their labels — (N,) identities
    or (N, 2) (pair_id, style) rows; correct / genuine = equal label rows."""
    crops: CropDataset
    labels: Tensor


class NormalisedCrops(Dataset):
    """Items of ``crops`` normalised with ``mean``/``std`` (3,); with ``train`` a coin-flip horizontal mirror drawn
    from a generator seeded by (seed, epoch, index). Works for flip pairs (2, 3, S, S) too (no mirror then)."""

    def __init__(self, crops: CropDataset, mean: Tensor, std: Tensor, train: bool = False, seed: int = 0) -> None:
        self.crops, self.mean, self.std = crops, mean.view(3, 1, 1), std.view(3, 1, 1)
        self.train, self.seed, self.epoch = train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.crops[i]
        if self.train:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) % (2**63))
            if float(torch.rand(1, generator=g)) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, y


def _empty_crops(image_size: int) -> CropDataset:
    return CropDataset([], [], [], image_size)


class CropRetrievalDataModule(L.LightningDataModule, ABC):
    """Shared machinery of :class:`FaceDataModule` and :class:`FashionDataModule`. Batches: x (B, 3, S, S) float32
    normalised, y (B,) int64 class. Subclasses implement ``_check_layout`` (one-line DatasetError naming the missing
    path and the expected layout) and ``_load`` (sets ``num_classes``, ``_train``, ``_val``)."""

    in_channels = 3
    num_classes: int
    protocol: str  # "face" | "fashion": which reward and test protocol nasx.methods.cmp_nas applies

    def __init__(self, image_size: int, batch_size: int, eval_batch_size: int, carve_fraction: float, seed: int,
                 augment: bool, num_workers: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        for key, value, least in (("batch_size", batch_size, 2), ("eval_batch_size", eval_batch_size, 1),
                                  ("image_size", image_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                why = " (BatchNorm needs two images per training batch)" if key == "batch_size" else ""
                raise ConfigError(f"data.{key} must be an integer >= {least}{why}, got {value!r}")
        if not 0.0 < carve_fraction < 1.0:
            raise ConfigError(f"data.carve_fraction must lie strictly between 0 and 1, got {carve_fraction!r}")
        if int(num_workers) < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers!r}")
        for key, value in (("mean", mean), ("std", std)):
            if len(value) != 3 or (key == "std" and min(value) <= 0):
                raise ConfigError(f"data.{key} must be 3 per-channel numbers (std > 0), got {list(value)!r}")
        self.image_size, self.batch_size, self.eval_batch_size = image_size, batch_size, eval_batch_size
        self.carve_fraction, self.seed, self.augment = float(carve_fraction), int(seed), bool(augment)
        self.num_workers = int(num_workers)
        self.mean = torch.tensor([float(v) for v in mean])
        self.std = torch.tensor([float(v) for v in std])
        self._train: CropDataset | None = None  # training crops, targets = classes
        self._val: CropDataset | None = None  # the carve's crops with classes (classification monitoring)

    @abstractmethod
    def _check_layout(self) -> None:
        """Cheap checks of the directory layout; raises DatasetError naming the path."""

    @abstractmethod
    def _load(self) -> None:
        """Parse the annotations into the training crops and the search-reward carve."""

    def check(self) -> None:
        """Checks the directory layout, reads the training annotations once to number the classes, and checks the
        test side (annotations parse, every image's header reads), so bad test data stops the run before training."""
        self._check_layout()
        if self._train is None:
            self._load()
            self._check_test()

    @abstractmethod
    def _check_test(self) -> None:
        """Parse the test split's annotations and check its images readable; raises DatasetError naming the file."""

    def setup(self, stage: str | None = None) -> None:
        self.check()

    def normalise(self, x: Tensor) -> Tensor:
        """Pixels (..., 3, H, W) — uint8 0..255 or float in [0, 1] — to model input, on x's device."""
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        return (x - self.mean.to(x.device).view(3, 1, 1)) / self.std.to(x.device).view(3, 1, 1)

    def _normalised(self, crops: CropDataset, train: bool = False) -> NormalisedCrops:
        return NormalisedCrops(crops, self.mean, self.std, train, self.seed)

    def eval_loader(self, crops: Dataset, normalise: bool = True) -> DataLoader:
        """Sequential batches of ``crops`` (x, target); x normalised, or raw in [0, 1] with ``normalise=False``."""
        ds = self._normalised(crops) if normalise else crops
        return DataLoader(ds, batch_size=self.eval_batch_size, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ds = self._normalised(self._train, train=self.augment)
        # a split smaller than one batch would otherwise yield zero steps under drop_last
        return DataLoader(ds, batch_size=min(self.batch_size, len(ds)), sampler=EpochSampler(ds, self.seed),
                          drop_last=True, num_workers=self.num_workers, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self.eval_loader(self._val)

    def calibration_batches(self, n_batches: int, batch_size: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """``n_batches`` fixed, unaugmented training batches (x (B, 3, S, S) normalised, y (B,)) on the CPU; drawn
        from a permutation seeded by ``seed`` (walked again when too short). Identical across calls."""
        self.setup()
        ds = self._normalised(self._train)
        bs = self.batch_size if batch_size is None else int(batch_size)
        idx = calibration_indices(len(ds), n_batches, bs, self.seed)
        return [(x, y) for x, y in DataLoader(ds, batch_size=bs, sampler=idx.tolist(), num_workers=self.num_workers)]

    def _check_carve(self, rest: int, carved: int, what: str) -> None:
        if rest < 2 or carved < 2:
            raise ConfigError(f"data.carve_fraction={self.carve_fraction} of {rest + carved} {what} leaves "
                              f"{rest} for training and {carved} for the search-reward carve; each needs at least 2 "
                              f"(BatchNorm trains on batches of two or more, a reward compares two or more)")


class FaceDataModule(CropRetrievalDataModule):
    """IMDb-Face ``root/<csv>`` with images ``root/<images_dir>/<index>/<image>`` (or ``…/<image>``) for training
    and the search reward; IJB-C (insightface's ``ijbc_root/loose_crop/`` + ``ijbc_root/meta/``) for the test."""

    protocol = "face"

    def __init__(self, root: str, ijbc_root: str, csv: str = "IMDb-Face.csv", images_dir: str = "images",
                 image_size: int = 112, batch_size: int = 128, eval_batch_size: int = 256,
                 carve_fraction: float = 0.05, seed: int = 0, augment: bool = True, num_workers: int = 0,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__(image_size, batch_size, eval_batch_size, carve_fraction, seed, augment, num_workers, mean,
                         std)
        self.root, self.ijbc_root = Path(root).expanduser(), Path(ijbc_root).expanduser()
        self.csv, self.images_dir = self.root / csv, self.root / images_dir
        self._carved: list = []
        self._ijbc: IJBC | None = None

    def _check_layout(self) -> None:
        layout = f"expected {self.csv} and {self.images_dir}/<index>/<image> or {self.images_dir}/<image>"
        for path, is_dir in ((self.root, True), (self.csv, False), (self.images_dir, True)):
            if not (path.is_dir() if is_dir else path.is_file()):
                raise DatasetError(f"IMDb-Face not found: no {'directory' if is_dir else 'file'} '{path}' ({layout})")
        ijbc_layout = (f"expected {self.ijbc_root}/loose_crop/<n>.jpg and "
                       f"{self.ijbc_root}/meta/{{{','.join(IJBC_META.values())}}}")
        for path in (self.ijbc_root, self.ijbc_root / "loose_crop", self.ijbc_root / "meta"):
            if not path.is_dir():
                raise DatasetError(f"IJB-C not found: no directory '{path}' ({ijbc_layout})")
        for name in IJBC_META.values():
            if not (self.ijbc_root / "meta" / name).is_file():
                raise DatasetError(f"IJB-C meta file missing: '{self.ijbc_root / 'meta' / name}' ({ijbc_layout})")

    def _load(self) -> None:
        data = load_imdb_face(self.csv, self.images_dir)
        rest, carved = carve_records(data.images, self.carve_fraction, self.seed)
        self._check_carve(len(rest), len(carved), "IMDb-Face images")
        self.num_classes = len(data.identities)
        self._train = imdb_face_dataset(rest, self.image_size)
        self._val = imdb_face_dataset(carved, self.image_size)
        self._carved = carved

    def _check_test(self) -> None:
        check_images([im.path for im in self.ijbc().images], "IJB-C loose crop")

    def reward_set(self) -> ImageSet:
        """The carved images (face box crops), labels (N,) = identity class: the search reward's 1:1 pairs."""
        self.setup()
        crops = CropDataset([im.path for im in self._carved], [im.box for im in self._carved],
                            range(len(self._carved)), self.image_size, frames=[im.frame for im in self._carved])
        return ImageSet(crops, torch.tensor([im.label for im in self._carved], dtype=torch.long))

    def ijbc(self) -> IJBC:
        """IJB-C's images, 1:1 pairs and 1:N maps (read once, on first use)."""
        if self._ijbc is None:
            self._ijbc = load_ijbc(self.ijbc_root)
        return self._ijbc

    def test_dataloader(self) -> DataLoader:
        """IJB-C images in ``ijbc().images`` order: x (B, 2, 3, S, S) = (loose crop, mirrored) normalised, index."""
        return self.eval_loader(ijbc_dataset(self.ijbc().images, self.image_size, flip=True))


def _fashion_set(items: Sequence[FashionItem], image_size: int) -> ImageSet:
    return ImageSet(deepfashion2_dataset(items, image_size),
                    torch.tensor([it.key for it in items], dtype=torch.long).view(-1, 2))


class FashionDataModule(CropRetrievalDataModule):
    """DeepFashion2 ``root/{train,validation}/{image/<n>.jpg,annos/<n>.json}``: training and the search-reward carve
    from ``train``, the test on ``validation`` (user queries with style > 0 against shop items with style > 0)."""

    protocol = "fashion"

    def __init__(self, root: str, image_size: int = 224, batch_size: int = 128, eval_batch_size: int = 256,
                 carve_fraction: float = 0.1, seed: int = 0, augment: bool = True, num_workers: int = 0,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        super().__init__(image_size, batch_size, eval_batch_size, carve_fraction, seed, augment, num_workers, mean,
                         std)
        self.root = Path(root).expanduser()
        self._carved: list[FashionItem] = []

    def _check_layout(self) -> None:
        for path in (self.root, *(self.root / s / d for s in ("train", "validation") for d in ("image", "annos"))):
            if not path.is_dir():
                raise DatasetError(f"DeepFashion2 not found: no directory '{path}' "
                                   f"(expected {self.root}/{{train,validation}}/{{image/<n>.jpg,annos/<n>.json}})")

    def _load(self) -> None:
        items = load_deepfashion2(self.root, "train")
        rest, carved = carve_records(items, self.carve_fraction, self.seed, group=lambda it: it.pair_id)
        self._check_carve(len(rest), len(carved), "DeepFashion2 training items (grouped by pair_id)")
        train = [it for it in rest if it.style > 0]
        classes = fashion_classes(train)
        if not classes:
            raise DatasetError(f"'{self.root / 'train' / 'annos'}': no item with style > 0 outside the carve: "
                               "nothing to train on")
        self.num_classes = len(classes)
        self._train = deepfashion2_dataset(train, self.image_size, classes)
        self._val = _empty_crops(self.image_size)
        self._carved = carved

    def _sets(self, items: Sequence[FashionItem], where: str) -> tuple[ImageSet, ImageSet]:
        queries, gallery = fashion_queries(items), fashion_gallery(items)
        if not queries or not gallery:
            raise DatasetError(f"DeepFashion2 {where} has {len(queries)} user items with style > 0 (queries) and "
                               f"{len(gallery)} shop items with style > 0 (gallery); retrieval needs both")
        return _fashion_set(queries, self.image_size), _fashion_set(gallery, self.image_size)

    def _check_test(self) -> None:
        queries, gallery = self.test_sets()
        check_images([*queries.crops.paths, *gallery.crops.paths], "DeepFashion2 validation image")

    def reward_sets(self) -> tuple[ImageSet, ImageSet]:
        """(queries, gallery) of the carve, labels (N, 2) = (pair_id, style): the search reward's retrieval."""
        self.setup()
        return self._sets(self._carved, f"search-reward carve ({self.carve_fraction:g} of the train pair_ids)")

    def test_sets(self) -> tuple[ImageSet, ImageSet]:
        """(queries, gallery) of the validation split, labels (N, 2) = (pair_id, style)."""
        return self._sets(load_deepfashion2(self.root, "validation"), "validation split")

    def test_dataloader(self) -> DataLoader:
        """The validation queries then the gallery: x (B, 3, S, S) normalised, index within its set."""
        queries, gallery = self.test_sets()
        return self.eval_loader(torch.utils.data.ConcatDataset([queries.crops, gallery.crops]))
