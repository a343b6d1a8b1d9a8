"""Face retrieval data of CMP-NAS: IMDb-Face (training identities) and IJB-C (evaluation, insightface's
prepared meta files), read from the real on-disk formats.

Parsers return small frozen records, one per image; a malformed file raises DatasetError naming the file and
the 1-based line (a CSV header is line 1). Images are read lazily through :class:`nasx.data.crops.CropDataset`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nasx.data.crops import Box, CropDataset, check_box, csv_rows, parse_numbers, text_lines
from nasx.errors import DatasetError, one_line

log = logging.getLogger("nasx")

IMDB_FACE_HEADER = ("name", "index", "image", "rect", "height width", "url")


@dataclass(frozen=True)
class ImdbFaceRow:
    """One CSV row: ``identity`` the IMDb person id (nm...), ``box`` in the frame (height, width)."""
    identity: str
    image: str
    box: Box
    frame: tuple[int, int]
    line: int


@dataclass(frozen=True)
class FaceImage:
    """A downloaded IMDb-Face image: ``label`` = index of ``identity`` in :attr:`ImdbFace.identities`."""
    path: Path
    identity: str
    label: int
    box: Box
    frame: tuple[int, int]


@dataclass(frozen=True)
class ImdbFace:
    """The images found on disk, the sorted identities they cover, and how many listed rows had no image."""
    images: list[FaceImage]
    identities: list[str]
    missing: int


def parse_imdb_face_csv(path: str | Path) -> list[ImdbFaceRow]:
    """``IMDb-Face.csv``: header ``name,index,image,rect,height width,url``; ``rect`` = "x1 y1 x2 y2" in the
    coordinates of the image resized to ``height width`` = "h w" (both space-separated)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"'{path}': cannot read ({one_line(exc)})") from exc
    if tuple(h.strip() for h in header) != IMDB_FACE_HEADER:
        raise DatasetError(f"'{path}' line 1: expected header {','.join(IMDB_FACE_HEADER)!r}, "
                           f"got {','.join(header)!r}")
    rows = []
    for line, fields in csv_rows(path):
        where = f"'{path}' line {line}"
        if len(fields) != len(IMDB_FACE_HEADER):
            raise DatasetError(f"{where}: expected {len(IMDB_FACE_HEADER)} fields "
                               f"({','.join(IMDB_FACE_HEADER)}), got {len(fields)}")
        _, identity, image, rect, size, _ = (f.strip() for f in fields)
        if not identity.startswith("nm") or not image:
            raise DatasetError(f"{where}: expected an IMDb person id (nm...) and an image name, "
                               f"got index {identity!r} and image {image!r}")
        frame = parse_numbers(size.split(), where, "'height width'", int)
        if len(frame) != 2 or min(frame) <= 0:
            raise DatasetError(f"{where}: 'height width' must be two positive integers, got {size!r}")
        box = parse_numbers(rect.split(), where, "'rect'")
        if len(box) != 4:
            raise DatasetError(f"{where}: 'rect' must be 4 numbers 'x1 y1 x2 y2', got {rect!r}")
        rows.append(ImdbFaceRow(identity, image, check_box(box, where, (frame[0], frame[1])),
                                (frame[0], frame[1]), line))
    return rows


