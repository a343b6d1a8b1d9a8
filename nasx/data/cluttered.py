"""Cluttered digits: a harder embedded image data set generated from scikit-learn's bundled handwriting (no download).

nasx's own recipe (not from any paper). The 1,797 real 8x8 digits of ``sklearn.datasets.load_digits`` are split by
a seeded per-class permutation into disjoint train-source and test-source pools, so every test image shows
handwriting that no training image shows. Each 32x32 RGB image is then drawn as:

1. a background: a linear gradient between two random colours plus low- and mid-frequency coloured noise (random
   4x4 and 8x8 grids upsampled bicubically), weighted by ``texture``;
2. ``distractors`` (a count range) fragments of other digits of the same pool (any class): each a random box of a
   digit's area, under its own random affine, in its own random colour, placed anywhere on the canvas so that it
   often overlaps the digit;
3. the digit itself (upsampled bicubically to 32x32 once, then warped bilinearly by one affine map: rotation within
   ±``rotation`` degrees, shear within ±``shear``, a size of ``scale`` of the canvas with an anisotropy of
   exp(±``aspect``), and a translation that keeps its centre within ``translate`` of the free margin), in a random
   colour whose luminance differs from the background's mean by at least ``min_contrast``;
4. Gaussian pixel noise with a per-image sigma uniform in [0, ``noise``], then rounding to uint8.

Exactly ``n_train // 10`` (``n_test // 10``) images per class; each class's pool is walked in shuffled rounds so
every source digit is used equally often (±1). All arithmetic is float64 on the CPU and every random number comes
from NumPy's PCG64 bit stream through ``Generator.random`` only (integers, permutations and normals are derived from
those uniforms here, not by NumPy's distribution code), so a seed gives the same bytes on every machine; a test keeps
the SHA-256 of a small generation.

The full default size (20,000 train + 10,000 test) takes seconds to generate; the result is cached under ``root`` as
``cluttered_digits-v<version>-seed<seed>-train<n>-test<n>-<recipe hash>.pt``, written atomically.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nasx import artifacts
from nasx.data.memory import InMemoryDataModule, carve
from nasx.errors import ConfigError, DatasetError, one_line

VERSION = 1  # bump when the recipe's code changes the bytes it produces (the cache file name carries it)
SIZE = 32  # the stored images are SIZE x SIZE x 3 uint8
NUM_CLASSES = 10
_CHUNK = 1000  # images rendered per batch: bounds memory, and the bytes do not depend on it (per-chunk streams)


@dataclass(frozen=True)
class Recipe:
    """The difficulty knobs (defaults tuned so that a mid-sized ``shufflenet_cpu`` arch trained standalone for 10
    epochs lands at roughly 70-80 % test top-1; see experiments/data/cluttered_difficulty.py)."""

    test_per_class: int = 50  # source digits per class held out for the test images (of 174..183 per class)
    rotation: float = 30.0  # degrees, uniform in ±rotation
    shear: float = 0.3  # x-shear factor, uniform in ±shear
    scale: tuple[float, float] = (0.5, 0.85)  # digit height as a share of the canvas, uniform in the range
    aspect: float = 0.25  # log anisotropy, uniform in ±aspect (width / height = exp of it)
    translate: float = 1.0  # share of the free margin the digit's centre may move, per axis
    distractors: tuple[int, int] = (1, 3)  # fragments of other digits per image, uniform in the range (inclusive)
    fragment: tuple[float, float] = (0.3, 0.6)  # a fragment's box side as a share of its digit's, uniform
    texture: float = 0.5  # amplitude of the background's coloured noise (0..1 units)
    min_contrast: float = 0.3  # least luminance gap between the digit's colour and the background's mean
    noise: float = 0.08  # most per-pixel Gaussian noise sigma (0..1 units)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "distractors", tuple(int(v) for v in self.distractors))
        object.__setattr__(self, "fragment", tuple(float(v) for v in self.fragment))
        checks = [
            ("test_per_class", 1 <= self.test_per_class <= 150, "an integer in 1..150"),
            ("rotation", 0 <= self.rotation <= 180, "degrees in 0..180"),
            ("shear", 0 <= self.shear <= 1, "a number in 0..1"),
            ("scale", len(self.scale) == 2 and 0.1 <= self.scale[0] <= self.scale[1] <= 1.0,
             "[low, high] with 0.1 <= low <= high <= 1"),
            ("aspect", 0 <= self.aspect <= 1, "a number in 0..1"),
            ("translate", 0 <= self.translate <= 1, "a number in 0..1"),
            ("distractors", len(self.distractors) == 2 and 0 <= self.distractors[0] <= self.distractors[1] <= 8,
             "[low, high] counts with 0 <= low <= high <= 8"),
            ("fragment", len(self.fragment) == 2 and 0.05 <= self.fragment[0] <= self.fragment[1] <= 1.0,
             "[low, high] with 0.05 <= low <= high <= 1"),
            ("texture", 0 <= self.texture <= 1, "a number in 0..1"),
            ("min_contrast", 0 <= self.min_contrast <= 0.5, "a number in 0..0.5"),
            ("noise", 0 <= self.noise <= 0.5, "a number in 0..0.5"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"data.{key} must be {what}, got {getattr(self, key)!r}")

    def digest(self) -> str:
        """8 hex digits naming the knobs' values (part of the cache file name)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def _source_digits() -> tuple[np.ndarray, np.ndarray]:
    """load_digits as (images (1797, 8, 8) float64 in 0..1, labels (1797,) int64)."""
    from sklearn.datasets import load_digits  # deferred: sklearn import costs ~1 s

    images, labels = load_digits(return_X_y=True)
    return images.reshape(-1, 8, 8) / 16.0, labels.astype(np.int64)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *stream])))


