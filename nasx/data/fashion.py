"""DeepFashion2 consumer-to-shop retrieval data of CMP-NAS, read from the real on-disk format.

Records are one per clothing item; a malformed annotation raises DatasetError naming the JSON file and the key
path (``item2.bounding_box``). Queries are user items with style > 0, the gallery shop items with style > 0, and
a retrieved item is correct iff it has the query's (pair_id, style). nasx crops ground-truth boxes on both sides
(:class:`nasx.data.crops.CropDataset`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nasx.data.crops import Box, CropDataset, check_box
from nasx.errors import ConfigError, DatasetError, one_line

NUM_FASHION_CATEGORIES = 13
_ITEM_KEY = re.compile(r"item(\d+)")


@dataclass(frozen=True)
class FashionItem:
    """One clothing item ``item<item>`` of a DeepFashion2 image. ``style`` 0 = not matchable; a retrieved shop
    item is correct iff its :attr:`key` (pair_id, style) equals the query's."""
    path: Path
    item: int
    source: str
    pair_id: int
    style: int
    category_id: int
    box: Box

    @property
    def key(self) -> tuple[int, int]:
        return self.pair_id, self.style


def _json_int(value: object, where: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low) or (
            high is not None and value > high):
        allowed = f" in {low}..{high}" if high is not None else f" >= {low}" if low is not None else ""
        raise DatasetError(f"{where}: expected an integer{allowed}, got {value!r}")
    return value


def parse_deepfashion2_anno(path: str | Path, image: str | Path) -> list[FashionItem]:
    """One ``annos/<n>.json``: ``source`` ("user" | "shop"), ``pair_id`` and items ``item1``, ``item2``, ...
    each with ``category_id`` (1-13), ``style`` (>= 0) and ``bounding_box`` [x1, y1, x2, y2] (image pixels).
    Other keys (landmarks, segmentation, ...) are not read."""
    path = Path(path)
    try:
        anno = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"'{path}': cannot read ({one_line(exc)})") from exc
    except ValueError as exc:
        raise DatasetError(f"'{path}': not JSON ({one_line(exc)})") from exc
    if not isinstance(anno, dict):
        raise DatasetError(f"'{path}': expected a JSON object, got {type(anno).__name__}")
    for key in ("source", "pair_id"):
        if key not in anno:
            raise DatasetError(f"'{path}': {key}: missing key")
    if anno["source"] not in ("user", "shop"):
        raise DatasetError(f"'{path}': source: expected 'user' or 'shop', got {anno['source']!r}")
    pair_id = _json_int(anno["pair_id"], f"'{path}': pair_id")
    numbered = sorted((int(m.group(1)), key) for key in anno if (m := _ITEM_KEY.fullmatch(key)))
    items = []
    for number, key in numbered:
        item = anno[key]
        if not isinstance(item, dict):
            raise DatasetError(f"'{path}': {key}: expected an object, got {type(item).__name__}")
        for field in ("category_id", "style", "bounding_box"):
            if field not in item:
                raise DatasetError(f"'{path}': {key}.{field}: missing key")
        where = f"'{path}': {key}.bounding_box"
        box = item["bounding_box"]
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise DatasetError(f"{where}: expected 4 numbers [x1, y1, x2, y2], got {box!r}")
        items.append(FashionItem(Path(image), number, anno["source"], pair_id,
                                 _json_int(item["style"], f"'{path}': {key}.style", 0),
                                 _json_int(item["category_id"], f"'{path}': {key}.category_id", 1,
                                           NUM_FASHION_CATEGORIES),
                                 check_box([float(v) for v in box], where)))
    return items


def load_deepfashion2(root: str | Path, split: str) -> list[FashionItem]:
    """Every item of ``root/<split>/annos/*.json`` (sorted by name), image ``root/<split>/image/<name>.jpg``."""
    if split not in ("train", "validation"):
        raise ConfigError(f"DeepFashion2 split must be 'train' or 'validation', got {split!r}")
    annos = Path(root) / split / "annos"
    files = sorted(annos.glob("*.json"))
    if not files:
        raise DatasetError(f"DeepFashion2 annotations not found: no '{annos}/*.json' "
                           f"(expected {root}/{{train,validation}}/{{image/<n>.jpg,annos/<n>.json}})")
    items = [item for f in files for item in parse_deepfashion2_anno(f, annos.parent / "image" / f"{f.stem}.jpg")]
    if not items:
        raise DatasetError(f"'{annos}': no item1, item2, ... in any annotation")
    return items


def fashion_queries(items: Sequence[FashionItem]) -> list[FashionItem]:
    """Consumer (``user``) items with style > 0: the retrieval queries."""
    return [it for it in items if it.source == "user" and it.style > 0]


def fashion_gallery(items: Sequence[FashionItem]) -> list[FashionItem]:
    """Shop items with style > 0. Style 0 items can never be correct (no query has style 0), so they are left
    out rather than kept as distractors."""
    return [it for it in items if it.source == "shop" and it.style > 0]


def fashion_classes(items: Sequence[FashionItem]) -> dict[tuple[int, int], int]:
    """Distinct (pair_id, style) with style > 0, user and shop alike, numbered in sorted order: the classes of
    the classifier head when given the training items. Two items match iff they get the same class."""
    return {key: i for i, key in enumerate(sorted({it.key for it in items if it.style > 0}))}


def deepfashion2_dataset(items: Sequence[FashionItem], image_size: int,
                         classes: dict[tuple[int, int], int] | None = None) -> CropDataset:
    """Items (ground-truth box crop (3, S, S), target): target = ``classes[item.key]`` (training; every item
    needs a class, so pass style > 0 items) or, with no ``classes``, the index into ``items`` (evaluation)."""
    if classes is None:
        targets: Sequence[int] = range(len(items))
    else:
        unknown = [it for it in items if it.key not in classes]
        if unknown:
            raise ValueError(f"{len(unknown)} items have no class, e.g. {unknown[0].path} item{unknown[0].item} "
                             f"(pair_id, style) = {unknown[0].key}")
        targets = [classes[it.key] for it in items]
    return CropDataset([it.path for it in items], [it.box for it in items], targets, image_size)
