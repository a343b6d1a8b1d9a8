"""MixPath's multi-path spaces S1–S4 (METHODS.md §5, supplementary Tab. 1) with shadow batch norm.

Every family has a space (genes, exact cost), a supernet (``forward(x, arch)``, ``sample`` of the training
distribution) and ``extract(arch)`` → a static model of plain modules that, in eval mode, computes exactly what the
supernet computes for that arch.

* **S1 / S2** (:class:`MixPathSpace` with ``family: ib``): stacked inverted bottlenecks. A *path* is one
  (expansion t, depthwise kernel k) pair. Active paths that share an expansion share its 1×1 expansion conv
  [ref: MixPath S1 code]: the block computes Σ_t proj_t(Σ_k dw_{t,k}(pw_t(x))), then the shadow BN by the number
  of active paths, then the residual. A layer's gene indexes the non-empty path subsets of size ≤ m, so a layer has
  exactly Tab. 1's count of choices: S1 with 8 paths (t ∈ {3, 6} × k ∈ {3,5,7,9}) has 8 / 36 / 92 / 162 for
  m = 1..4; S2 (t fixed, 4 kernels, m = 2) has 10. The reference code lets a layer mix kernels under *one*
  expansion (2·(2^4 − 1) = 30 choices at m = 4), which does not match Tab. 1's counts; nasx's union of both
  (mixed expansions allowed, each with its own pw and projection) is its reconciliation [nasx].
* **S3** (``family: mixconv``): stacked mobile inverted bottlenecks whose depthwise channels are split into 4
  groups, each group picking a kernel from {3,5,7,9}: 4 genes per layer, 256 choices per layer, m = 1.
* **S4** (``family: cell``, the reduced NAS-Bench-101 space): 9 stacked cells sharing one cell design. The cell's
  first 4 nodes are candidate paths; each is off or one of {1×1 conv, 3×3 conv, 3×3 max-pool}, each preceded by a
  1×1 conv-BN-ReLU projection [ref]; at least one is on, so the space has 4^4 − 1 = 255 cells. The output node sums
  the active nodes, applies the shadow BN, a 1×1 conv and ReLU.

``zero_init_residual`` [nasx, off by default; the reference initialises γ = 1] starts every residual block as the
identity by zeroing the γ of its shadow BNs (Goyal et al., 2017). The CPU presets turn it on: on the embedded digits the
12-layer supernet otherwise trains too slowly to rank anything (README, "MixPath").

MFLOPs are multiply-accumulates of convolutions and the classifier, in millions (BN, ReLU, pooling and additions
are not counted). Params count the extracted model's trainable parameters.
"""
from __future__ import annotations

import copy
import random
from itertools import product
from typing import Sequence

import torch
from torch import nn

from nasx.arch import AdditiveSearchSpace, Arch, Cost
from nasx.errors import ArchError, ConfigError
from nasx.ops.multipath import ShadowBN, path_subsets, sample_paths, sum_paths

FAMILIES = ("ib", "mixconv", "cell")
CELL_OPS = ("off", "conv1x1", "conv3x3", "maxpool3x3")


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type = nn.ReLU6):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act(inplace=True))


