"""Atomic artifact writes: a killed run never leaves a half-written file.

Whole files are written to a temporary file in the same directory, flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX). ``history.jsonl`` is append-only: one flushed line per record (a killed process
loses nothing written), fsynced once per search round; a reader drops a torn last line.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from nasx.errors import ArtifactError

log = logging.getLogger("nasx")


_UMASK = os.umask(0)
os.umask(_UMASK)
_READ_ONLY = [False]


@contextlib.contextmanager
def read_only():
    """Inside, this process writes no artifact (every write function returns at once): the DDP ranks other than 0
    run the search stage with rank 0 and read its files, and rank 0 alone writes them (nasx.distributed)."""
    before = _READ_ONLY[0]
    _READ_ONLY[0] = True
    try:
        yield
    finally:
        _READ_ONLY[0] = before


def _atomic(path: Path, write: Callable[[str], None], suffix: str = "") -> None:
    if _READ_ONLY[0]:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; an artifact gets the permissions open() would give it
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic(path, w)


def _finite(obj):
    """JSON has no inf/NaN: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(_finite(obj), indent=2) + "\n")


def torch_save(obj, path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def save_figure(fig, path: Path) -> None:
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(path).suffix[1:]))


def append_jsonl(path: Path, record: dict, sync: bool = True) -> None:
    """Append one record as a line, flushed (a killed process loses nothing written); ``sync`` also forces it to
    disk (against power loss), which a caller appending many records does once with :func:`fsync`."""
    if _READ_ONLY[0]:
        return
    with open(path, "a") as f:
        f.write(json.dumps(_finite(record)) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())


def fsync(path: Path) -> None:
    """Force a file's written data to disk."""
    if _READ_ONLY[0]:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """All complete records. A torn last line (the run was killed while appending it) is dropped with a warning
    naming its line; any other line that is not a JSON object is an :class:`~nasx.errors.ArtifactError` naming it."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"'{path}' is unreadable ({type(e).__name__}); {_redo_hint(path)}") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif i == len(lines) - 1 and record is None:
            log.warning("%s:%d: torn last line (the run was killed while writing it): dropped, and its candidate "
                        "is evaluated again", path, i + 1)
        else:
            raise ArtifactError(f"'{path}' line {i + 1} is not a JSON record; {_redo_hint(path)}")
    return records


def _redo_hint(path: Path) -> str:
    """What to delete so that the stage that wrote ``path`` writes it again."""
    path = Path(path)
    if path.name == "history.jsonl":
        return f"delete it and '{path.parent / 'state.pt'}' and the search restarts"
    if path.name == "state.pt":
        return "delete it and the search restarts from its first generation (evaluations in history.jsonl are reused)"
    done = path.parent / "done.json"
    if path.name != "done.json" and done.exists():
        return f"delete it and '{done}' and its stage redoes it"
    return "delete it and its stage redoes it"


def check_readable(path: Path) -> None:
    """A run's artifact can be read back: a torch file (``.pt``, ``.ckpt``) is a complete zip archive whose members
    pass their CRC check, a ``.json`` file parses, a ``.jsonl`` file has only JSON records (a torn last line is
    allowed). Raises :class:`~nasx.errors.ArtifactError` naming the file and what to delete."""
    path = Path(path)
    if path.suffix in (".pt", ".ckpt"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ArtifactError(f"'{path}' is unreadable (truncated or not a torch file: {type(e).__name__}); "
                                f"{_redo_hint(path)}") from None
        if bad is not None:
            raise ArtifactError(f"'{path}' is corrupt (member {bad} fails its CRC check); {_redo_hint(path)}")
    elif path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, OSError) as e:
            raise ArtifactError(f"'{path}' is not valid JSON ({type(e).__name__}); {_redo_hint(path)}") from None
    elif path.suffix == ".jsonl":
        read_jsonl(path)


def check_run(run_dir: Path) -> None:
    """Every artifact of a run directory can be read back (:func:`check_readable`), checked before a resumed run
    does anything, so a corrupt file stops it with one line instead of a traceback stages later. Loggers' own
    directories (W&B, TensorBoard, CSV) are not nasx's artifacts and are skipped."""
    run_dir = Path(run_dir)
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).parts
        if not p.is_file() or rel[0].startswith(".") or p.name.startswith(".") or \
                any(part in ("logs", "wandb", "lightning_logs", "tensorboard") for part in rel[:-1]):
            continue
        if p.suffix in (".pt", ".ckpt", ".json", ".jsonl"):
            check_readable(p)


def remove_stale_tmp(root: Path, name: str | None = None) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp*``) that writers killed between writing and renaming left behind:
    every one under ``root``, or with ``name`` only those of ``root/<name>``. Only safe when no other process is
    writing the same files. Returns what was removed."""
    pattern = f".{name}.*.tmp*" if name is not None else ".*.tmp*"
    found = Path(root).glob(pattern) if name is not None else Path(root).rglob(pattern)
    stale = [p for p in found if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(_finite(r)) + "\n" for r in records))
