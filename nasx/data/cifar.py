"""CIFAR-10 / CIFAR-100 read from the official "python version" pickles, as extracted from the tarballs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nasx.data.memory import InMemoryDataModule, carve
from nasx.errors import ConfigError, DatasetError, one_line

# variant -> (display name, directory inside root, train files, test file, layout shown in errors)
_LAYOUTS = {
    "cifar10": ("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                "{data_batch_1..5,test_batch}"),
    "cifar100": ("CIFAR-100", "cifar-100-python", ("train",), "test", "{train,test}"),
}
_NUM_CLASSES = {("cifar10", "fine"): 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}



def _key(d: dict, name: str):
    """Value of ``name`` under a bytes key (real files, unpickled with encoding='bytes') or a str key."""
    if name.encode() in d:
        return d[name.encode()]
    return d[name]


def load_cifar_batch(path: str | Path, label_key: str = "labels",
                     num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """One CIFAR pickle -> (x (N, 3, 32, 32) uint8 in 0..255, y (N,) int64).

    Each row of ``data`` (N, 3072) holds the 1024 red, then green, then blue values of a 32x32 image,
    each plane row-major. ``label_key`` is 'labels' (CIFAR-10) or 'fine_labels'/'coarse_labels'
    (CIFAR-100); labels must lie in 0..num_classes-1 when ``num_classes`` is given. Unpickling runs
    code from the file: only point this at trusted downloads. Raises DatasetError naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            d = pickle.load(f, encoding="bytes")
    except OSError as exc:
        raise DatasetError(f"'{path}': cannot read ({one_line(exc)})") from exc
    except Exception as exc:  # pickle raises many types on a truncated or foreign file
        raise DatasetError(f"'{path}': not a CIFAR python pickle ({one_line(exc)})") from exc
    if not isinstance(d, dict):
        raise DatasetError(f"'{path}': expected a pickled dict with keys 'data' and '{label_key}', "
                           f"got {type(d).__name__}")
    arrays = {}
    for name in ("data", label_key):
        try:
            arrays[name] = np.asarray(_key(d, name))
        except KeyError:
            raise DatasetError(f"'{path}': missing key '{name}'") from None
    data, labels = arrays["data"], arrays[label_key]
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype.kind not in "ui":
        raise DatasetError(f"'{path}': key 'data' has shape {tuple(data.shape)} and dtype {data.dtype}, "
                           "expected (N, 3072) uint8")
    if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
        raise DatasetError(f"'{path}': key 'data' holds values outside 0..255")
    if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in "ui"):
        raise DatasetError(f"'{path}': key '{label_key}' has shape {tuple(labels.shape)}, "
                           f"expected {data.shape[0]} integer labels (one per image)")
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"'{path}': key '{label_key}' holds labels outside 0..{num_classes - 1}")
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8)).view(-1, 3, 32, 32)
    return x, torch.from_numpy(labels.astype(np.int64))


class CIFARDataModule(InMemoryDataModule):
    """CIFAR-10 (10 classes) or CIFAR-100 (100 fine / 20 coarse classes) from ``root``.

    Accepted layouts: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}`` or
    ``root/cifar-100-python/{train,test}``, or ``root`` naming that inner directory itself.
    Batches are x (B, 3, image_size, image_size) float32 normalised, y (B,) int64. ``val_fraction`` of
    the training files (seeded) becomes val; the test file is the test split.
    """

    def __init__(self, root: str, variant: str = "cifar10", label: str = "fine", batch_size: int = 64,
                 eval_batch_size: int = 512, val_fraction: float = 0.1, seed: int = 0, augment: bool = True,
                 image_size: int = 32, shift: int = 4, hflip: bool = True) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, val_fraction=val_fraction,
                         seed=seed, augment=augment, image_size=image_size, shift=shift, hflip=hflip)
        if variant not in _LAYOUTS:
            raise ConfigError(f"data.variant must be one of {sorted(_LAYOUTS)}, got {variant!r}")
        if (variant, label) not in _NUM_CLASSES:
            allowed = sorted(lab for var, lab in _NUM_CLASSES if var == variant)
            raise ConfigError(f"data.label for {variant} must be one of {allowed}, got {label!r}")
        self.root = Path(root).expanduser()
        self.variant, self.label = variant, label
        self.in_channels = 3
        self.num_classes = _NUM_CLASSES[(variant, label)]

    @property
    def label_key(self) -> str:
        return "labels" if self.variant == "cifar10" else f"{self.label}_labels"

    def directory(self) -> Path:
        """The directory holding the batch files; raises DatasetError when neither layout matches."""
        title, inner, train_files, _, layout = _LAYOUTS[self.variant]
        if (self.root / inner).is_dir():
            return self.root / inner
        if self.root.is_dir() and (self.root.name == inner or (self.root / train_files[0]).is_file()):
            return self.root
        raise DatasetError(f"{title} not found at '{self.root}': expected {self.root / inner}/{layout}")

    def _files(self) -> tuple[list[Path], Path]:
        _, _, train_files, test_file, _ = _LAYOUTS[self.variant]
        d = self.directory()
        return [d / name for name in train_files], d / test_file

    def check(self) -> None:
        """Verifies the directory and that every batch file exists, without reading them."""
        title, _, _, _, layout = _LAYOUTS[self.variant]
        train, test = self._files()
        for path in (*train, test):
            if not path.is_file():
                raise DatasetError(f"{title} batch file missing: '{path}' (expected {path.parent}/{layout})")

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        train_files, test_file = self._files()
        parts = [load_cifar_batch(p, self.label_key, self.num_classes) for p in train_files]
        x_train, y_train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        x_test, y_test = load_cifar_batch(test_file, self.label_key, self.num_classes)
        if self.image_size != 32:
            x_train, x_test = self.resize(x_train), self.resize(x_test)
        keep, val = carve(len(y_train), self.val_fraction, torch.Generator().manual_seed(self.seed))
        return {"train": (x_train[keep], y_train[keep]), "val": (x_train[val], y_train[val]),
                "test": (x_test, y_test)}
