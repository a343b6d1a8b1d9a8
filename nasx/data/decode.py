"""Streamed video decoding with PyAV (``av`` on PyPI, which bundles FFmpeg): :class:`VideoFile` counts a file's
frames and decodes only the frames asked for, resized by FFmpeg's swscale on the way; :func:`write_video` makes
small test clips (libx264 / mpeg4 mp4, libvpx / libvpx-vp9 webm; yuv420p needs even frame sizes).

A file is decoded from its first frame until the last frame asked for, so memory is the frames kept, whatever the
video's length. No seeking [nasx]: Kinetics and SSV2 clips are a few seconds long, and decoding from the start keeps
frame indices exact for every container (WebM stores no frame count, and PyAV's seek lands on key frames only).
Every PyAV or FFmpeg failure becomes a one-line :class:`~nasx.errors.DatasetError` naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nasx.errors import DatasetError, one_line


def _av():
    try:
        import av
    except ImportError as exc:  # a dependency of nasx; only a broken install lacks it
        raise DatasetError(f"reading video needs PyAV ('pip install av'): {one_line(exc)}") from None
    return av


def _failure(path, exc: BaseException) -> DatasetError:
    return DatasetError(f"'{path}': cannot decode video ({one_line(exc)})")


def _decode_errors():
    av = _av()
    return (av.FFmpegError, OSError, EOFError, ValueError, IndexError, MemoryError)


class VideoFile:
    """One video file read with PyAV: ``num_frames``, ``height``, ``width`` and :meth:`frames`; a context manager
    (``with VideoFile(path) as video: ...``) that closes the file however the block ends.

    Every PyAV or FFmpeg failure (unreadable, truncated, not a video, no frames) becomes a one-line
    :class:`~nasx.errors.DatasetError` naming the file. ``threads`` is FFmpeg's decoding threads per file (1: the
    parallelism comes from DataLoader workers). An mp4 stores its frame count and stays open for :meth:`frames`; a
    WebM stores none, so its packets are counted (demuxing only, no decoding) and it is opened again to decode.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path, self.threads = Path(path), int(threads)
        self._open_container = None  # (container, stream) left open for frames()
        try:
            container, stream = self._open()
            try:
                ctx = stream.codec_context
                self.height, self.width = int(ctx.height), int(ctx.width)
                n = int(stream.frames or 0)
                if n > 0:
                    self._open_container = (container, stream)
                else:
                    n = sum(1 for p in container.demux(stream) if p.size > 0)
            finally:
                if self._open_container is None:
                    container.close()
        except DatasetError:
            raise
        except _decode_errors() as exc:
            raise _failure(self.path, exc) from None
        if n <= 0 or self.height <= 0 or self.width <= 0:
            self.close()
            raise DatasetError(f"'{self.path}': cannot decode video (no frames)")
        self.num_frames = n

    def _open(self):
        """(container, first video stream); the caller closes the container."""
        container = _av().open(str(self.path), metadata_errors="ignore")
        if not container.streams.video:
            container.close()
            raise DatasetError(f"'{self.path}': cannot decode video (no video stream)")
        stream = container.streams.video[0]
        if self.threads > 1:
            stream.thread_type = "AUTO"
        stream.codec_context.thread_count = self.threads
        return container, stream

    def close(self) -> None:
        if self._open_container is not None:
            self._open_container[0].close()
            self._open_container = None

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self, indices: Sequence[int], height: int | None = None, width: int | None = None) -> np.ndarray:
        """uint8 (len(indices), height, width, 3) RGB: frame ``indices[k]`` (0-based, presentation order; repeats
        allowed) at k, resized by swscale to (height, width) (default: the stored size). Decodes up to the largest
        index and keeps only the frames asked for. Call it once: it closes the file."""
        height, width = height or self.height, width or self.width
        want = sorted(set(int(i) for i in indices))
        if want and (want[0] < 0 or want[-1] >= self.num_frames):
            raise ValueError(f"frame indices must lie in 0..{self.num_frames - 1}, got {want[0]}..{want[-1]}")
        kept: dict[int, np.ndarray] = {}
        try:
            container, stream = self._open_container or self._open()
            self._open_container = None
            try:
                pos = 0  # index of the next wanted frame in `want`
                for i, frame in enumerate(container.decode(stream) if want else ()):
                    if i == want[pos]:
                        kept[i] = frame.to_ndarray(format="rgb24", width=width, height=height)
                        pos += 1
                        if pos == len(want):
                            break  # the rest of the video is never decoded
            finally:
                container.close()
        except DatasetError:
            raise
        except _decode_errors() as exc:
            raise _failure(self.path, exc) from None
        if len(kept) < len(want):
            raise DatasetError(f"'{self.path}': cannot decode video (frame {want[len(kept)]} of the "
                               f"{self.num_frames} the container lists does not decode: truncated or corrupt)")
        out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            out[k] = kept[int(i)]
        return out


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, codec: str | None = None,
                options: dict[str, str] | None = None) -> None:
    """Encodes uint8 RGB frames (N, H, W, 3) (H and W even: yuv420p) into ``path`` for tests and benchmarks.

    ``codec`` defaults by suffix: libx264 for .mp4, libvpx (VP8) for .webm; mpeg4 and libvpx-vp9 work too.
    """
    av, path = _av(), Path(path)
    codec = codec or {".mp4": "libx264", ".webm": "libvpx"}.get(path.suffix.lower(), "libx264")
    n, h, w, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[k]), format="rgb24")))
        container.mux(stream.encode())
