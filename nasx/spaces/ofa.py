"""Once-for-all's MobileNetV3 space (REG-NAS's space; METHODS.md §4) [ref: ``mit-han-lab/once-for-all``,
``ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py``; nasx's own code].

The network: 3×3 stride-2 stem (h-swish) → a fixed first block (expand 1, 3×3, ReLU) → 5 elastic stages of up to
``max(depths)`` :class:`~nasx.ops.elastic.ElasticMBConv` blocks (the first block of a stage strided) → 1×1 final
expand (BN, h-swish) → global pool → 1×1 feature mix (no BN, h-swish) → dropout → linear. The paper's widths are
16 | 16 | 24, 40, 80, 112, 160 | 960 | 1280, strides 2, 2, 2, 1, 2, ReLU in the first two stages and h-swish after,
SE in stages 2, 4 and 5.

Genes, in order, per stage s: ``d{s}`` (depth index into ``depths``: the stage runs its first d blocks), then per
block slot b: ``k{s}_{b}`` (kernel index into ``kernels``) and ``e{s}_{b}`` (expand index into ``expands``). Genes of
blocks past the depth are inactive (they do not change the network).

Weights are shared as in OFA: a smaller expand ratio uses the leading channels, a smaller kernel the transformed
centre of the 7×7 weight, a smaller depth the first blocks. So a subnet whose every active dimension is at least
another's *contains* it (:meth:`OFAMobileNetV3Space.contains`), REG-NAS's containment [nasx CAS].

``zero_init_residual`` [nasx, off by default; OFA initialises γ = 1] starts every residual block as the identity (γ = 0
in its projection's BN): the CPU preset's 20 blocks otherwise sit at chance loss on the cluttered digits for epochs, as
MixPath's CPU preset did (experiments/mixpath/RESULTS.md, "Why zero-init").

Cost: multiply-accumulates of every conv and linear (SE's included) of the extracted static model, and its
parameters (the kernel-transformation matrices are not part of it: they are folded into its kernels).
"""
from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from nasx.arch import Arch, Cost
from nasx.errors import ArchError, ConfigError
from nasx.ops.elastic import SE_REDUCTION, ChannelPermuter, ElasticMBConv, activation, make_divisible
from nasx.spaces.elastic import ElasticSpace

DIMS = ("kernel", "depth", "expand")  # OFA's elastic dimensions, in progressive-shrinking order


