"""Shared pieces of the image-file retrieval sets (nasx.data.face, nasx.data.fashion): annotation parsing
helpers whose errors name the file and line, a seeded carve of records, and lazily read image crops.

Boxes are ``(x1, y1, x2, y2)`` pixel edges, x2/y2 exclusive (PIL's crop convention). :class:`CropDataset` opens
an image with PIL, converts it to RGB, crops the box clamped to the image and resizes it to
image_size x image_size (PIL bilinear) -> float32 (3, S, S) in [0, 1]. Normalising (mean/std) is left to the
caller, which can do it once per batch on the device.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from nasx.errors import ConfigError, DatasetError, one_line

Box = tuple[float, float, float, float]
R = TypeVar("R")


def parse_numbers(fields: Sequence[str], where: str, what: str, kind: type = float) -> list:
    """Parses every field as ``kind`` (finite); raises DatasetError '<where>: <what> must be numbers, got ...'."""
    try:
        values = [kind(f) for f in fields]
    except ValueError:
        values = None
    if values is None or not all(math.isfinite(v) for v in values):
        noun = "integers" if kind is int else "numbers"
        raise DatasetError(f"{where}: {what} must be {noun}, got {' '.join(fields)!r}")
    return values


def check_box(box: Sequence[float], where: str, frame: tuple[int, int] | None = None) -> Box:
    """A box must have x2 > x1, y2 > y1 and, given the (height, width) frame it refers to, overlap that frame.

    A box reaching past the border is kept (crops clamp it): detectors and annotators often do that.
    """
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{where}: degenerate box {list(box)} (needs x2 > x1 and y2 > y1)")
    if frame is not None and (x1 >= frame[1] or y1 >= frame[0] or x2 <= 0 or y2 <= 0):
        raise DatasetError(f"{where}: box {list(box)} lies outside the {frame[0]}x{frame[1]} (h x w) image")
    return x1, y1, x2, y2


def text_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of each non-blank line."""
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line.split()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"'{path}': cannot read ({one_line(exc)})") from exc


def csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty CSV row after the header (line 1), which is skipped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            next(reader, None)
            try:
                for fields in reader:
                    if fields:
                        yield reader.line_num, fields
            except csv.Error as exc:
                raise DatasetError(f"'{path}' line {reader.line_num}: not CSV ({one_line(exc)})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"'{path}': cannot read ({one_line(exc)})") from exc


def carve_records(records: Sequence[R], fraction: float, seed: int,
                  group: Callable[[R], Hashable] | None = None) -> tuple[list[R], list[R]]:
    """Seeded, deterministic split of records into (rest, carved), both in input order.

    CMP-NAS carves 5 % (face) / 10 % (fashion) of the training set as the search-reward validation split.
    round(fraction * G) of the G groups go to carved, drawn by ``torch.randperm`` seeded with ``seed``; by
    default every record (image) is its own group. Pass ``group`` to keep records together: for DeepFashion2,
    ``lambda item: item.pair_id`` keeps an image's items and a query's shop mates on the same side (so the carved
    queries have their positives in the carved gallery); for IMDb-Face, ``lambda im: im.identity`` would carve
    whole identities. Labels are not renumbered: carved records keep the labels of the full set.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"carve fraction must lie in [0, 1), got {fraction!r}")
    keys = [group(r) if group else i for i, r in enumerate(records)]
    order = list(dict.fromkeys(keys))
    perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))
    chosen = {order[j] for j in perm[:round(fraction * len(order))].tolist()}
    rest: list[R] = []
    carved: list[R] = []
    for record, key in zip(records, keys):
        (carved if key in chosen else rest).append(record)
    return rest, carved


def check_images(paths: Sequence[Path], what: str) -> None:
    """Every image of ``paths`` exists and has a readable header (PIL identifies its format and size without
    decoding the pixels): a run checks its test images at setup instead of failing after training. Raises
    DatasetError naming the first bad file."""
    for path in dict.fromkeys(Path(p) for p in paths):
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 -- the header is parsed on open; the size proves it
        except FileNotFoundError:
            raise DatasetError(f"'{path}': no such image ({what})") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"'{path}': cannot read image ({what}: {one_line(exc)})") from None


def read_crop(path: Path, box: Box | None, size: int, frame: tuple[int, int] | None = None) -> Tensor:
    """One image -> float32 (3, size, size) in [0, 1]: the box (whole image if None), bilinear-resized.

    ``frame`` = (height, width) of the image the box coordinates refer to; the box is scaled from it to the
    actual image size, then clamped to the image. Raises DatasetError for an unreadable image or a box that
    ends up empty.
    """
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except OSError as exc:
        raise DatasetError(f"'{path}': cannot read image ({one_line(exc)})") from exc
    w, h = rgb.size
    region: Box = (0, 0, w, h)
    if box is not None:
        sx, sy = (w / frame[1], h / frame[0]) if frame else (1.0, 1.0)
        region = (max(box[0] * sx, 0.0), max(box[1] * sy, 0.0), min(box[2] * sx, w), min(box[3] * sy, h))
        if region[2] <= region[0] or region[3] <= region[1]:
            raise DatasetError(f"'{path}': box {list(box)} lies outside the {w}x{h} (w x h) image")
    out = rgb.resize((size, size), Image.Resampling.BILINEAR, box=region)
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


class CropDataset(Dataset):
    """Lazily read image crops. Item i = (x, targets[i]).

    x: float32 (3, S, S) in [0, 1], or (2, 3, S, S) = (x, x mirrored left-right) when ``flip`` (the
    flipped-embedding protocol: embed both, sum). ``boxes[i]`` None = the whole image; ``frames[i]`` = the
    (height, width) the box refers to, None = the image's own size. Picklable, so DataLoader workers can read.
    """

    def __init__(self, paths: Sequence[Path], boxes: Sequence[Box | None], targets: Sequence[int],
                 image_size: int, frames: Sequence[tuple[int, int] | None] | None = None,
                 flip: bool = False) -> None:
        if not len(paths) == len(boxes) == len(targets) == len(paths if frames is None else frames):
            raise ValueError("paths, boxes, targets and frames must have the same length")
        self.paths, self.boxes, self.targets = list(paths), list(boxes), list(targets)
        self.frames = list(frames) if frames is not None else [None] * len(self.paths)
        self.image_size, self.flip = image_size, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = read_crop(self.paths[i], self.boxes[i], self.image_size, self.frames[i])
        return (torch.stack([x, x.flip(-1)]) if self.flip else x), self.targets[i]
