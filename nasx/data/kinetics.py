"""Kinetics-400 / 600 read from the annotation CSVs and the clip folders, decoded with PyAV.

Layout (``root``): ``annotations/{train,val}.csv`` with the header ``label,youtube_id,time_start,time_end,split``
(``is_cc`` may follow; labels with spaces are quoted), and clips ``videos/<split>/<label>/<youtube_id>_<start:06d>_
<end:06d>.mp4``. The label folder may spell spaces as underscores. A clip is found by its expected name first, then
[nasx] by its YouTube id, the first 11 characters of a file stem in the label folder (ids may hold ``_`` and ``-``),
so other zero paddings or containers (``.mkv``, ``.webm``) are accepted too. Listed clips without a file are skipped
with a warning (``missing=error`` makes it an error); YouTube take-downs make some always missing.

Classes are the sorted labels of ``train.csv``. nasx's "test" split is the official validation set (``val.csv``,
``videos/val``), reported with several temporal clips x spatial crops; "val" is carved from train for the search.
``test.csv`` is not read (Kinetics-600 ships it without labels).
"""
from __future__ import annotations

import csv
from pathlib import Path

from nasx.data.video import StridedClip, VideoDataModule, scan
from nasx.errors import ConfigError, DatasetError

COLUMNS = ("label", "youtube_id", "time_start", "time_end")
ID_LENGTH = 11  # YouTube ids are 11 characters
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")  # accepted when a clip is found by its id [nasx]
LAYOUT = ("annotations/{train,val}.csv (label,youtube_id,time_start,time_end,split) and "
          "videos/<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4")


def clip_name(youtube_id: str, start: int, end: int, suffix: str = ".mp4") -> str:
    """The file name Kinetics' download scripts give a clip: ``<id>_<start:06d>_<end:06d>.mp4``."""
    return f"{youtube_id}_{start:06d}_{end:06d}{suffix}"


def _folder_key(name: str) -> str:
    return name.replace("_", " ").strip()


def read_annotations(path: Path) -> list[tuple[str, str, int, int, int]]:
    """(label, youtube_id, time_start, time_end, line number) per row of a Kinetics CSV.

    Times are whole seconds (written as ``14`` or ``14.0``). A missing column, a short row, an empty id or a time
    that is not a whole number is a DatasetError naming the file and line.
    """
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [c.strip() for c in next(reader, [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DatasetError(f"'{path}' line 1: header lacks '{missing[0]}' (expected "
                                   f"{','.join(COLUMNS)},split[,is_cc]; got {','.join(header)!r})")
            col = {c: header.index(c) for c in COLUMNS}
            for line, row in enumerate(reader, 2):
                if not row or not any(v.strip() for v in row):
                    continue
                if len(row) < len(header):
                    raise DatasetError(f"'{path}' line {line}: {len(row)} fields, the header has {len(header)}")
                label, yid = row[col["label"]].strip(), row[col["youtube_id"]].strip()
                if not label or not yid:
                    raise DatasetError(f"'{path}' line {line}: empty label or youtube_id")
                times = []
                for key in ("time_start", "time_end"):
                    raw = row[col[key]].strip()
                    try:
                        t = float(raw)
                    except ValueError:
                        t = -1.0
                    if not (t.is_integer() and t >= 0):
                        raise DatasetError(f"'{path}' line {line}: {key} must be whole seconds >= 0, got {raw!r}")
                    times.append(int(t))
                rows.append((label, yid, times[0], times[1], line))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"'{path}': not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return rows


class KineticsDataModule(VideoDataModule):
    """Kinetics-400 or -600 under ``root`` (see the module docstring for the layout).

    Training takes T = ``frames`` frames ``stride`` apart from a random start [ref: SlowFast, T = 8, stride 8],
    a random short side in ``jitter`` x ``image_size``, a random crop and a coin-flip mirror (``hflip``). Testing
    averages ``test_clips`` temporal clips x ``test_crops`` crops (SlowFast: 10 x 3) at short side ``image_size``.
    A video shorter than the clip's span, (T-1)·stride + 1 frames, is extended by ``short_clip``: ``pad`` repeats
    its last frame [ref: SlowFast clamps indices], ``loop`` starts it again, ``error`` is a one-line error naming it.
    """

    def __init__(self, root: str, frames: int = 8, stride: int = 8, test_clips: int = 10, hflip: bool = True,
                 **kwargs) -> None:
        super().__init__(root, frames=frames, **kwargs)
        for key, value in (("stride", stride), ("test_clips", test_clips)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key} must be an integer >= 1, got {value!r}")
        self.stride, self.test_clips, self.hflip = stride, test_clips, bool(hflip)
        self._folders: dict[str, dict[str, str]] = {}  # split -> label key -> folder name

    def sampling(self) -> StridedClip:
        return StridedClip(self.frames, self.stride, self.test_clips)

    def _csv(self, split: str) -> Path:
        return self.root / "annotations" / f"{split}.csv"

    def check(self) -> None:
        """Checks that the CSVs and video folders exist and sets ``classes`` from ``train.csv``."""
        if not self.root.is_dir():
            raise DatasetError(f"Kinetics not found at '{self.root}': expected {LAYOUT}")
        for split in ("train", "val"):
            if not self._csv(split).is_file():
                raise DatasetError(f"Kinetics annotations missing: '{self._csv(split)}' (expected {LAYOUT})")
            if not (self.root / "videos" / split).is_dir():
                raise DatasetError(f"Kinetics videos missing: '{self.root / 'videos' / split}' (expected {LAYOUT})")
        if not self.classes:
            labels = sorted({r[0] for r in read_annotations(self._csv("train"))})
            if not labels:
                raise DatasetError(f"'{self._csv('train')}' lists no clips")
            self.classes, self.num_classes = labels, len(labels)

    def _list(self, split: str) -> tuple[list[str], list[int]]:
        """(clip file relative to root, class index) for each row of ``annotations/<split>.csv`` with a video."""
        path, videos = self._csv(split), self.root / "videos" / split
        index = {c: y for y, c in enumerate(self.classes)}
        folders = {_folder_key(d): d for d in scan(videos)[0]}
        by_folder: dict[str, tuple[set[str], dict[str, str]]] = {}  # folder -> (file names, id -> file name)
        files, labels, missing = [], [], []
        rows = read_annotations(path)
        for label, yid, start, end, line in rows:
            if label not in index:
                raise DatasetError(f"'{path}' line {line}: label '{label}' is not a class of '{self._csv('train')}'")
            expected = clip_name(yid, start, end)
            folder = folders.get(_folder_key(label))
            if folder is None:
                missing.append(f"{label}/{expected}")
                continue
            if folder not in by_folder:
                names = scan(videos / folder)[1]
                videos_in = [n for n in names if n.lower().endswith(VIDEO_SUFFIXES)]
                by_folder[folder] = (set(names), {n[:ID_LENGTH]: n for n in reversed(videos_in)})
            names, by_id = by_folder[folder]
            name = expected if expected in names else by_id.get(yid)
            if name is None:
                missing.append(f"{folder}/{expected}")
                continue
            files.append(f"videos/{split}/{folder}/{name}")
            labels.append(index[label])
        self._missing(str(path), missing, len(rows), videos)
        return files, labels

    def _list_train(self) -> tuple[list[str], list[int]]:
        return self._list("train")

    def _list_test(self) -> tuple[list[str], list[int]]:
        return self._list("val")
