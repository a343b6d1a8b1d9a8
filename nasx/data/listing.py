"""Helpers for data sets listed from files on disk (image folders, video lists)."""
from __future__ import annotations


def first_per_class(files: list[str], labels: list[int], max_per_class: int | None) -> tuple[list[str], list[int]]:
    """The first ``max_per_class`` entries of each class, in the given order (all of them for ``None``): quick runs
    on a real data set."""
    if max_per_class is None:
        return files, labels
    counts: dict[int, int] = {}
    keep = []
    for i, y in enumerate(labels):
        counts[y] = counts.get(y, 0) + 1
        if counts[y] <= max_per_class:
            keep.append(i)
    return [files[i] for i in keep], [labels[i] for i in keep]
