"""MixPath's multi-path spaces S1–S4 (METHODS.md §5, supplementary Tab. 1): what the families share.

Each family is a :class:`MixPathSpace` subclass in its own file, which ``conf/space/mixpath_*.yaml`` names in
``_target_``:

* S1 / S2: :class:`nasx.spaces.mixpath_ib.MixPathIBSpace`, stacked multi-path inverted bottlenecks;
* S3: :class:`nasx.spaces.mixpath_mixconv.MixPathMixConvSpace`, mixed-kernel inverted bottlenecks;
* S4: :class:`nasx.spaces.mixpath_cell.MixPathCellSpace`, the reduced NAS-Bench-101 cell stacked 9 times.

A family owns its genes, :meth:`~MixPathSpace.layer_choices` (genes -> what each layer activates), the cost table
of one layer and the supernet layer type (from :mod:`nasx.ops.inverted_bottleneck`, :mod:`nasx.ops.multipath_cell`).
This module owns the rest: the geometry, the network around the layers (stem → layers → last conv → global pool →
classifier), the fixed part of the cost, :class:`MixPathSupernet` (``forward(x, arch)``, ``forward_features``,
``extract(arch)`` → a static :class:`MixPathNet` of plain modules that, in eval mode, computes exactly what the
supernet computes for that arch).

``zero_init_residual`` [nasx, off by default; the reference initialises γ = 1] starts every residual block as the
identity by zeroing the γ of its shadow BNs (Goyal et al., 2017). The CPU presets turn it on: on the embedded digits the
12-layer supernet otherwise trains too slowly to rank anything (README, "MixPath").

MFLOPs are multiply-accumulates of convolutions and the classifier, in millions (BN, ReLU, pooling and additions
are not counted). Params count the extracted model's trainable parameters.
"""
from __future__ import annotations

import copy
import random
from abc import abstractmethod
from typing import Sequence

from torch import nn

from nasx.arch import Arch, Cost
from nasx.spaces.additive import AdditiveSearchSpace
from nasx.errors import ConfigError
from nasx.ops.inverted_bottleneck import conv_bn_act


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


class MixPathSpace(AdditiveSearchSpace):
    """One of S1–S4; a subclass per family sets its genes, layer type and per-layer costs.

    ``widths``/``strides`` are per layer; ``pool_after`` lists the layers followed by a 2×2 max-pool;
    ``max_paths`` is m, the most paths a layer activates (the number of its shadow BNs); ``last_channels`` is the
    embedding width, the output of the last conv (the classifier's input).
    """

    stem_activation: type[nn.Module] = nn.ReLU6

    def __init__(self, name: str, widths: Sequence[int], strides: Sequence[int], pool_after: Sequence[int],
                 max_paths: int, *, stem_channels: int = 32, stem_stride: int = 1, last_channels: int = 1280,
                 shadow_bn: bool = True, input_size: int = 32, in_channels: int = 3, num_classes: int = 10,
                 dropout: float = 0.0, zero_init_residual: bool = False):
        if len(strides) != len(widths):
            raise ConfigError(f"space.strides has {len(strides)} entries, space.widths {len(widths)}")
        self.name = name
        self.widths, self.strides, self.pool_after = list(widths), list(strides), tuple(pool_after)
        self.max_paths, self.shadow_bn = int(max_paths), bool(shadow_bn)
        self.stem_channels, self.stem_stride, self.last_channels = stem_channels, stem_stride, last_channels
        self.input_size, self.in_channels, self.num_classes = input_size, in_channels, num_classes
        self.dropout, self.zero_init_residual = dropout, bool(zero_init_residual)
        self.genes = self._genes()
        self._build_cost_tables()

    # -- what a family decides -----------------------------------------------------------------------------------
    @abstractmethod
    def _genes(self) -> dict[str, int]:
        """Gene name -> number of choices, in gene order."""

    @abstractmethod
    def layer_choices(self, arch: Arch) -> list[tuple[int, ...]]:
        """Per layer, what its supernet layer activates (the argument of its ``forward`` and ``extract``)."""

    @abstractmethod
    def describe(self, arch: Arch) -> str:
        """A human-readable summary of ``arch``'s layers."""

    @abstractmethod
    def supernet_layer(self, cin: int, cout: int, stride: int) -> nn.Module:
        """The weight-sharing layer at one position: ``forward(x, choice)``, ``extract(choice)``, ``sbn``."""

    @abstractmethod
    def _layer_costs(self, geometry: list[tuple[int, int, int, int, int]]) -> list[tuple[tuple[str, ...], dict]]:
        """Per cost unit: its gene names and a table from their choices to (MFLOPs, params) of its layers."""

    def last_conv(self) -> nn.Module:
        """The conv between the last layer and the global pool: 1×1 conv-BN-ReLU6 to ``last_channels``."""
        return conv_bn_act(self.widths[-1], self.last_channels, 1)

    def _last_conv_cost(self, size: int) -> tuple[int, int]:
        """Multiply-accumulates and params of :meth:`last_conv` on a ``size``×``size`` input."""
        cin, cout = self.widths[-1], self.last_channels
        return cin * cout * size ** 2, cin * cout + 2 * cout

    # -- validity ------------------------------------------------------------------------------------------------
    def fix(self, choices: Sequence[int], rng: random.Random) -> Arch:
        """NSGA-II's repair: the arch of ``choices`` made valid. Every combination is valid unless a family says
        otherwise. (NSGA-II draws an RNG for any space that has ``fix``, so its seeds depend on it being here.)"""
        return Arch(self.name, tuple(zip(self.genes, (int(c) for c in choices))))

    # -- cost ----------------------------------------------------------------------------------------------------
    def _geometry(self) -> list[tuple[int, int, int, int, int]]:
        """Per layer: (in channels, out channels, stride, input size, output size); sets ``_final_size``."""
        size = _out(self.input_size, self.stem_stride)
        cin, out = self.stem_channels, []
        for i, (w, s) in enumerate(zip(self.widths, self.strides)):
            out.append((cin, w, s, size, _out(size, s)))
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
        last_macs, last_params = self._last_conv_cost(self._final_size)
        macs += last_macs + self.last_channels * self.num_classes
        params += last_params + self.last_channels * self.num_classes + self.num_classes
        self._set_cost_tables(Cost(macs / 1e6, params), self._layer_costs(geo))

    def max_cost(self) -> Cost:
        """The most expensive architecture's cost, per metric (a default hypervolume reference point)."""
        return Cost(self._fixed.mflops + sum(max(v[0] for v in t.values()) for _, _, t in self._units),
                    int(self._fixed.params + sum(max(v[1] for v in t.values()) for _, _, t in self._units)))

    def supernet(self) -> "MixPathSupernet":
        return MixPathSupernet(self)


