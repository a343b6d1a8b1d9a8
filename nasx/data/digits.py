"""scikit-learn's bundled handwritten digits (no download): a seconds-scale stand-in for real image data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nasx.data.memory import InMemoryDataModule, carve
from nasx.errors import ConfigError


class DigitsDataModule(InMemoryDataModule):
    """The 1797 8x8 grayscale digits of ``sklearn.datasets.load_digits``, 10 classes.

    Pixels (0..16) are scaled to [0, 1] and upsampled bilinearly to ``image_size`` x ``image_size``, so
    batches are x (B, 1, image_size, image_size) float32 normalised, y (B,) int64 in 0..9.
    A seeded permutation holds out ``test_fraction`` of the images as test; ``val_fraction`` of the
    remainder becomes val, so the test split does not depend on ``val_fraction``.
    """

    def __init__(self, batch_size: int = 64, eval_batch_size: int = 512, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0, augment: bool = True, image_size: int = 32,
                 shift: int = 2, hflip: bool = False) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, val_fraction=val_fraction,
                         seed=seed, augment=augment, image_size=image_size, shift=shift, hflip=hflip)
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
        self.test_fraction = float(test_fraction)
        self.in_channels = 1
        self.num_classes = 10

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_digits  # deferred: sklearn import costs ~1 s

        images, labels = load_digits(return_X_y=True)
        x = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        if self.image_size != 8:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=self.image_size < 8)
        y = torch.as_tensor(labels, dtype=torch.long)
        g = torch.Generator().manual_seed(self.seed)
        rest, test = carve(len(y), self.test_fraction, g)
        keep, val = carve(len(rest), self.val_fraction, g)
        train, val = rest[keep], rest[val]
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