def load_imdb_face(csv_path: str | Path, images_dir: str | Path) -> ImdbFace:
    """Rows of ``IMDb-Face.csv`` whose image exists as ``images_dir/<index>/<image>`` or ``images_dir/<image>``.

    Users never have every image (URLs die), so rows without one are skipped and counted (``missing``, also
    logged); finding none is an error. Labels are the identity's position in the sorted identities present.
    Images may be the originals or already resized to ``height width``: crops scale the rect to the real size.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"IMDb-Face images directory not found: '{images_dir}'")
    rows = parse_imdb_face_csv(csv_path)
    found = []
    for row in rows:
        for path in (images_dir / row.identity / row.image, images_dir / row.image):
            if path.is_file():
                found.append((row, path))
                break
    if not found:
        raise DatasetError(f"'{images_dir}': none of the {len(rows)} images listed in '{csv_path}' found "
                           "(expected <images_dir>/<index>/<image> or <images_dir>/<image>)")
    identities = sorted({row.identity for row, _ in found})
    label = {identity: i for i, identity in enumerate(identities)}
    missing = len(rows) - len(found)
    if missing:
        log.warning("IMDb-Face: %d of %d listed images not found under '%s'; skipped", missing, len(rows),
                    images_dir)
    return ImdbFace([FaceImage(path, row.identity, label[row.identity], row.box, row.frame) for row, path in found],
                    identities, missing)


def imdb_face_dataset(images: Sequence[FaceImage], image_size: int) -> CropDataset:
    """Items (face crop (3, S, S), identity label)."""
    return CropDataset([im.path for im in images], [im.box for im in images], [im.label for im in images],
                       image_size, frames=[im.frame for im in images])


IJBC_META = {"tid_mid": "ijbc_face_tid_mid.txt", "5pts": "ijbc_name_5pts_score.txt",
             "pairs": "ijbc_template_pair_label.txt", "g1": "ijbc_1N_gallery_G1.csv",
             "g2": "ijbc_1N_gallery_G2.csv", "probe": "ijbc_1N_probe_mixed.csv"}


@dataclass(frozen=True)
class IJBCImage:
    """A loose crop: ``score`` = face detection score (template pooling weight), ``landmarks`` = the five
    points x1 y1 ... x5 y5 in the crop's pixels."""
    path: Path
    template_id: int
    media_id: int
    score: float
    landmarks: tuple[float, ...]


@dataclass(frozen=True)
class IJBC:
    """IJB-C images in ``ijbc_face_tid_mid.txt`` order, 1:1 pairs and the 1:N template -> subject maps.

    ``pairs``: int64 (P, 3) rows (tid1, tid2, label), label 1 = same subject (a tensor, not records: IJB-C has
    15.7M pairs).
    """
    images: list[IJBCImage]
    pairs: Tensor
    gallery_g1: dict[int, int]
    gallery_g2: dict[int, int]
    probe: dict[int, int]


def _read_tid_mid(path: Path) -> dict[str, tuple[int, int, int]]:
    """image -> (template id, media id, line) from ``image template_id media_id`` lines."""
    out: dict[str, tuple[int, int, int]] = {}
    for line, fields in text_lines(path):
        where = f"'{path}' line {line}"
        if len(fields) != 3:
            raise DatasetError(f"{where}: expected 3 fields 'image template_id media_id', got {len(fields)}")
        if fields[0] in out:
            raise DatasetError(f"{where}: image {fields[0]!r} already listed on line {out[fields[0]][2]}")
        tid, mid = parse_numbers(fields[1:], where, "template and media ids", int)
        out[fields[0]] = (tid, mid, line)
    if not out:
        raise DatasetError(f"'{path}': no images listed")
    return out


def _read_5pts(path: Path, images: dict[str, tuple[int, int, int]]) -> dict[str, list[float]]:
    """image -> [x1, y1, ..., x5, y5, score] from ``image x1 y1 ... x5 y5 score`` lines (12 fields)."""
    out: dict[str, list[float]] = {}
    for line, fields in text_lines(path):
        where = f"'{path}' line {line}"
        if len(fields) != 12:
            raise DatasetError(f"{where}: expected 12 fields 'image x1 y1 ... x5 y5 score', got {len(fields)}")
        if fields[0] not in images:
            raise DatasetError(f"{where}: image {fields[0]!r} is not in {IJBC_META['tid_mid']}")
        out[fields[0]] = parse_numbers(fields[1:], where, "landmarks and score")
    return out


