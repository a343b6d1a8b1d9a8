"""MixPath S3 (METHODS.md §5, supplementary Tab. 1): mixed-kernel mobile inverted bottlenecks.

Each layer's depthwise channels are split into ``groups`` groups (:func:`~nasx.ops.inverted_bottleneck.mixconv_splits`),
each picking a kernel from ``kernels``: with 4 groups and {3,5,7,9}, 4 genes and 256 choices per layer. One path is
active (m = 1), so the training distribution is the uniform :meth:`~nasx.arch.SearchSpace.sample`.

Genes, in order: ``l0_g0, l0_g1, …, l1_g0, …`` (a kernel index per layer and group).
"""
from __future__ import annotations

from itertools import product
from typing import Sequence

from nasx.arch import Arch
from nasx.errors import ConfigError
from nasx.ops.inverted_bottleneck import MixConvIB, mixconv_splits
from nasx.spaces.mixpath import MixPathSpace


class MixPathMixConvSpace(MixPathSpace):
    """S3 at the geometry given by config (``conf/space/mixpath_s3.yaml``); ``network`` takes
    :class:`MixPathSpace`'s keyword arguments (stem, last conv, input, classes, shadow BN, ...)."""

    def __init__(self, name: str, widths: Sequence[int], strides: Sequence[int],
                 kernels: Sequence[int] = (3, 5, 7, 9), expansions: Sequence[int] = (6,), groups: int = 4,
                 max_paths: int = 1, **network):
        self.kernels, self.expansions, self.n_groups = tuple(kernels), tuple(expansions), int(groups)
        if len(self.expansions) != 1:
            raise ConfigError(f"space.expansions: the mixed-kernel space has one expansion, got "
                              f"{list(self.expansions)}")
        if int(max_paths) != 1:
            raise ConfigError(f"space.max_paths: the mixed-kernel space activates one path per layer (m = 1), "
                              f"got {max_paths!r}")
        super().__init__(name, widths, strides, (), 1, **network)

    def _genes(self) -> dict[str, int]:
        return {f"l{i}_g{g}": len(self.kernels) for i in range(len(self.widths)) for g in range(self.n_groups)}

    def layer_choices(self, arch: Arch) -> list[tuple[int, ...]]:
        """Per layer: the kernel index of each channel group."""
        c, g = arch.choices(), self.n_groups
        return [tuple(c[i * g:(i + 1) * g]) for i in range(len(self.widths))]

    def describe(self, arch: Arch) -> str:
        return " · ".join("/".join(str(self.kernels[k]) for k in ks) for ks in self.layer_choices(arch))

    def supernet_layer(self, cin: int, cout: int, stride: int) -> MixConvIB:
        return MixConvIB(cin, cout, stride, self.expansions[0], self.kernels, self.n_groups, self.shadow_bn)

    def _layer_costs(self, geometry):
        units = []
        for i, (cin, cout, _, size, so) in enumerate(geometry):
            mid = cin * self.expansions[0]
            base_m = cin * mid * size ** 2 + mid * cout * so ** 2
            base_p = cin * mid + 2 * mid + 2 * mid + mid * cout + 2 * cout
            splits = mixconv_splits(mid, self.n_groups)
            table = {}
            for ks in product(range(len(self.kernels)), repeat=self.n_groups):
                k2 = sum(c * self.kernels[k] ** 2 for c, k in zip(splits, ks))
                table[ks] = ((base_m + k2 * so ** 2) / 1e6, base_p + k2)
            units.append((tuple(f"l{i}_g{g}" for g in range(self.n_groups)), table))
        return units