def _permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniform permutation of 0..n-1 from ``n`` uniforms (stable sort; ties have probability ~2^-53)."""
    return np.argsort(rng.random(n), kind="stable")


def _uniform(rng: np.random.Generator, low: float, high: float, shape) -> np.ndarray:
    return low + (high - low) * rng.random(shape)


def _randint(rng: np.random.Generator, low: int, high: int, shape) -> np.ndarray:
    """Integers uniform in low..high inclusive."""
    return np.minimum(low + np.floor(rng.random(shape) * (high - low + 1)).astype(np.int64), high)


def _normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normals by Box-Muller from uniforms (NumPy's own normal sampler may change between versions)."""
    count = int(np.prod(shape))
    half = (count + 1) // 2
    u = rng.random((2, half))
    r = np.sqrt(-2.0 * np.log1p(-u[0]))  # 1 - u lies in (0, 1]
    z = np.concatenate([r * np.cos(2 * np.pi * u[1]), r * np.sin(2 * np.pi * u[1])])
    return z[:count].reshape(shape)


def source_pools(labels: np.ndarray, seed: int, test_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train-source, test-source) row indices into load_digits: ``test_per_class`` of every class go to
    the test pool, picked by a permutation seeded by ``seed``; the rest form the train pool. Both sorted."""
    rng = _rng(seed, 0)
    train, test = [], []
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == c)
        if len(rows) <= test_per_class:
            raise ConfigError(f"data.test_per_class must be below {len(rows)} (the images of digit {c}), "
                              f"got {test_per_class}")
        rows = rows[_permutation(rng, len(rows))]
        test.append(rows[:test_per_class])
        train.append(rows[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _assign(rng: np.random.Generator, labels: np.ndarray, pool: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), source rows (n,)): n // 10 images per class in a random order, each class's pool walked in
    freshly shuffled rounds so every source digit is used equally often (±1)."""
    per_class = n // NUM_CLASSES
    y = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)[_permutation(rng, n)]
    src = np.empty(n, dtype=np.int64)
    for c in range(NUM_CLASSES):
        rows = pool[labels[pool] == c]
        rounds = math.ceil(per_class / len(rows))
        walk = np.concatenate([rows[_permutation(rng, len(rows))] for _ in range(rounds)])[:per_class]
        src[y == c] = walk
    return y, src


def _affine(rotation: np.ndarray, shear: np.ndarray, sx: np.ndarray, sy: np.ndarray, tx: np.ndarray,
            ty: np.ndarray) -> Tensor:
    """(N, 2, 3) float64 ``theta`` for affine_grid: the inverse of the map taking the source's [-1, 1]^2 box to the
    canvas (scale by (sx, sy), then shear x by ``shear``·y, then rotate, then translate), all in canvas units."""
    c, s = np.cos(rotation), np.sin(rotation)
    # forward A = R @ Sh @ S
    a = np.empty((len(c), 2, 2))
    a[:, 0, 0] = c * sx
    a[:, 0, 1] = (c * shear - s) * sy
    a[:, 1, 0] = s * sx
    a[:, 1, 1] = (s * shear + c) * sy
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    inv = np.empty_like(a)
    inv[:, 0, 0], inv[:, 1, 1] = a[:, 1, 1] / det, a[:, 0, 0] / det
    inv[:, 0, 1], inv[:, 1, 0] = -a[:, 0, 1] / det, -a[:, 1, 0] / det
    t = np.stack([tx, ty], axis=1)[:, :, None]
    theta = np.concatenate([inv, -inv @ t], axis=2)
    return torch.from_numpy(theta)


