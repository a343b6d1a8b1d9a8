"""Multi-path weight sharing with shadow batch norm (MixPath, METHODS.md §5).

A multi-path layer holds n candidate paths and activates up to m of them; the active paths' outputs are summed and
normalised by a *shadow* BN chosen by the number of active paths [ref: MixPath]. The sum of k paths has about k
times the mean and k² times the variance of one path (supplementary Lemma 3.1), so one BN per count keeps each
count's statistics apart. ``shadow=False`` uses one BN for every count: the ablation.
"""
from __future__ import annotations

import random
from itertools import combinations
from typing import Sequence

from torch import nn


def path_subsets(n_paths: int, max_paths: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``range(n_paths)`` with at most ``max_paths`` members, by size then lexically.

    The index into this list is a layer's gene, so the gene has exactly the seed's per-layer count of choices
    (e.g. 8 paths with m = 2: 8 + 28 = 36).
    """
    return [s for k in range(1, max_paths + 1) for s in combinations(range(n_paths), k)]


def sample_paths(rng: random.Random, n_paths: int, max_paths: int) -> tuple[int, ...]:
    """MixPath's training sampler [ref]: m′ uniform on 1..m, then m′ distinct paths uniformly; sorted."""
    k = rng.randint(1, max_paths)
    return tuple(sorted(rng.sample(range(n_paths), k)))


class ShadowBN(nn.Module):
    """One ``BatchNorm2d`` per number of active paths (``shadow=True``) or a single shared one."""

    def __init__(self, channels: int, max_paths: int, shadow: bool = True):
        super().__init__()
        self.shadow = shadow
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(max_paths if shadow else 1))

    def pick(self, n_active: int) -> nn.BatchNorm2d:
        """The BN that follows a sum of ``n_active`` paths."""
        if n_active < 1 or (self.shadow and n_active > len(self.bns)):
            raise ValueError(f"{n_active} active paths; this layer allows 1..{len(self.bns)}")
        return self.bns[n_active - 1] if self.shadow else self.bns[0]

    def forward(self, x, n_active: int):
        return self.pick(n_active)(x)


def sum_paths(outputs: Sequence):
    """Sum in a fixed order, so that a static copy of the same paths computes bit-identical outputs."""
    total = outputs[0]
    for o in outputs[1:]:
        total = total + o
    return total