# -- networks -------------------------------------------------------------------------------------------------------
class MixPathNet(nn.Module):
    """A static network: stem, fixed layers, last conv (1×1 for S1–S3), global pooling, classifier."""

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], last_conv: nn.Module, classifier: nn.Module,
                 pool_after: Sequence[int] = ()):
        super().__init__()
        self.stem, self.layers, self.last_conv, self.classifier = stem, nn.ModuleList(layers), last_conv, classifier
        self.pool_after = tuple(pool_after)

    def forward_features(self, x):
        x = self.stem(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.pool_after:
                x = nn.functional.max_pool2d(x, 2)
        return self.last_conv(x).mean((2, 3))

    def forward(self, x):
        return self.classifier(self.forward_features(x))


class MixPathSupernet(nn.Module):
    def __init__(self, space: MixPathSpace):
        super().__init__()
        self.space = space
        s = space
        self.stem = conv_bn_act(s.in_channels, s.stem_channels, 3, s.stem_stride, act=s.stem_activation)
        layers = [s.supernet_layer(cin, cout, stride) for cin, cout, stride, _, _ in s._geometry()]
        self.layers = nn.ModuleList(layers)
        if s.zero_init_residual:  # [nasx] residual blocks start as the identity (γ = 0 in their shadow BNs)
            for layer in layers:
                if getattr(layer, "residual", False):
                    for bn in layer.sbn.bns:
                        nn.init.zeros_(bn.weight)
        self.last_conv = s.last_conv()
        self.classifier = nn.Sequential(nn.Dropout(s.dropout), nn.Linear(s.last_channels, s.num_classes))
        self.pool_after = s.pool_after

    def forward_features(self, x, arch: Arch):
        """(N, C, H, W) images -> (N, features) pooled embedding of ``arch``'s path."""
        if arch is None:
            raise ValueError("a MixPath supernet needs an arch at every step: it has no warm-up mode "
                             "(set train.warmup_epochs=0)")
        x = self.stem(x)
        for i, (layer, choice) in enumerate(zip(self.layers, self.space.layer_choices(arch))):
            x = layer(x, choice)
            if i in self.pool_after:
                x = nn.functional.max_pool2d(x, 2)
        return self.last_conv(x).mean((2, 3))

    def forward(self, x, arch: Arch):
        return self.classifier(self.forward_features(x, arch))

    def extract(self, arch: Arch) -> MixPathNet:
        arch = self.space.validate(arch)
        layers = [layer.extract(c) for layer, c in zip(self.layers, self.space.layer_choices(arch))]
        return MixPathNet(copy.deepcopy(self.stem), layers, copy.deepcopy(self.last_conv),
                          copy.deepcopy(self.classifier), self.pool_after)
