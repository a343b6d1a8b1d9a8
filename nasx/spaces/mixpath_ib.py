"""MixPath S1 and S2 (METHODS.md §5, supplementary Tab. 1): stacked multi-path inverted bottlenecks.

A *path* is one (expansion t, depthwise kernel k) pair; active paths that share an expansion share its 1×1
expansion conv (:class:`~nasx.ops.inverted_bottleneck.MultiPathIB`). A layer's gene indexes the non-empty path
subsets of size ≤ m, so a layer has exactly Tab. 1's count of choices: S1 with 8 paths (t ∈ {3, 6} × k ∈ {3,5,7,9})
has 8 / 36 / 92 / 162 for m = 1..4; S2 (t fixed, 4 kernels, m = 2) has 10. The reference code lets a layer mix
kernels under *one* expansion (2·(2^4 − 1) = 30 choices at m = 4), which does not match Tab. 1's counts; nasx's
union of both (mixed expansions allowed, each with its own pw and projection) is its reconciliation [nasx].

Genes, in order: ``l0, l1, …`` (one per layer, an index into :attr:`MixPathIBSpace.subsets`).
"""
from __future__ import annotations

import random
from typing import Sequence

from nasx.arch import Arch
from nasx.errors import ConfigError
from nasx.ops.inverted_bottleneck import MultiPathIB
from nasx.ops.multipath import path_subsets, sample_paths
from nasx.spaces.mixpath import MixPathSpace


class MixPathIBSpace(MixPathSpace):
    """S1 / S2 at the geometry given by config (``conf/space/mixpath_s1.yaml``, ``mixpath_s2.yaml``); ``network``
    takes :class:`MixPathSpace`'s keyword arguments (stem, last conv, input, classes, shadow BN, ...)."""

    def __init__(self, name: str, widths: Sequence[int], strides: Sequence[int],
                 kernels: Sequence[int] = (3, 5, 7, 9), expansions: Sequence[int] = (3, 6), max_paths: int = 2,
                 **network):
        self.kernels, self.expansions = tuple(kernels), tuple(expansions)
        self.n_paths = len(self.expansions) * len(self.kernels)
        if not 1 <= int(max_paths) <= self.n_paths:
            raise ConfigError(f"space.max_paths must be in 1..{self.n_paths}, got {max_paths!r}")
        self.subsets = path_subsets(self.n_paths, int(max_paths))
        super().__init__(name, widths, strides, (), max_paths, **network)

    def _genes(self) -> dict[str, int]:
        return {f"l{i}": len(self.subsets) for i in range(len(self.widths))}

    def layer_choices(self, arch: Arch) -> list[tuple[int, ...]]:
        """Per layer: the sorted ids of its active paths (``t_index · len(kernels) + k_index``)."""
        return [self.subsets[i] for i in arch.choices()]

    def describe(self, arch: Arch) -> str:
        nk = len(self.kernels)
        return " · ".join("+".join(f"t{self.expansions[p // nk]}k{self.kernels[p % nk]}" for p in paths)
                          for paths in self.layer_choices(arch))

    def train_sample(self, rng: random.Random) -> Arch:
        """The supernet's training distribution [ref: MixPath]: per layer m′ ~ U{1..m}, then m′ distinct paths."""
        index = {s: i for i, s in enumerate(self.subsets)}
        return self.arch([index[sample_paths(rng, self.n_paths, self.max_paths)] for _ in self.widths])

    def supernet_layer(self, cin: int, cout: int, stride: int) -> MultiPathIB:
        return MultiPathIB(cin, cout, stride, self.expansions, self.kernels, self.max_paths, self.shadow_bn)

    def _layer_costs(self, geometry):
        nk = len(self.kernels)
        units = []
        for i, (cin, cout, _, size, so) in enumerate(geometry):
            table = {}
            for g, paths in enumerate(self.subsets):
                m = p = 0
                for t_idx in sorted({q // nk for q in paths}):
                    mid = cin * self.expansions[t_idx]
                    m += cin * mid * size ** 2 + mid * cout * so ** 2
                    p += cin * mid + 2 * mid + mid * cout
                for q in paths:
                    mid, k = cin * self.expansions[q // nk], self.kernels[q % nk]
                    m += mid * k * k * so ** 2
                    p += mid * k * k + 2 * mid
                table[(g,)] = (m / 1e6, p + 2 * cout)
            units.append(((f"l{i}",), table))
        return units
