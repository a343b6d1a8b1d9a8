"""The reduced NAS-Bench-101 cell as a multi-path layer (MixPath's S4, METHODS.md §5).

The cell's first 4 nodes are candidate paths; each is off or one of :data:`CELL_OPS`' ops, each preceded by a 1×1
conv-BN-ReLU projection [ref]. The output node sums the active nodes, applies the shadow BN by their number, a 1×1
conv and ReLU.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from nasx.ops.multipath import ShadowBN, sum_paths

CELL_OPS = ("off", "conv1x1", "conv3x3", "maxpool3x3")  # a node's op index; 0 is an inactive node
CELL_NODES = 4


def _node(cin: int, cout: int, op: str) -> nn.Module:
    pre = [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if op == "maxpool3x3":
        return nn.Sequential(*pre, nn.MaxPool2d(3, 1, 1))
    k = 1 if op == "conv1x1" else 3
    return nn.Sequential(*pre, nn.Conv2d(cout, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class StaticCell(nn.Module):
    """A chosen cell: relu(out(BN(Σ active nodes(x))))."""

    def __init__(self, nodes: Sequence[nn.Module], bn: nn.Module, out: nn.Module):
        super().__init__()
        self.nodes, self.bn, self.out = nn.ModuleList(nodes), bn, out

    def forward(self, x):
        return torch.relu(self.out(self.bn(sum_paths([n(x) for n in self.nodes]))))


class MultiPathCell(nn.Module):
    """Supernet cell: 4 candidate nodes × 3 ops, shadow BN over the number of active nodes, 1×1 output conv."""

    def __init__(self, cin: int, cout: int, shadow_bn: bool):
        super().__init__()
        self.nodes = nn.ModuleList(nn.ModuleList(_node(cin, cout, op) for op in CELL_OPS[1:])
                                   for _ in range(CELL_NODES))
        self.sbn = ShadowBN(cout, CELL_NODES, shadow_bn)
        self.out = nn.Conv2d(cout, cout, 1)

    def _active(self, ops: tuple[int, ...]) -> list[nn.Module]:
        return [self.nodes[j][op - 1] for j, op in enumerate(ops) if op]

    def forward(self, x, ops: tuple[int, ...]):
        """``ops``: per node, its index into :data:`CELL_OPS` (at least one non-zero)."""
        active = self._active(ops)
        return torch.relu(self.out(self.sbn(sum_paths([n(x) for n in active]), len(active))))

    def extract(self, ops: tuple[int, ...]) -> StaticCell:
        active = self._active(ops)
        return StaticCell(copy.deepcopy(active), copy.deepcopy(self.sbn.pick(len(active))), copy.deepcopy(self.out))
