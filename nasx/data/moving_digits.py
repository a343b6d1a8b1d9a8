"""Moving digits [nasx]: an embedded video data set made from scikit-learn's bundled handwritten digits, no download.

The Moving-MNIST recipe on the 1,797 real 8x8 digits of ``sklearn.datasets.load_digits``: each clip shows one digit,
upsampled to ``digit_size`` pixels, moving at a constant velocity across a black ``image_size`` x ``image_size``
canvas for T = ``frames`` frames. Two label sets, chosen by ``labels``:

* ``digit`` — the digit's class: appearance, readable from any single frame (Kinetics-like);
* ``direction`` — where it moves (4: right, left, down, up; 8 adds the diagonals): temporal, it needs at least two
  frames (Something-Something-like).

The canvas is a torus [nasx]: the digit leaves one edge and re-enters at the opposite one (Moving-MNIST bounces off
the edges instead). With the start position uniform over the canvas, every frame's position is uniform too, whatever
the direction and the frame index, so a single frame carries no information about the direction at all (a test
checks that a classifier of single frames stays at chance while one of two frames does not). Speeds are whole pixels
per frame, below half the canvas so that consecutive frames show the direction unambiguously.

The handwriting is split first: ``test_fraction`` of the source images (a seeded permutation) only ever appear in
test clips. ``n_train`` clips (val carved from them) and ``n_test`` clips are drawn from their pools; directions are
exactly balanced. Everything is a pure function of ``data_seed``; ``seed`` only orders batches. Clips are held in
memory as uint8; batches are x (B, T, 1, S, S) float32 normalised, y (B,) int64.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nasx.data.memory import InMemoryDataModule, carve
from nasx.errors import ConfigError

# (rows, columns) moved per frame at speed 1; screen coordinates (rows grow downwards)
DIRECTIONS = {4: ((0, 1), (0, -1), (1, 0), (-1, 0)),
              8: ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))}
DIRECTION_NAMES = ("right", "left", "down", "up", "down-right", "down-left", "up-right", "up-left")
LABEL_SETS = ("digit", "direction")


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream])))


def render(sprites: np.ndarray, n: int, frames: int, size: int, directions: int, speed: tuple[int, int],
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` clips of sprites (P, d, d) uint8 moving on a ``size`` x ``size`` torus.

    Returns (clips uint8 (n, frames, size, size), sprite index (n,), direction index (n,)). Clip k shows sprite
    src[k] with its top-left corner at ((y0 + t·vy) mod size, (x0 + t·vx) mod size) in frame t, (y0, x0) uniform
    over the canvas and (vy, vx) = speed · DIRECTIONS[directions][direction[k]].
    """
    d = sprites.shape[-1]
    src = rng.integers(0, len(sprites), n)
    direction = rng.permutation(np.arange(n) % directions)  # exactly balanced
    step = rng.integers(speed[0], speed[1] + 1, n)
    start = rng.integers(0, size, (n, 2))
    velocity = np.asarray(DIRECTIONS[directions])[direction] * step[:, None]  # (n, 2) rows, columns per frame
    t = np.arange(frames)
    offset = (start[:, None, :] + t[None, :, None] * velocity[:, None, :]) % size  # (n, frames, 2)
    grid = np.arange(size)
    rows = (grid[None, None, :] - offset[..., 0:1]) % size  # canvas row r shows sprite row rows[k, t, r]
    cols = (grid[None, None, :] - offset[..., 1:2]) % size
    canvas = np.zeros((n, size, size), dtype=np.uint8)
    canvas[:, :d, :d] = sprites[src]
    k = np.arange(n)[:, None, None, None]
    return canvas[k, rows[:, :, :, None], cols[:, :, None, :]], src, direction