class OFAMobileNetV3Space(ElasticSpace):
    elastic_dims = DIMS

    def __init__(self, name: str = "ofa_mbv3", stem_channels: int = 16, first_channels: int = 16,
                 stage_widths: Sequence[int] = (24, 40, 80, 112, 160), strides: Sequence[int] = (2, 2, 2, 1, 2),
                 acts: Sequence[str] = ("relu", "relu", "h_swish", "h_swish", "h_swish"),
                 se: Sequence[bool] = (False, True, False, True, True), kernels: Sequence[int] = (3, 5, 7),
                 expands: Sequence[float] = (3, 4, 6), depths: Sequence[int] = (2, 3, 4), final_expand: int = 960,
                 feature_mix: int = 1280, input_size: int = 224, in_channels: int = 3, num_classes: int = 1000,
                 divisor: int = 8, dropout: float = 0.1, zero_init_residual: bool = False):
        n = len(stage_widths)
        for key, v in (("strides", strides), ("acts", acts), ("se", se)):
            if len(v) != n:
                raise ConfigError(f"space.{key} has {len(v)} entries for {n} stages (space.stage_widths)")
        for a in acts:
            activation(a)  # raises on an unknown name
        if sorted(set(depths)) != sorted(depths) or min(depths) < 1:
            raise ConfigError(f"space.depths must be distinct positive integers, got {list(depths)}")
        self.name = name
        self.stem_channels, self.first_channels = int(stem_channels), int(first_channels)
        self.stage_widths, self.strides = [int(w) for w in stage_widths], [int(s) for s in strides]
        self.acts, self.se = [str(a) for a in acts], [bool(s) for s in se]
        self.kernels, self.expands = sorted(int(k) for k in kernels), sorted(float(e) for e in expands)
        self.depths = sorted(int(d) for d in depths)
        self.max_depth = self.depths[-1]
        self.final_expand, self.feature_mix = int(final_expand), int(feature_mix)
        self.input_size, self.in_channels, self.num_classes = int(input_size), int(in_channels), int(num_classes)
        self.divisor, self.dropout = int(divisor), float(dropout)
        self.zero_init_residual = bool(zero_init_residual)
        self.genes = {}
        for s in range(n):
            self.genes[f"d{s}"] = len(self.depths)
            for b in range(self.max_depth):
                self.genes[f"k{s}_{b}"] = len(self.kernels)
                self.genes[f"e{s}_{b}"] = len(self.expands)
        self._cost = lru_cache(maxsize=65536)(self._cost_uncached)

    # -- decoding ---------------------------------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.stage_widths)

    def decode(self, arch: Arch) -> list[list[tuple[int, float]]]:
        """Per stage, the active blocks' (kernel, expand ratio)."""
        return [[(self.kernels[arch[f"k{s}_{b}"]], self.expands[arch[f"e{s}_{b}"]])
                 for b in range(self.depths[arch[f"d{s}"]])] for s in range(self.n_stages)]

    def live_genes(self, arch: Arch) -> list[str]:
        """The genes that change the network: every depth, and kernel and expand of the active blocks."""
        out = []
        for s in range(self.n_stages):
            out.append(f"d{s}")
            for b in range(self.depths[arch[f"d{s}"]]):
                out += [f"k{s}_{b}", f"e{s}_{b}"]
        return out

    def describe(self, arch: Arch) -> str:
        return " | ".join(" ".join(f"k{k}e{e:g}" for k, e in stage) for stage in self.decode(self.validate(arch)))

    def from_values(self, kernel=None, expand=None, depth=None) -> Arch:
        """Every block at one kernel / expand ratio and every stage at one depth (values; None: the largest)."""
        kernel = self.kernels[-1] if kernel is None else kernel
        expand = self.expands[-1] if expand is None else expand
        depth = self.depths[-1] if depth is None else depth
        try:
            idx = {"k": self.kernels.index(int(kernel)), "e": self.expands.index(float(expand)),
                   "d": self.depths.index(int(depth))}
        except ValueError:
            raise ArchError(f"space '{self.name}': kernel {kernel}, expand {expand} or depth {depth} is not a choice "
                            f"(kernels {self.kernels}, expands {self.expands}, depths {self.depths})") from None
        return Arch(self.name, tuple((g, idx[g[0]]) for g in self.genes))

    # -- cost -------------------------------------------------------------------------------------------------------
    def cost(self, arch: Arch) -> Cost:
        return self._cost(self.validate(arch))

    def block_plan(self, arch: Arch) -> list[tuple[int, int, int, int, int, float, bool]]:
        """(cin, cout, stride, input size, kernel, expand, SE) of every active block, the fixed first block first."""
        size = (self.input_size - 1) // 2 + 1
        plan = [(self.stem_channels, self.first_channels, 1, size, 3, 1.0, False)]
        c = self.first_channels
        for s, stage in enumerate(self.decode(arch)):
            for b, (k, e) in enumerate(stage):
                stride = self.strides[s] if b == 0 else 1
                plan.append((c, self.stage_widths[s], stride, size, k, e, self.se[s]))
                c, size = self.stage_widths[s], (size - 1) // stride + 1
        return plan

    def mid(self, cin: int, e: float) -> int:
        return cin if e == 1.0 else make_divisible(round(cin * e), self.divisor)

    def _cost_uncached(self, arch: Arch) -> Cost:
        size = (self.input_size - 1) // 2 + 1
        macs = self.in_channels * self.stem_channels * 9 * size * size
        params = self.in_channels * self.stem_channels * 9 + 2 * self.stem_channels
        for cin, cout, stride, s_in, k, e, se in self.block_plan(arch):
            mid = self.mid(cin, e)
            s_out = (s_in - 1) // stride + 1
            if e != 1.0:
                macs += cin * mid * s_in * s_in
                params += cin * mid + 2 * mid
            macs += mid * k * k * s_out * s_out
            params += mid * k * k + 2 * mid
            if se:
                h = make_divisible(mid // SE_REDUCTION, self.divisor)
                macs += 2 * mid * h
                params += 2 * mid * h + h + mid
            macs += mid * cout * s_out * s_out
            params += mid * cout + 2 * cout
            size = s_out
        c = self.stage_widths[-1]
        macs += c * self.final_expand * size * size + self.final_expand * self.feature_mix \
            + self.feature_mix * self.num_classes
        params += c * self.final_expand + 2 * self.final_expand + self.final_expand * self.feature_mix \
            + self.feature_mix * self.num_classes + self.num_classes
        return Cost(macs / 1e6, params)

    # -- progressive shrinking ----------------------------------------------------------------------------------------
    def sample_elastic(self, rng: random.Random, kernel: Sequence[int] | None = None,
                       expand: Sequence[float] | None = None, depth: Sequence[int] | None = None) -> Arch:
        """A uniform draw in which each dimension takes only the listed values (None: its largest value only) — one
        phase of OFA's progressive shrinking."""
        allowed = {}
        for key, values, given in (("k", self.kernels, kernel), ("e", self.expands, expand),
                                   ("d", self.depths, depth)):
            if given is None:
                allowed[key] = [len(values) - 1]
                continue
            idx = []
            for v in given:
                v = float(v) if key == "e" else int(v)
                if v not in values:
                    name = {"k": "kernel", "e": "expand", "d": "depth"}[key]
                    raise ConfigError(f"{name} {v:g} is not a choice of space '{self.name}' ({values})")
                idx.append(values.index(v))
            allowed[key] = sorted(set(idx))
        return Arch(self.name, tuple((g, rng.choice(allowed[g[0]])) for g in self.genes))

    def supernet(self) -> "OFAMobileNetV3Supernet":
        return OFAMobileNetV3Supernet(self)


class MobileNetV3(nn.Module):
    """A static network of the space (extracted)."""

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module, classifier: nn.Module):
        super().__init__()
        self.stem, self.blocks, self.head, self.classifier = stem, nn.Sequential(*blocks), head, classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class _Head(nn.Module):
    """Final expand (1×1, BN, h-swish) → global pool → feature mix (1×1 without BN, h-swish) → (N, feature_mix)."""

    def __init__(self, cin: int, final_expand: int, feature_mix: int):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, final_expand, 1, bias=False), nn.BatchNorm2d(final_expand),
                                    nn.Hardswish(inplace=True))
        self.mix = nn.Sequential(nn.Conv2d(final_expand, feature_mix, 1, bias=False), nn.Hardswish(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.expand(x).mean((2, 3), keepdim=True)).flatten(1)


class OFAMobileNetV3Supernet(nn.Module):
    """``forward(x, arch)``; ``arch=None`` is the full network (OFA's first phase trains it alone)."""

    def __init__(self, space: OFAMobileNetV3Space):
        super().__init__()
        self.space = s = space
        self.stem = nn.Sequential(nn.Conv2d(s.in_channels, s.stem_channels, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(s.stem_channels), nn.Hardswish(inplace=True))
        self.first = ElasticMBConv(s.stem_channels, s.first_channels, 1, [3], [1.0], "relu", False, s.divisor)
        self.stages = nn.ModuleList()
        c = s.first_channels
        for i, width in enumerate(s.stage_widths):
            blocks = nn.ModuleList()
            for b in range(s.max_depth):
                blocks.append(ElasticMBConv(c, width, s.strides[i] if b == 0 else 1, s.kernels, s.expands, s.acts[i],
                                            s.se[i], s.divisor))
                c = width
            self.stages.append(blocks)
        self.head = _Head(c, s.final_expand, s.feature_mix)
        self.classifier = nn.Sequential(nn.Dropout(s.dropout), nn.Linear(s.feature_mix, s.num_classes))
        if s.zero_init_residual:  # [nasx] every residual block starts as the identity (γ = 0 in its last BN)
            for block in [self.first, *(b for blocks in self.stages for b in blocks)]:
                if block.residual:
                    nn.init.zeros_(block.project_bn.weight)

    def forward_features(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        plan = self.space.decode(self.space.largest() if arch is None else self.space.validate(arch))
        x = self.first(self.stem(x), 3, 1.0)
        for blocks, stage in zip(self.stages, plan):
            for block, (k, e) in zip(blocks, stage):  # the first d blocks
                x = block(x, k, e)
        return self.head(x)

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        return self.classifier(self.forward_features(x, arch))

    @torch.no_grad()
    def reorganize_middle(self, keep: Sequence[float] = (), permute: ChannelPermuter | None = None) -> None:
        """OFA's channel sort in every block with an expand conv; ``keep``: expand ratios whose leading channels have
        been trained as a sub-width already (their channel sets stay, re-sorted inside)."""
        permute = permute or ChannelPermuter()
        for blocks in self.stages:
            for block in blocks:
                block.reorganize_middle([block.mids[float(e)] for e in keep if float(e) in block.mids], permute)

    @torch.no_grad()
    def extract(self, arch: Arch) -> MobileNetV3:
        plan = self.space.decode(self.space.validate(arch))
        blocks = [self.first.extract(3, 1.0)]
        for stage_blocks, stage in zip(self.stages, plan):
            blocks += [block.extract(k, e) for block, (k, e) in zip(stage_blocks, stage)]
        return MobileNetV3(copy.deepcopy(self.stem), blocks, copy.deepcopy(self.head), copy.deepcopy(self.classifier))