# -- inverted bottleneck with multi-path depthwise convs (S1, S2) ---------------------------------------------------
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
    """Supernet layer: every (expansion, kernel) path, and a shadow BN over path counts."""

    def __init__(self, cin: int, cout: int, stride: int, expansions: Sequence[int], kernels: Sequence[int],
                 max_paths: int, shadow_bn: bool):
        super().__init__()
        self.n_kernels = len(kernels)
        self.pw = nn.ModuleList(_conv_bn_act(cin, cin * t, 1) for t in expansions)
        self.dw = nn.ModuleList(nn.ModuleList(_conv_bn_act(cin * t, cin * t, k, stride, groups=cin * t)
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
        out = sum_paths([proj(sum_paths([dw(h) for dw in dws])) for pw, dws, proj in self._branches(paths)
                         for h in [pw(x)]])
        out = self.sbn(out, len(paths))
        return out + x if self.residual else out

    def extract(self, paths: tuple[int, ...]) -> StaticIB:
        return StaticIB(copy.deepcopy(self._branches(paths)), copy.deepcopy(self.sbn.pick(len(paths))),
                        self.residual)


# -- mixed-kernel inverted bottleneck (S3) --------------------------------------------------------------------------
def _groups(channels: int, n: int) -> list[int]:
    """Split ``channels`` into ``n`` near-equal groups, larger ones first (MixConv's split)."""
    return [channels // n + (1 if i < channels % n else 0) for i in range(n)]


class StaticMixConvIB(nn.Module):
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
        self.splits = _groups(mid, n_groups)
        self.pw = _conv_bn_act(cin, mid, 1)
        self.dws = nn.ModuleList(nn.ModuleList(nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
                                               for k in kernels) for c in self.splits)
        self.dw_bn = nn.Sequential(nn.BatchNorm2d(mid), nn.ReLU6(inplace=True))
        self.proj = nn.Conv2d(mid, cout, 1, bias=False)
        self.sbn = ShadowBN(cout, 1, shadow_bn)
        self.residual = stride == 1 and cin == cout

    def forward(self, x, kernels: tuple[int, ...]):
        h = self.pw(x)
        h = torch.cat([self.dws[g][k](part) for g, (k, part) in enumerate(zip(kernels, h.split(self.splits, 1)))], 1)
        out = self.sbn(self.proj(self.dw_bn(h)), 1)
        return out + x if self.residual else out

    def extract(self, kernels: tuple[int, ...]) -> StaticMixConvIB:
        dws = [copy.deepcopy(self.dws[g][k]) for g, k in enumerate(kernels)]
        return StaticMixConvIB(copy.deepcopy(self.pw), dws, copy.deepcopy(self.dw_bn), copy.deepcopy(self.proj),
                               copy.deepcopy(self.sbn.pick(1)), self.splits, self.residual)


# -- reduced NAS-Bench-101 cell (S4) --------------------------------------------------------------------------------
def _cell_node(cin: int, cout: int, op: str) -> nn.Module:
    pre = [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if op == "maxpool3x3":
        return nn.Sequential(*pre, nn.MaxPool2d(3, 1, 1))
    k = 1 if op == "conv1x1" else 3
    return nn.Sequential(*pre, nn.Conv2d(cout, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class StaticCell(nn.Module):
    def __init__(self, nodes: Sequence[nn.Module], bn: nn.Module, out: nn.Module):
        super().__init__()
        self.nodes, self.bn, self.out = nn.ModuleList(nodes), bn, out

    def forward(self, x):
        return torch.relu(self.out(self.bn(sum_paths([n(x) for n in self.nodes]))))


class MultiPathCell(nn.Module):
    """Supernet cell: 4 candidate nodes × 3 ops, shadow BN over the number of active nodes, 1×1 output conv."""

    def __init__(self, cin: int, cout: int, shadow_bn: bool):
        super().__init__()
        self.nodes = nn.ModuleList(nn.ModuleList(_cell_node(cin, cout, op) for op in CELL_OPS[1:]) for _ in range(4))
        self.sbn = ShadowBN(cout, 4, shadow_bn)
        self.out = nn.Conv2d(cout, cout, 1)

    def _active(self, ops: tuple[int, ...]) -> list[nn.Module]:
        return [self.nodes[j][op - 1] for j, op in enumerate(ops) if op]

    def forward(self, x, ops: tuple[int, ...]):
        active = self._active(ops)
        return torch.relu(self.out(self.sbn(sum_paths([n(x) for n in active]), len(active))))

    def extract(self, ops: tuple[int, ...]) -> StaticCell:
        active = self._active(ops)
        return StaticCell(copy.deepcopy(active), copy.deepcopy(self.sbn.pick(len(active))), copy.deepcopy(self.out))


# -- networks -------------------------------------------------------------------------------------------------------
class MixPathNet(nn.Module):
    """A static network: stem, fixed layers, head (1×1 conv for ib/mixconv), global pooling, classifier."""

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], head: nn.Module, classifier: nn.Module,
                 pool_after: Sequence[int] = ()):
        super().__init__()
        self.stem, self.layers, self.head, self.classifier = stem, nn.ModuleList(layers), head, classifier
        self.pool_after = tuple(pool_after)

    def forward_features(self, x):
        x = self.stem(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.pool_after:
                x = nn.functional.max_pool2d(x, 2)
        return self.head(x).mean((2, 3))

    def forward(self, x):
        return self.classifier(self.forward_features(x))


class MixPathSpace(AdditiveSearchSpace):
    """One of S1–S4 (``family``), at the geometry given by config (``conf/space/mixpath_*.yaml``)."""

    def __init__(self, name: str, family: str, widths: Sequence[int], strides: Sequence[int] = (),
                 kernels: Sequence[int] = (3, 5, 7, 9), expansions: Sequence[int] = (3, 6), max_paths: int = 2,
                 groups: int = 4, stem_channels: int = 32, stem_stride: int = 1, last_channels: int = 1280,
                 shadow_bn: bool = True, input_size: int = 32, in_channels: int = 3, num_classes: int = 10,
                 cells: int = 9, pool_after: Sequence[int] = (2, 5), dropout: float = 0.0,
                 zero_init_residual: bool = False):
        if family not in FAMILIES:
            raise ConfigError(f"space.family must be one of {', '.join(FAMILIES)}, got '{family}'")
        self.name, self.family = name, family
        self.kernels, self.expansions = tuple(kernels), tuple(expansions)
        self.max_paths, self.n_groups, self.shadow_bn = int(max_paths), int(groups), bool(shadow_bn)
        self.stem_channels, self.stem_stride, self.last_channels = stem_channels, stem_stride, last_channels
        self.input_size, self.in_channels, self.num_classes = input_size, in_channels, num_classes
        self.dropout, self.zero_init_residual = dropout, bool(zero_init_residual)
        if family == "cell":
            if len(widths) != 3:
                raise ConfigError(f"space.widths: the cell family takes 3 stage widths, got {list(widths)}")
            per = cells // 3
            self.widths = [w for w in widths for _ in range(per)]
            self.strides = [1] * len(self.widths)
            self.pool_after = tuple(p for p in pool_after)
            self.max_paths = 4
            self.genes = {f"node{j}": len(CELL_OPS) for j in range(4)}
            self._cells = [c for c in product(range(len(CELL_OPS)), repeat=4) if any(c)]
        else:
            if len(strides) != len(widths):
                raise ConfigError(f"space.strides has {len(strides)} entries, space.widths {len(widths)}")
            self.widths, self.strides, self.pool_after = list(widths), list(strides), ()
            if family == "ib":
                self.n_paths = len(self.expansions) * len(self.kernels)
                if not 1 <= self.max_paths <= self.n_paths:
                    raise ConfigError(f"space.max_paths must be in 1..{self.n_paths}, got {max_paths!r}")
                self.subsets = path_subsets(self.n_paths, self.max_paths)
                self.genes = {f"l{i}": len(self.subsets) for i in range(len(self.widths))}
            else:
                if len(self.expansions) != 1:
                    raise ConfigError(f"space.expansions: the mixconv family has one expansion, got "
                                      f"{list(self.expansions)}")
                self.max_paths = 1
                self.genes = {f"l{i}_g{g}": len(self.kernels) for i in range(len(self.widths))
                              for g in range(self.n_groups)}
        self._build_cost_tables()

    # -- genes -> per-layer choices ------------------------------------------------------------------------------
    def layer_choices(self, arch: Arch) -> list[tuple[int, ...]]:
        """Per layer: the active path ids (ib), the kernel index per group (mixconv) or the node ops (cell)."""
        c = arch.choices()
        if self.family == "ib":
            return [self.subsets[i] for i in c]
        if self.family == "mixconv":
            g = self.n_groups
            return [tuple(c[i * g:(i + 1) * g]) for i in range(len(self.widths))]
        return [tuple(c)] * len(self.widths)

    def describe(self, arch: Arch) -> str:
        if self.family == "ib":
            nk = len(self.kernels)
            return " · ".join("+".join(f"t{self.expansions[p // nk]}k{self.kernels[p % nk]}" for p in paths)
                              for paths in self.layer_choices(arch))
        if self.family == "mixconv":
            return " · ".join("/".join(str(self.kernels[k]) for k in ks) for ks in self.layer_choices(arch))
        return "cell: " + ", ".join(CELL_OPS[o] for o in arch.choices())

    # -- validity (the cell space forbids all nodes off) ---------------------------------------------------------
    def validate(self, arch: Arch, where: str = "arch") -> Arch:
        arch = super().validate(arch, where)
        if self.family == "cell" and not any(arch.choices()):
            raise ArchError(f"{where}: genes node0..node3 are all 'off'; a cell needs at least one active node")
        return arch

    def _fix(self, arch: Arch, rng: random.Random) -> Arch:
        """A cell with every node off gets one random node switched on (the only invalid gene combination)."""
        if self.family == "cell" and not any(arch.choices()):
            return arch.replace(**{f"node{rng.randrange(4)}": rng.randrange(1, len(CELL_OPS))})
        return arch

    def fix(self, choices: Sequence[int], rng: random.Random) -> Arch:
        return self._fix(Arch(self.name, tuple(zip(self.genes, (int(c) for c in choices)))), rng)

    def sample(self, rng: random.Random) -> Arch:
        return self._fix(super().sample(rng), rng)

    def mutate(self, arch: Arch, rng: random.Random, prob: float) -> Arch:
        return self._fix(super().mutate(arch, rng, prob), rng)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        return self._fix(super().crossover(a, b, rng), rng)

    def train_sample(self, rng: random.Random) -> Arch:
        """The supernet's training distribution [ref: MixPath]: per layer m′ ~ U{1..m}, then m′ distinct paths.

        For S4 the paths are the cell's nodes, each active node with a uniform op; for S3 (m = 1) every group's
        kernel is uniform."""
        if self.family == "ib":
            index = {s: i for i, s in enumerate(self.subsets)}
            return self.arch([index[sample_paths(rng, self.n_paths, self.max_paths)] for _ in self.widths])
        if self.family == "cell":
            nodes = sample_paths(rng, 4, 4)
            return self.arch([rng.randrange(1, len(CELL_OPS)) if j in nodes else 0 for j in range(4)])
        return super().sample(rng)

    # -- cost ----------------------------------------------------------------------------------------------------
    def _geometry(self) -> list[tuple[int, int, int, int]]:
        """Per layer: (in channels, out channels, stride, input size)."""
        size = _out(self.input_size, self.stem_stride)
        cin, out = self.stem_channels, []
        for i, (w, s) in enumerate(zip(self.widths, self.strides)):
            out.append((cin, w, s, size))
            size = _out(size, s)
            if i in self.pool_after:
                size //= 2
            cin = w
        self._final_size = size
        return out

    def _build_cost_tables(self) -> None:
        geo = self._geometry()
        stem = self.in_channels * self.stem_channels * 9
        size0 = _out(self.input_size, self.stem_stride)
        macs, params = stem * size0 ** 2, stem + 2 * self.stem_channels
        head_in = self.widths[-1]
        if self.family != "cell":
            last = self.last_channels
            macs += head_in * last * self._final_size ** 2
            params += head_in * last + 2 * last
            head_in = last
        macs += head_in * self.num_classes
        params += head_in * self.num_classes + self.num_classes
        units = []
        if self.family == "ib":
            nk = len(self.kernels)
            for i, (cin, cout, s, size) in enumerate(geo):
                so = _out(size, s)
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
        elif self.family == "mixconv":
            for i, (cin, cout, s, size) in enumerate(geo):
                mid, so = cin * self.expansions[0], _out(size, s)
                base_m = cin * mid * size ** 2 + mid * cout * so ** 2
                base_p = cin * mid + 2 * mid + 2 * mid + mid * cout + 2 * cout
                splits = _groups(mid, self.n_groups)
                table = {}
                for ks in product(range(len(self.kernels)), repeat=self.n_groups):
                    k2 = sum(c * self.kernels[k] ** 2 for c, k in zip(splits, ks))
                    table[ks] = ((base_m + k2 * so ** 2) / 1e6, base_p + k2)
                units.append((tuple(f"l{i}_g{g}" for g in range(self.n_groups)), table))
        else:
            table = {}
            for ops in self._cells:
                m = p = 0
                for cin, cout, _, size in geo:
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
            units.append((tuple(self.genes), table))
        self._set_cost_tables(Cost(macs / 1e6, params), units)

    def max_cost(self) -> Cost:
        """The most expensive architecture's cost, per metric (a default hypervolume reference point)."""
        return Cost(self._fixed.mflops + sum(max(v[0] for v in t.values()) for _, _, t in self._units),
                    int(self._fixed.params + sum(max(v[1] for v in t.values()) for _, _, t in self._units)))

    def supernet(self) -> "MixPathSupernet":
        return MixPathSupernet(self)


class MixPathSupernet(nn.Module):
    def __init__(self, space: MixPathSpace):
        super().__init__()
        self.space = space
        s = space
        act = nn.ReLU if s.family == "cell" else nn.ReLU6
        self.stem = _conv_bn_act(s.in_channels, s.stem_channels, 3, s.stem_stride, act=act)
        layers = []
        for cin, cout, stride, _ in s._geometry():
            if s.family == "ib":
                layers.append(MultiPathIB(cin, cout, stride, s.expansions, s.kernels, s.max_paths, s.shadow_bn))
            elif s.family == "mixconv":
                layers.append(MixConvIB(cin, cout, stride, s.expansions[0], s.kernels, s.n_groups, s.shadow_bn))
            else:
                layers.append(MultiPathCell(cin, cout, s.shadow_bn))
        self.layers = nn.ModuleList(layers)
        if s.zero_init_residual:  # [nasx] residual blocks start as the identity (γ = 0 in their shadow BNs)
            for layer in layers:
                if getattr(layer, "residual", False):
                    for bn in layer.sbn.bns:
                        nn.init.zeros_(bn.weight)
        self.head = nn.Identity() if s.family == "cell" else _conv_bn_act(s.widths[-1], s.last_channels, 1)
        features = s.widths[-1] if s.family == "cell" else s.last_channels
        self.classifier = nn.Sequential(nn.Dropout(s.dropout), nn.Linear(features, s.num_classes))
        self.pool_after = s.pool_after

    def forward(self, x, arch: Arch):
        if arch is None:
            raise ValueError("a MixPath supernet needs an arch at every step: it has no warm-up mode "
                             "(set train.warmup_epochs=0)")
        x = self.stem(x)
        for i, (layer, choice) in enumerate(zip(self.layers, self.space.layer_choices(arch))):
            x = layer(x, choice)
            if i in self.pool_after:
                x = nn.functional.max_pool2d(x, 2)
        return self.classifier(self.head(x).mean((2, 3)))

    def extract(self, arch: Arch) -> MixPathNet:
        arch = self.space.validate(arch)
        layers = [layer.extract(c) for layer, c in zip(self.layers, self.space.layer_choices(arch))]
        return MixPathNet(copy.deepcopy(self.stem), layers, copy.deepcopy(self.head), copy.deepcopy(self.classifier),
                          self.pool_after)