class MovingDigitsDataModule(InMemoryDataModule):
    """Moving digits clips (see the module docstring); ``labels`` picks the label set ("digit" or "direction")."""

    video = True  # batches are clips (B, T, 1, S, S): the runner refuses a space without ``video = True``

    def __init__(self, frames: int = 8, image_size: int = 32, digit_size: int | None = None, directions: int = 4,
                 speed: tuple[int, int] = (1, 3), labels: str = "digit", n_train: int = 2000, n_test: int = 500,
                 test_fraction: float = 0.2, data_seed: int = 0, batch_size: int = 64, eval_batch_size: int = 256,
                 val_fraction: float = 0.1, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, val_fraction=val_fraction, seed=seed,
                         augment=False, image_size=image_size, shift=0, hflip=False)
        digit_size = image_size * 3 // 8 if digit_size is None else digit_size
        speed = tuple(speed)
        checks = [
            ("frames", isinstance(frames, int) and not isinstance(frames, bool) and frames >= 1, "an integer >= 1"),
            ("digit_size", isinstance(digit_size, int) and 1 <= digit_size <= image_size,
             f"an integer in 1..image_size ({image_size}) or null"),
            ("directions", directions in DIRECTIONS, "4 or 8"),
            ("speed", len(speed) == 2 and all(isinstance(v, int) for v in speed)
             and 1 <= speed[0] <= speed[1] < image_size / 2,
             f"[low, high] whole pixels per frame, 1 <= low <= high < image_size / 2 ({image_size / 2:g})"),
            ("labels", labels in LABEL_SETS, " or ".join(LABEL_SETS)),
            ("n_train", isinstance(n_train, int) and n_train >= 2, "an integer >= 2"),
            ("n_test", isinstance(n_test, int) and n_test >= 1, "an integer >= 1"),
            ("test_fraction", 0.0 < test_fraction < 1.0, "strictly between 0 and 1"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"data.{key} must be {what}, got {locals()[key]!r}")
        self.frames, self.digit_size, self.directions, self.speed = frames, digit_size, directions, speed
        self.labels, self.n_train, self.n_test = labels, n_train, n_test
        self.test_fraction, self.data_seed = float(test_fraction), int(data_seed)
        self.in_channels = 1
        self.num_classes = 10 if labels == "digit" else directions
        self.label_sets: dict[str, dict[str, Tensor]] | None = None  # split -> {"digit", "direction"} after setup

    def _sprites(self) -> tuple[np.ndarray, np.ndarray]:
        """The load_digits images at digit_size x digit_size as uint8 (1797, d, d), and their labels."""
        from sklearn.datasets import load_digits  # deferred: sklearn import costs ~1 s

        images, labels = load_digits(return_X_y=True)
        x = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        if self.digit_size != 8:
            x = F.interpolate(x, size=(self.digit_size, self.digit_size), mode="bilinear", align_corners=False,
                              antialias=self.digit_size < 8)
        return (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy(), labels.astype(np.int64)

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        sprites, digit = self._sprites()
        g = torch.Generator().manual_seed(self.data_seed)
        train_pool, test_pool = (t.sort().values.numpy() for t in carve(len(digit), self.test_fraction, g))
        sets = {}
        for name, pool, n, stream in (("train", train_pool, self.n_train, 1), ("test", test_pool, self.n_test, 2)):
            clips, src, direction = render(sprites[pool], n, self.frames, self.image_size, self.directions,
                                           self.speed, _rng(self.data_seed, stream))
            sets[name] = (torch.from_numpy(clips).unsqueeze(2), torch.from_numpy(digit[pool][src]),
                          torch.from_numpy(direction))
        keep, val = carve(self.n_train, self.val_fraction, g)
        if len(keep) == 0 or len(val) == 0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} of data.n_train={self.n_train} clips leaves the "
                              "train or val split empty")
        x, dig, dirs = sets["train"]
        sets["val"] = (x[val], dig[val], dirs[val])
        sets["train"] = (x[keep], dig[keep], dirs[keep])
        self.label_sets = {k: {"digit": v[1], "direction": v[2]} for k, v in sets.items()}
        pick = 1 if self.labels == "digit" else 2
        return {k: (v[0], v[pick].long()) for k, v in sets.items()}