def _read_pairs(path: Path, templates: set[int]) -> Tensor:
    """``tid1 tid2 label`` lines -> int64 (P, 3). Vectorised; on a problem a line scan names the first bad line."""
    try:
        pairs = np.loadtxt(path, dtype=np.int64, ndmin=2)
        known = np.fromiter(templates, dtype=np.int64)
        ok = (pairs.shape[0] > 0 and pairs.shape[1] == 3 and np.isin(pairs[:, :2], known).all()
              and np.isin(pairs[:, 2], (0, 1)).all())
    except (OSError, ValueError, OverflowError):  # the line scan below says what is wrong
        ok = False
    if ok:
        return torch.from_numpy(pairs)
    for line, fields in text_lines(path):
        where = f"'{path}' line {line}"
        if len(fields) != 3:
            raise DatasetError(f"{where}: expected 3 fields 'tid1 tid2 label', got {len(fields)}")
        tid1, tid2, label = parse_numbers(fields, where, "'tid1 tid2 label'", int)
        for tid in (tid1, tid2):
            if tid not in templates:
                raise DatasetError(f"{where}: unknown template id {tid} (not in {IJBC_META['tid_mid']})")
        if label not in (0, 1):
            raise DatasetError(f"{where}: label must be 0 or 1, got {label}")
    raise DatasetError(f"'{path}': expected one or more 'tid1 tid2 label' integer lines")


def _read_template_subjects(path: Path, templates: set[int]) -> dict[int, int]:
    """Template id (column 0) -> subject id (column 1) of a 1:N CSV (header, one row per image)."""
    out: dict[int, int] = {}
    for line, fields in csv_rows(path):
        where = f"'{path}' line {line}"
        if len(fields) < 2:
            raise DatasetError(f"{where}: expected at least 2 columns (template id, subject id), got {len(fields)}")
        tid, subject = parse_numbers([f.strip() for f in fields[:2]], where, "template and subject ids", int)
        if tid not in templates:
            raise DatasetError(f"{where}: unknown template id {tid} (not in {IJBC_META['tid_mid']})")
        if out.setdefault(tid, subject) != subject:
            raise DatasetError(f"{where}: template {tid} has subject {subject} here but {out[tid]} above")
    if not out:
        raise DatasetError(f"'{path}': no templates listed")
    return out


def load_ijbc(root: str | Path) -> IJBC:
    """IJB-C as prepared by insightface: ``root/loose_crop/<n>.jpg`` and ``root/meta/`` holding
    ``ijbc_face_tid_mid.txt``, ``ijbc_name_5pts_score.txt``, ``ijbc_template_pair_label.txt`` (space-separated,
    no header) and ``ijbc_1N_gallery_G1.csv``, ``ijbc_1N_gallery_G2.csv``, ``ijbc_1N_probe_mixed.csv`` (header;
    column 0 template id, column 1 subject id). Every listed image needs a 5-point line; every template id in the
    pair and 1:N files must appear in the tid/mid file. Image files are only opened when read.
    """
    root = Path(root)
    meta = {key: root / "meta" / name for key, name in IJBC_META.items()}
    for path in meta.values():
        if not path.is_file():
            raise DatasetError(f"IJB-C meta file missing: '{path}' "
                               f"(expected {root}/meta/{{{','.join(IJBC_META.values())}}})")
    tid_mid = _read_tid_mid(meta["tid_mid"])
    points = _read_5pts(meta["5pts"], tid_mid)
    images = []
    for name, (tid, mid, line) in tid_mid.items():
        if name not in points:
            raise DatasetError(f"'{meta['tid_mid']}' line {line}: image {name!r} has no line in {IJBC_META['5pts']}")
        images.append(IJBCImage(root / "loose_crop" / name, tid, mid, points[name][10], tuple(points[name][:10])))
    templates = {tid for tid, _, _ in tid_mid.values()}
    return IJBC(images, _read_pairs(meta["pairs"], templates), _read_template_subjects(meta["g1"], templates),
                _read_template_subjects(meta["g2"], templates), _read_template_subjects(meta["probe"], templates))


def ijbc_dataset(images: Sequence[IJBCImage], image_size: int, flip: bool = True) -> CropDataset:
    """Items (whole loose crop resized, (3, S, S) or (2, 3, S, S) with ``flip``, index into ``images``) so the
    caller can pool per template: weight by ``score``, mean within media, sum over media."""
    return CropDataset([im.path for im in images], [None] * len(images), range(len(images)), image_size,
                       flip=flip)
