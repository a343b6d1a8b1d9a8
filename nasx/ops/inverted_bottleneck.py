"""Inverted bottlenecks whose depthwise stage has several candidate convs (MixPath's S1–S3, METHODS.md §5).

A supernet layer is told at every call which of its paths are active; ``extract`` copies those paths into a static
block of plain modules that, in eval mode, computes bit-identically what the layer computes for them.

* :class:`MultiPathIB` (S1, S2): a *path* is one (expansion t, depthwise kernel k) pair, numbered
  ``t_index · len(kernels) + k_index``. Active paths that share an expansion share its 1×1 expansion conv
  [ref: MixPath S1 code]: the block computes Σ_t proj_t(Σ_k dw_{t,k}(pw_t(x))), then the shadow BN by the number of
  active paths, then the residual.
* :class:`MixConvIB` (S3): the depthwise channels are split into groups (:func:`mixconv_splits`), each running one
  of its candidate kernels; one path is active (m = 1).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from nasx.ops.multipath import ShadowBN, sum_paths


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type = nn.ReLU6) -> nn.Sequential:
    """k×k conv (same padding, no bias) → BN → activation."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act(inplace=True))


# -- multi-path depthwise convs (S1, S2) ----------------------------------------------------------------------------
class StaticIB(nn.Module):
    """A chosen multi-path inverted bottleneck: Σ_t proj_t(Σ_k dw_{t,k}(pw_t(x))) → BN (→ + x)."""

    def __init__(self, branches: Sequence[tuple[nn.Module, Sequence[nn.Module], nn.Module]], bn: nn.Module,
                 residual: bool):
        super().__init__()
        self.pw = nn.ModuleList(b[0] for b in branches)
        self.dw = nn.ModuleList(nn.ModuleList(b[1]) for b in branches)
        self.proj = nn.ModuleList(b[2] for b in branches)
        self.bn, self.residual = bn, residual

    def forward(self, x):
        out = sum_paths([proj(sum_paths([dw(h) for dw in dws])) for pw, dws, proj in zip(self.pw, self.dw, self.proj)
                         for h in [pw(x)]])
        out = self.bn(out)
        return out + x if self.residual else out


class MultiPathIB(nn.Module):
    """Supernet layer: every (expansion, kernel) path, and a shadow BN over path counts 1..``max_paths``."""

    def __init__(self, cin: int, cout: int, stride: int, expansions: Sequence[int], kernels: Sequence[int],
                 max_paths: int, shadow_bn: bool):
        super().__init__()
        self.n_kernels = len(kernels)
        self.pw = nn.ModuleList(conv_bn_act(cin, cin * t, 1) for t in expansions)
        self.dw = nn.ModuleList(nn.ModuleList(conv_bn_act(cin * t, cin * t, k, stride, groups=cin * t)
                                              for k in kernels) for t in expansions)
        self.proj = nn.ModuleList(nn.Conv2d(cin * t, cout, 1, bias=False) for t in expansions)
        self.sbn = ShadowBN(cout, max_paths, shadow_bn)
        self.residual = stride == 1 and cin == cout

    def _branches(self, paths: tuple[int, ...]):
        by_t: dict[int, list[int]] = {}
        for p in paths:  # paths are sorted, so expansions and kernels come in ascending order
            by_t.setdefault(p // self.n_kernels, []).append(p % self.n_kernels)
        return [(self.pw[t], [self.dw[t][k] for k in ks], self.proj[t]) for t, ks in by_t.items()]

    def forward(self, x, paths: tuple[int, ...]):
        """``paths``: the sorted ids of the active paths."""
        out = sum_paths([proj(sum_paths([dw(h) for dw in dws])) for pw, dws, proj in self._branches(paths)
                         for h in [pw(x)]])
        out = self.sbn(out, len(paths))
        return out + x if self.residual else out

    def extract(self, paths: tuple[int, ...]) -> StaticIB:
        return StaticIB(copy.deepcopy(self._branches(paths)), copy.deepcopy(self.sbn.pick(len(paths))),
                        self.residual)


# -- mixed-kernel depthwise convs (S3) ------------------------------------------------------------------------------
def mixconv_splits(channels: int, n: int) -> list[int]:
    """Split ``channels`` into ``n`` near-equal groups, larger ones first (MixConv's split)."""
    return [channels // n + (1 if i < channels % n else 0) for i in range(n)]


class StaticMixConvIB(nn.Module):
    """A chosen mixed-kernel inverted bottleneck: pw → one depthwise conv per channel group → BN → proj → BN."""

    def __init__(self, pw: nn.Module, dws: Sequence[nn.Module], dw_bn: nn.Module, proj: nn.Module, bn: nn.Module,
                 splits: list[int], residual: bool):
        super().__init__()
        self.pw, self.dws, self.dw_bn, self.proj, self.bn = pw, nn.ModuleList(dws), dw_bn, proj, bn
        self.splits, self.residual = splits, residual

    def forward(self, x):
        h = self.pw(x)
        h = torch.cat([dw(part) for dw, part in zip(self.dws, h.split(self.splits, 1))], 1)
        out = self.bn(self.proj(self.dw_bn(h)))
        return out + x if self.residual else out


class MixConvIB(nn.Module):
    """Supernet layer: each depthwise channel group holds one conv per candidate kernel; m = 1."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, kernels: Sequence[int], n_groups: int,
                 shadow_bn: bool):
        super().__init__()
        mid = cin * expansion
        self.splits = mixconv_splits(mid, n_groups)
        self.pw = conv_bn_act(cin, mid, 1)
        self.dws = nn.ModuleList(nn.ModuleList(nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
                                               for k in kernels) for c in self.splits)
        self.dw_bn = nn.Sequential(nn.BatchNorm2d(mid), nn.ReLU6(inplace=True))
        self.proj = nn.Conv2d(mid, cout, 1, bias=False)
        self.sbn = ShadowBN(cout, 1, shadow_bn)
        self.residual = stride == 1 and cin == cout

    def forward(self, x, kernels: tuple[int, ...]):
        """``kernels``: per channel group, the index of its active kernel."""
        h = self.pw(x)
        h = torch.cat([self.dws[g][k](part) for g, (k, part) in enumerate(zip(kernels, h.split(self.splits, 1)))], 1)
        out = self.sbn(self.proj(self.dw_bn(h)), 1)
        return out + x if self.residual else out

    def extract(self, kernels: tuple[int, ...]) -> StaticMixConvIB:
        dws = [copy.deepcopy(self.dws[g][k]) for g, k in enumerate(kernels)]
        return StaticMixConvIB(copy.deepcopy(self.pw), dws, copy.deepcopy(self.dw_bn), copy.deepcopy(self.proj),
                               copy.deepcopy(self.sbn.pick(1)), self.splits, self.residual)
