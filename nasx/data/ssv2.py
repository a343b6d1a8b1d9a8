"""Something-Something V2 read from its label JSONs and ``<id>.webm`` videos, decoded with PyAV.

``something-something-v2-labels.json`` maps each template, brackets removed, to its class index written as a string
(174 classes); ``something-something-v2-{train,validation}.json`` are lists of ``{id, label, template,
placeholders}``; an entry's class is ``labels[template without '[' and ']']`` (``label`` is the template with the
objects filled in, not a class). nasx looks for the JSONs in ``root`` then ``root/labels``, and for the videos in
``root/videos``, ``root/20bn-something-something-v2``, then ``root`` [nasx: the download unpacks to the second].

nasx's "test" split is the official validation list (results are reported on it); "val" is carved from train for the
search. Horizontal flips are never applied: they turn "left to right" into "right to left".
"""
from __future__ import annotations

import json
from pathlib import Path

from nasx.data.video import Segments, VideoDataModule, scan
from nasx.errors import DatasetError

PREFIX = "something-something-v2"
LABELS = f"{PREFIX}-labels.json"
SPLIT_FILES = {"train": f"{PREFIX}-train.json", "validation": f"{PREFIX}-validation.json"}
JSON_DIRS = (".", "labels")
VIDEO_DIRS = ("videos", "20bn-something-something-v2", ".")
SUFFIX = ".webm"
LAYOUT = (f"{LABELS}, {SPLIT_FILES['train']} and {SPLIT_FILES['validation']} in root or root/labels, and "
          f"<id>.webm in root/videos, root/20bn-something-something-v2 or root")


def strip_template(template: str) -> str:
    """A template as the labels JSON keys it: ``'Putting [something] on [something]'`` -> ``'Putting something on
    something'``."""
    return template.replace("[", "").replace("]", "")


def _load_json(path: Path):
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"'{path}' line {exc.lineno}: not JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"'{path}': not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_labels(path: Path) -> dict[str, int]:
    """The labels JSON as {template: class index}; indices must be 0..K-1, each once."""
    data = _load_json(path)
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"'{path}': expected an object mapping templates to class indices")
    out = {}
    for template, value in data.items():
        try:
            out[template] = int(value)
        except (TypeError, ValueError):
            raise DatasetError(f"'{path}' key {template!r}: class index must be an integer (as a string), "
                               f"got {value!r}") from None
    if sorted(out.values()) != list(range(len(out))):
        raise DatasetError(f"'{path}': class indices must be 0..{len(out) - 1}, each once")
    return out


def read_split(path: Path, labels: dict[str, int], labels_path: Path) -> list[tuple[str, int]]:
    """(video id, class index) per entry of a train/validation JSON. An entry without ``id`` or ``template``, or
    whose template is not in the labels JSON, is a DatasetError naming the file, the entry and the id."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"'{path}': expected a list of {{id, label, template, placeholders}} entries")
    out = []
    for k, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DatasetError(f"'{path}' entry {k}: expected an object, got {type(entry).__name__}")
        for key in ("id", "template"):
            if key not in entry:
                raise DatasetError(f"'{path}' entry {k}: missing key '{key}'")
        template = strip_template(str(entry["template"]))
        if template not in labels:
            raise DatasetError(f"'{path}' entry {k} (id {entry['id']}): template {template!r} is not in "
                               f"'{labels_path}'")
        out.append((str(entry["id"]), labels[template]))
    return out


class SSV2DataModule(VideoDataModule):
    """Something-Something V2 under ``root`` (see the module docstring for the layout).

    T = ``frames`` segments, one frame per segment: a random one in training, the middle one at test [ref: TSN;
    SlowFast's SSv2 loader]; 1 temporal view x ``test_crops`` crops at test (SlowFast: 1 x 3). No horizontal flip.
    A video shorter than T frames is extended by ``short_clip`` (``pad``, ``loop``) or is an ``error``.
    """

    hflip = False  # not configurable: flips change left/right labels

    def __init__(self, root: str, frames: int = 8, **kwargs) -> None:
        super().__init__(root, frames=frames, **kwargs)
        self._labels_path: Path | None = None
        self._labels: dict[str, int] = {}
        self._videos: Path | None = None

    def sampling(self) -> Segments:
        return Segments(self.frames)

    def _find(self, name: str) -> Path:
        for d in JSON_DIRS:
            if (self.root / d / name).is_file():
                return self.root / d / name
        raise DatasetError(f"Something-Something V2: '{name}' not found in '{self.root}' or "
                           f"'{self.root / 'labels'}' (expected {LAYOUT})")

    def check(self) -> None:
        """Finds the JSONs and the video folder and reads the labels JSON (sets ``classes``/``num_classes``)."""
        if not self.root.is_dir():
            raise DatasetError(f"Something-Something V2 not found at '{self.root}': expected {LAYOUT}")
        for name in SPLIT_FILES.values():
            self._find(name)
        if self._videos is None:
            self._videos = next((self.root / d for d in VIDEO_DIRS if (self.root / d).is_dir()
                                 and any(n.endswith(SUFFIX) for n in scan(self.root / d)[1])), None)
            if self._videos is None:
                raise DatasetError(f"Something-Something V2: no <id>.webm videos in "
                                   f"{', '.join(repr(str(self.root / d)) for d in VIDEO_DIRS)} (expected {LAYOUT})")
        if not self.classes:
            self._labels_path = self._find(LABELS)
            self._labels = read_labels(self._labels_path)
            self.classes = sorted(self._labels, key=self._labels.get)
            self.num_classes = len(self.classes)

    def _list(self, split: str) -> tuple[list[str], list[int]]:
        path = self._find(SPLIT_FILES[split])
        entries = read_split(path, self._labels, self._labels_path)
        present = set(scan(self._videos)[1])
        rel = self._videos.relative_to(self.root)
        files, labels, missing = [], [], []
        for vid, y in entries:
            name = vid + SUFFIX
            if name in present:
                files.append(str(rel / name))
                labels.append(y)
            else:
                missing.append(name)
        self._missing(str(path), missing, len(entries), self._videos)
        return files, labels

    def _list_train(self) -> tuple[list[str], list[int]]:
        return self._list("train")

    def _list_test(self) -> tuple[list[str], list[int]]:
        return self._list("validation")