def _luminance(rgb: Tensor) -> Tensor:
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _render(rng: np.random.Generator, glyphs: Tensor, src: np.ndarray, pool: np.ndarray, r: Recipe) -> Tensor:
    """The images of one chunk: (n, 3, SIZE, SIZE) float64 in 0..1 (before noise and quantisation)."""
    n = len(src)
    shape = (n, 1, SIZE, SIZE)
    # background: gradient between two colours along a random direction, plus coloured noise at two scales
    c0, c1 = torch.from_numpy(rng.random((n, 3))), torch.from_numpy(rng.random((n, 3)))
    phi = torch.from_numpy(_uniform(rng, 0, 2 * np.pi, n))
    lin = (torch.arange(SIZE, dtype=torch.float64) + 0.5) / SIZE * 2 - 1
    ramp = (phi.cos().view(n, 1, 1) * lin.view(1, 1, SIZE) + phi.sin().view(n, 1, 1) * lin.view(1, SIZE, 1))
    ramp = (ramp / math.sqrt(2) + 1) / 2  # in [0, 1]
    bg = c0.view(n, 3, 1, 1) + (c1 - c0).view(n, 3, 1, 1) * ramp.view(n, 1, SIZE, SIZE)
    for grid, weight in ((4, 1.0), (8, 0.5)):
        cells = torch.from_numpy(rng.random((n, 3, grid, grid)) - 0.5)
        bg = bg + r.texture * weight * F.interpolate(cells, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    bg = bg.clamp(0, 1)

    # distractor fragments, drawn under the digit
    k = _randint(rng, r.distractors[0], r.distractors[1], n)
    for j in range(r.distractors[1]):
        other = torch.from_numpy(pool[_randint(rng, 0, len(pool) - 1, n)])
        size = _uniform(rng, r.scale[0], r.scale[1], n)
        aniso = np.exp(_uniform(rng, -r.aspect, r.aspect, n))
        theta = _affine(np.deg2rad(_uniform(rng, -180, 180, n)), _uniform(rng, -r.shear, r.shear, n),
                        size * np.sqrt(aniso), size / np.sqrt(aniso), _uniform(rng, -1, 1, n), _uniform(rng, -1, 1, n))
        side = _uniform(rng, r.fragment[0], r.fragment[1], (2, n)) * 2  # box sides in source units
        x0 = _uniform(rng, 0, 1, n) * (2 - side[0]) - 1
        y0 = _uniform(rng, 0, 1, n) * (2 - side[1]) - 1
        colour = torch.from_numpy(rng.random((n, 3)))
        grid = F.affine_grid(theta, list(shape), align_corners=False)
        ink = F.grid_sample(glyphs[other], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        gx, gy = grid[..., 0], grid[..., 1]
        box = ((gx >= torch.from_numpy(x0).view(n, 1, 1)) & (gx <= torch.from_numpy(x0 + side[0]).view(n, 1, 1))
               & (gy >= torch.from_numpy(y0).view(n, 1, 1)) & (gy <= torch.from_numpy(y0 + side[1]).view(n, 1, 1)))
        active = torch.from_numpy(j < k).view(n, 1, 1, 1)
        alpha = ink * box.unsqueeze(1) * active
        bg = bg * (1 - alpha) + colour.view(n, 3, 1, 1) * alpha

    # the digit
    size = _uniform(rng, r.scale[0], r.scale[1], n)
    aniso = np.exp(_uniform(rng, -r.aspect, r.aspect, n))
    sx, sy = size * np.sqrt(aniso), size / np.sqrt(aniso)
    shear = _uniform(rng, -r.shear, r.shear, n)
    margin_x = np.clip(1 - np.maximum(sx, size), 0, None) * r.translate
    margin_y = np.clip(1 - np.maximum(sy, size), 0, None) * r.translate
    theta = _affine(np.deg2rad(_uniform(rng, -r.rotation, r.rotation, n)), shear, sx, sy,
                    _uniform(rng, -1, 1, n) * margin_x, _uniform(rng, -1, 1, n) * margin_y)
    fg = torch.from_numpy(rng.random((n, 3)))
    # push the colour's luminance away from the background's mean: towards white on a dark background, else black
    l_bg, l_fg = _luminance(bg.mean(dim=(2, 3))), _luminance(fg)
    dark = l_bg < 0.5
    up = ((l_bg + r.min_contrast - l_fg) / (1 - l_fg).clamp_min(1e-9)).clamp(0, 1)
    down = (1 - (l_bg - r.min_contrast) / l_fg.clamp_min(1e-9)).clamp(0, 1)
    fg = torch.where(dark.view(n, 1), fg + (1 - fg) * up.view(n, 1), fg * (1 - down.view(n, 1)))
    grid = F.affine_grid(theta, list(shape), align_corners=False)
    ink = F.grid_sample(glyphs[torch.from_numpy(src)], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    img = bg * (1 - ink) + fg.view(n, 3, 1, 1) * ink

    sigma = torch.from_numpy(_uniform(rng, 0, r.noise, n)).view(n, 1, 1, 1)
    return img + sigma * torch.from_numpy(_normal(rng, (n, 3, SIZE, SIZE)))


def _glyphs(images: np.ndarray) -> Tensor:
    """The 8x8 digits upsampled bicubically to SIZE x SIZE once, ink in 0..1: (1797, 1, SIZE, SIZE) float64."""
    x = torch.from_numpy(images).view(-1, 1, 8, 8)
    return F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(0, 1)


def generate(seed: int = 0, n_train: int = 20000, n_test: int = 10000,
             recipe: Recipe | None = None) -> dict[str, Tensor]:
    """The data set for ``seed``: a pure function of its arguments (same bytes on every machine).

    Returns {"x_train": (n_train, 3, 32, 32) uint8, "y_train": (n_train,) int64, "x_test", "y_test" likewise,
    "src_train"/"src_test": (n,) int64 rows of load_digits that each image's digit was drawn from}. ``n_train`` and
    ``n_test`` must be positive multiples of 10 (exactly n / 10 images per class). The test split depends on
    ``seed``, ``n_test`` and the recipe only, not on ``n_train``.
    """
    r = recipe if recipe is not None else Recipe()
    for key, n in (("n_train", n_train), ("n_test", n_test)):
        if int(n) < NUM_CLASSES or int(n) % NUM_CLASSES:
            raise ConfigError(f"data.{key} must be a positive multiple of {NUM_CLASSES}, got {n!r}")
    images, labels = _source_digits()
    glyphs = _glyphs(images)
    pools = dict(zip(("train", "test"), source_pools(labels, seed, r.test_per_class)))
    out = {}
    for stream, (split, n) in enumerate((("train", int(n_train)), ("test", int(n_test))), start=1):
        y, src = _assign(_rng(seed, stream, 0), labels, pools[split], n)
        x = torch.empty((n, 3, SIZE, SIZE), dtype=torch.uint8)
        for i, start in enumerate(range(0, n, _CHUNK)):  # one random stream per chunk
            stop = min(start + _CHUNK, n)
            img = _render(_rng(seed, stream, i + 1), glyphs, src[start:stop], pools[split], r)
            x[start:stop] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        out[f"x_{split}"], out[f"y_{split}"] = x, torch.from_numpy(y)
        out[f"src_{split}"] = torch.from_numpy(src)
    return out


def fingerprint(data: dict[str, Tensor]) -> str:
    """SHA-256 of the images and labels of both splits (what the golden test pins)."""
    h = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        h.update(data[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_name(seed: int, n_train: int, n_test: int, recipe: Recipe) -> str:
    return f"cluttered_digits-v{VERSION}-seed{seed}-train{n_train}-test{n_test}-{recipe.digest()}.pt"


def _meta(seed: int, n_train: int, n_test: int, recipe: Recipe) -> dict:
    return {"version": VERSION, "seed": int(seed), "n_train": int(n_train), "n_test": int(n_test),
            "recipe": json.loads(json.dumps(asdict(recipe)))}  # tuples as lists, as torch.load returns them


def _read_cache(path: Path, meta: dict) -> dict[str, Tensor]:
    fix = "delete it and it is regenerated"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file raises many types
        raise DatasetError(f"'{path}': unreadable cluttered-digits cache ({one_line(exc)}); {fix}") from exc
    if not isinstance(blob, dict) or blob.get("meta") != meta:
        raise DatasetError(f"'{path}': not the cluttered-digits cache of this recipe, seed and size; {fix}")
    for split in ("train", "test"):
        n = meta[f"n_{split}"]
        x, y = blob.get(f"x_{split}"), blob.get(f"y_{split}")
        if (not isinstance(x, Tensor) or x.dtype != torch.uint8 or tuple(x.shape) != (n, 3, SIZE, SIZE)
                or not isinstance(y, Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (n,)
                or int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
            raise DatasetError(f"'{path}': the {split} split is malformed (expected {n} uint8 images "
                               f"3x{SIZE}x{SIZE} and labels 0..{NUM_CLASSES - 1}); {fix}")
    return blob


class _Lock:
    """An exclusive flock on ``.<name>.lock`` next to the cache: processes (e.g. DDP ranks) that need the same
    file wait for the first to write it instead of generating it twice. No-op where fcntl is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path.parent / f".{path.name}.lock"
        self.fd: int | None = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def load_or_generate(root: str | Path, seed: int = 0, n_train: int = 20000, n_test: int = 10000,
                     recipe: Recipe | None = None) -> dict[str, Tensor]:
    """The cached data set under ``root`` (see :func:`cache_name`), generated and written atomically when missing.

    A cache file that cannot be read, or that holds another recipe's data, raises DatasetError naming it.
    """
    r = recipe if recipe is not None else Recipe()
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"'{root}': the cluttered-digits cache directory is a file")
    path = root / cache_name(seed, n_train, n_test, r)
    meta = _meta(seed, n_train, n_test, r)
    if path.is_file():
        return _read_cache(path, meta)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"'{root}': cannot create the cluttered-digits cache directory ({one_line(exc)})") from exc
    with _Lock(path):
        if path.is_file():  # another process wrote it while this one waited
            return _read_cache(path, meta)
        data = generate(seed, n_train, n_test, r)
        artifacts.torch_save({**data, "meta": meta}, path)
        artifacts.remove_stale_tmp(path.parent, path.name)  # under the lock: no live writer of this file
    return data


class ClutteredDigitsDataModule(InMemoryDataModule):
    """Cluttered digits (this module's docstring has the recipe): 32x32 RGB, 10 classes, exactly balanced.

    ``data_seed`` fixes the data set (generation and the val carve), so runs with different ``seed`` (which drives
    the batch order and augmentation) see the same train/val/test images. ``val_fraction`` of the ``n_train``
    generated training images become val. Stored images are 32x32; ``image_size`` resizes them on load (bilinear,
    antialiased when shrinking). Batches are x (B, 3, image_size, image_size) float32 normalised, y (B,) int64.
    """

    def __init__(self, root: str = "data/cluttered_digits", batch_size: int = 128, eval_batch_size: int = 1000,
                 val_fraction: float = 0.1, seed: int = 0, data_seed: int = 0, n_train: int = 20000,
                 n_test: int = 10000, augment: bool = True, image_size: int = 32, shift: int = 0,
                 hflip: bool = False, test_per_class: int = 50, rotation: float = 30.0, shear: float = 0.3,
                 scale: Sequence[float] = (0.5, 0.85), aspect: float = 0.25, translate: float = 1.0,
                 distractors: Sequence[int] = (1, 3), fragment: Sequence[float] = (0.3, 0.6), texture: float = 0.5,
                 min_contrast: float = 0.3, noise: float = 0.08) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, val_fraction=val_fraction,
                         seed=seed, augment=augment, image_size=image_size, shift=shift, hflip=hflip)
        for key, n in (("n_train", n_train), ("n_test", n_test)):
            if int(n) < NUM_CLASSES or int(n) % NUM_CLASSES:
                raise ConfigError(f"data.{key} must be a positive multiple of {NUM_CLASSES}, got {n!r}")
        self.root = Path(root).expanduser()
        self.data_seed, self.n_train, self.n_test = int(data_seed), int(n_train), int(n_test)
        self.recipe = Recipe(test_per_class=int(test_per_class), rotation=float(rotation), shear=float(shear),
                             scale=tuple(scale), aspect=float(aspect), translate=float(translate),
                             distractors=tuple(distractors), fragment=tuple(fragment), texture=float(texture),
                             min_contrast=float(min_contrast), noise=float(noise))
        self.in_channels = 3
        self.num_classes = NUM_CLASSES

    @property
    def cache_path(self) -> Path:
        return self.root / cache_name(self.data_seed, self.n_train, self.n_test, self.recipe)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"'{self.root}': the cluttered-digits cache directory is a file")

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        data = load_or_generate(self.root, self.data_seed, self.n_train, self.n_test, self.recipe)
        x_train, x_test = data["x_train"], data["x_test"]
        if self.image_size != SIZE:
            x_train, x_test = self.resize(x_train), self.resize(x_test)
        y_train, y_test = data["y_train"], data["y_test"]
        keep, val = carve(len(y_train), self.val_fraction, torch.Generator().manual_seed(self.data_seed))
        return {"train": (x_train[keep], y_train[keep]), "val": (x_train[val], y_train[val]),
                "test": (x_test, y_test)}
