"""MixPath S4 (METHODS.md §5, supplementary Tab. 1): the reduced NAS-Bench-101 space.

``cells`` (9) stacked cells in 3 stages of equal width, a 2×2 max-pool after the cells in ``pool_after``, all
sharing one cell design (:class:`~nasx.ops.multipath_cell.MultiPathCell`): each of its 4 candidate nodes is off or
one of {1×1 conv, 3×3 conv, 3×3 max-pool}, and at least one is on, so the space has 4^4 − 1 = 255 cells (m = 4).
There is no last conv: the embedding is the last cell's output, pooled.

Genes, in order: ``node0..node3`` (an index into :data:`~nasx.ops.multipath_cell.CELL_OPS`; 0 is off).
"""
from __future__ import annotations

import random
from itertools import product
from typing import Sequence

from torch import nn

from nasx.arch import Arch
from nasx.errors import ArchError, ConfigError
from nasx.ops.multipath import sample_paths
from nasx.ops.multipath_cell import CELL_NODES, CELL_OPS, MultiPathCell
from nasx.spaces.mixpath import MixPathSpace


class MixPathCellSpace(MixPathSpace):
    """S4 at the geometry given by config (``conf/space/mixpath_s4.yaml``): ``widths`` are the 3 stage widths;
    ``network`` takes :class:`MixPathSpace`'s keyword arguments except ``last_channels`` (the last stage width)."""

    stem_activation = nn.ReLU

    def __init__(self, name: str, widths: Sequence[int], cells: int = 9, pool_after: Sequence[int] = (2, 5),
                 **network):
        if len(widths) != 3:
            raise ConfigError(f"space.widths: the cell space takes 3 stage widths, got {list(widths)}")
        per_layer = [w for w in widths for _ in range(cells // 3)]
        self._cells = [c for c in product(range(len(CELL_OPS)), repeat=CELL_NODES) if any(c)]
        super().__init__(name, per_layer, [1] * len(per_layer), pool_after, CELL_NODES,
                         last_channels=per_layer[-1], **network)

    def _genes(self) -> dict[str, int]:
        return {f"node{j}": len(CELL_OPS) for j in range(CELL_NODES)}

    def layer_choices(self, arch: Arch) -> list[tuple[int, ...]]:
        """Per cell: the op of each node (the same for every cell)."""
        return [tuple(arch.choices())] * len(self.widths)

    def describe(self, arch: Arch) -> str:
        return "cell: " + ", ".join(CELL_OPS[o] for o in arch.choices())

    # -- validity: a cell needs an active node -------------------------------------------------------------------
    def validate(self, arch: Arch, where: str = "arch") -> Arch:
        arch = super().validate(arch, where)
        if not any(arch.choices()):
            raise ArchError(f"{where}: genes node0..node3 are all 'off'; a cell needs at least one active node")
        return arch

    def _fix(self, arch: Arch, rng: random.Random) -> Arch:
        """A cell with every node off gets one random node switched on (the only invalid gene combination)."""
        if not any(arch.choices()):
            return arch.replace(**{f"node{rng.randrange(CELL_NODES)}": rng.randrange(1, len(CELL_OPS))})
        return arch

    def fix(self, choices: Sequence[int], rng: random.Random) -> Arch:
        return self._fix(super().fix(choices, rng), rng)

    def sample(self, rng: random.Random) -> Arch:
        return self._fix(super().sample(rng), rng)

    def mutate(self, arch: Arch, rng: random.Random, prob: float) -> Arch:
        return self._fix(super().mutate(arch, rng, prob), rng)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        return self._fix(super().crossover(a, b, rng), rng)

    def train_sample(self, rng: random.Random) -> Arch:
        """The supernet's training distribution [ref: MixPath]: m′ ~ U{1..4} active nodes, each with a uniform op."""
        nodes = sample_paths(rng, CELL_NODES, CELL_NODES)
        return self.arch([rng.randrange(1, len(CELL_OPS)) if j in nodes else 0 for j in range(CELL_NODES)])

    # -- network and cost ----------------------------------------------------------------------------------------
    def supernet_layer(self, cin: int, cout: int, stride: int) -> MultiPathCell:
        return MultiPathCell(cin, cout, self.shadow_bn)

    def last_conv(self) -> nn.Module:
        return nn.Identity()

    def _last_conv_cost(self, size: int) -> tuple[int, int]:
        return 0, 0

    def _layer_costs(self, geometry):
        table = {}
        for ops in self._cells:
            m = p = 0
            for cin, cout, _, size, _ in geometry:
                hw = size ** 2
                for op in ops:
                    if op:
                        m += cin * cout * hw
                        p += cin * cout + 2 * cout
                        if CELL_OPS[op] != "maxpool3x3":
                            k2 = 1 if CELL_OPS[op] == "conv1x1" else 9
                            m += cout * cout * k2 * hw
                            p += cout * cout * k2 + 2 * cout
                m += cout * cout * hw
                p += 2 * cout + cout * cout + cout
            table[ops] = (m / 1e6, p)
        return [(tuple(self.genes), table)]
