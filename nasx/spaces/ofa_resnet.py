"""Once-for-all's ResNet50D space (REG-NAS's ResNet family; METHODS.md §4) [ref: ``mit-han-lab/once-for-all``,
``ofa/imagenet_classification/elastic_nn/networks/ofa_resnets.py``; nasx's own code].

The network (ResNet-D): a stem of three 3×3 convs (stride 2, then a residual 3×3 that can be skipped, then a 3×3 to the
stem width), 3×3 max-pool, four stages of bottleneck blocks (1×1 → 3×3 with the stage's stride → 1×1, BN after each,
ReLU; a strided or widening shortcut is avg-pool + 1×1 conv + BN, "avgpool_conv"), global pooling, dropout, linear.

Elastic dimensions [ref]: per stage the depth ``base + d`` with d ∈ ``depths`` (extra blocks over the base depths
[2, 2, 4, 2]: the stage runs its first base + d blocks), per block the expand ratio e ∈ ``expands`` (the block's middle
width ``make_divisible(round(out · e), 8)``), and the width multiplier ∈ ``width_mults`` of the stem's two widths and of
each stage's output width (``make_divisible(64 · w)``, ``make_divisible(stage width · w)``). Every choice takes the
leading channels of the max-size weights.

Genes, in order: ``stem_mid``, ``stem_out`` (width-multiplier indices of the stem's middle and output convs),
``stem_depth`` (0: the residual middle conv of the stem is skipped; 1: it runs [nasx encoding of OFA's input-stem
skipping, which OFA ties to the first entry of its depth list]), then per stage s: ``w{s}`` (width index), ``d{s}``
(extra-depth index), and ``e{s}_{b}`` per block slot. Kernels are fixed at 3 (``kernel`` is not elastic here).
"""
from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from nasx.arch import Arch, Cost
from nasx.errors import ConfigError
from nasx.ops.elastic import ChannelPermuter, importance_order, make_divisible
from nasx.ops.sliced import SlicedBatchNorm2d, SlicedConv2d, leading, mark_extent
from nasx.spaces.elastic import ElasticSpace


class ConvBN(nn.Module):
    """A sliced conv → sliced BN (→ ReLU): ``forward(x, out)``; ``extract(cin, out)`` gives the plain Sequential."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv, self.bn, self.relu = SlicedConv2d(cin, cout, k, stride), SlicedBatchNorm2d(cout), relu

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        x = self.bn(self.conv(x, out))
        return F.relu(x) if self.relu else x

    def extract(self, cin: int, out: int) -> nn.Sequential:
        layers = [self.conv.extract(cin, out), self.bn.extract(out)]
        return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if self.relu else []))


class Bottleneck(nn.Module):
    """A static bottleneck (the extracted form)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


class ElasticBottleneck(nn.Module):
    def __init__(self, max_in: int, max_out: int, max_mid: int, stride: int, always_project: bool):
        super().__init__()
        self.stride = stride
        self.conv1 = ConvBN(max_in, max_mid, 1)
        self.conv2 = ConvBN(max_mid, max_mid, 3, stride)
        self.conv3 = ConvBN(max_mid, max_out, 1, relu=False)
        self.always_project = always_project  # the first block of a stage: its input width differs (or stride 2)
        self.down = ConvBN(max_in, max_out, 1, relu=False)

    def projects(self, cin: int, cout: int) -> bool:
        return self.always_project or self.stride != 1 or cin != cout

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x
        return F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True, count_include_pad=False)

    def forward(self, x: torch.Tensor, mid: int, out: int) -> torch.Tensor:
        h = self.conv3(self.conv2(self.conv1(x, mid), mid), out)
        s = self.down(self._pool(x), out) if self.projects(x.shape[1], out) else x
        return F.relu(h + s)

    @torch.no_grad()
    def reorganize_middle(self, bands: Sequence[int], permute: ChannelPermuter) -> None:
        """OFA's sort of the bottleneck's two middle widths [ref: ``DynamicResNetBottleneckBlock.
        re_organize_middle_weights``]: conv2's outputs by the L1 norm of conv3's weights reading them, then conv1's
        outputs by that of conv2's (after the first permutation); ``bands`` as in
        :func:`nasx.ops.elastic.importance_order`."""
        for reader, writer in ((self.conv3, self.conv2), (self.conv2, self.conv1)):
            idx = importance_order(reader.conv.weight.abs().sum(dim=(0, 2, 3)), bands)
            permute(reader.conv.weight, 1, idx)
            permute.bn(writer.bn, idx)
            permute(writer.conv.weight, 0, idx)

    def extract(self, cin: int, mid: int, out: int) -> Bottleneck:
        body = nn.Sequential(self.conv1.extract(cin, mid), self.conv2.extract(mid, mid), self.conv3.extract(mid, out))
        shortcut = None
        if self.projects(cin, out):
            pool = [nn.AvgPool2d(self.stride, self.stride, ceil_mode=True, count_include_pad=False)] \
                if self.stride != 1 else []
            shortcut = nn.Sequential(*pool, self.down.extract(cin, out))
        return Bottleneck(body, shortcut)


class OFAResNetSpace(ElasticSpace):
    def __init__(self, name: str = "ofa_resnet50d", base_depths: Sequence[int] = (2, 2, 4, 2),
                 stage_widths: Sequence[int] = (256, 512, 1024, 2048), stem_width: int = 64,
                 depths: Sequence[int] = (0, 1, 2), expands: Sequence[float] = (0.2, 0.25, 0.35),
                 width_mults: Sequence[float] = (0.65, 0.8, 1.0), strides: Sequence[int] = (1, 2, 2, 2),
                 input_size: int = 224, in_channels: int = 3, num_classes: int = 1000, divisor: int = 8,
                 dropout: float = 0.0, zero_init_residual: bool = False):
        if not len(base_depths) == len(stage_widths) == len(strides):
            raise ConfigError(f"space.base_depths, stage_widths and strides must have one entry per stage, got "
                              f"{len(base_depths)}, {len(stage_widths)}, {len(strides)}")
        self.name = name
        self.base_depths, self.strides = [int(d) for d in base_depths], [int(s) for s in strides]
        self.depths = sorted(int(d) for d in depths)
        self.expands = sorted(float(e) for e in expands)
        self.width_mults = sorted(float(w) for w in width_mults)
        self.divisor = int(divisor)
        div = lambda v: make_divisible(v, self.divisor)  # noqa: E731
        self.stem_outs = [div(stem_width * w) for w in self.width_mults]
        self.stem_mids = [div(c // 2) for c in self.stem_outs]
        self.stage_outs = [[div(sw * w) for w in self.width_mults] for sw in stage_widths]
        self.input_size, self.in_channels, self.num_classes = int(input_size), int(in_channels), int(num_classes)
        self.dropout = float(dropout)
        self.zero_init_residual = bool(zero_init_residual)
        self.kernels = [3]
        self.genes = {"stem_mid": len(self.width_mults), "stem_out": len(self.width_mults), "stem_depth": 2}
        for s, base in enumerate(self.base_depths):
            self.genes[f"w{s}"] = len(self.width_mults)
            self.genes[f"d{s}"] = len(self.depths)
            for b in range(base + self.depths[-1]):
                self.genes[f"e{s}_{b}"] = len(self.expands)
        self._cost = lru_cache(maxsize=65536)(self._cost_uncached)

    elastic_dims = ("depth", "expand", "width")

    def mid(self, out: int, e: float) -> int:
        return make_divisible(round(out * e), self.divisor)

    def decode(self, arch: Arch):
        """(stem mid, stem out, stem residual conv runs?, per stage (out width, [expand per active block]))."""
        stages = []
        for s, base in enumerate(self.base_depths):
            n = base + self.depths[arch[f"d{s}"]]
            stages.append((self.stage_outs[s][arch[f"w{s}"]], [self.expands[arch[f"e{s}_{b}"]] for b in range(n)]))
        return self.stem_mids[arch["stem_mid"]], self.stem_outs[arch["stem_out"]], arch["stem_depth"] == 1, stages

    def live_genes(self, arch: Arch) -> list[str]:
        out = ["stem_mid", "stem_out", "stem_depth"]
        for s, base in enumerate(self.base_depths):
            out += [f"w{s}", f"d{s}"] + [f"e{s}_{b}" for b in range(base + self.depths[arch[f"d{s}"]])]
        return out

    def describe(self, arch: Arch) -> str:
        mid, out, deep, stages = self.decode(self.validate(arch))
        stem = f"stem {mid}/{out}{'' if deep else ' (skip)'}"
        return " | ".join([stem] + [f"{w}: " + " ".join(f"e{e:g}" for e in es) for w, es in stages])

    # -- cost ---------------------------------------------------------------------------------------------------------
    def cost(self, arch: Arch) -> Cost:
        return self._cost(self.validate(arch))

    def _cost_uncached(self, arch: Arch) -> Cost:
        mid, out, deep, stages = self.decode(arch)
        size = (self.input_size - 1) // 2 + 1
        macs = params = 0

        def conv(cin, cout, k, s_out):
            nonlocal macs, params
            macs += cin * cout * k * k * s_out * s_out
            params += cin * cout * k * k + 2 * cout  # conv + BN

        conv(self.in_channels, mid, 3, size)
        if deep:
            conv(mid, mid, 3, size)
        conv(mid, out, 3, size)
        size = (size + 2 - 3) // 2 + 1  # max-pool 3, stride 2, padding 1
        c = out
        for s, (width, es) in enumerate(stages):
            for b, e in enumerate(es):
                stride = self.strides[s] if b == 0 else 1
                m = self.mid(width, e)
                s_out = (size - 1) // stride + 1  # the 3x3 conv (padding 1) and the ceil-mode shortcut pool agree
                conv(c, m, 1, size)
                conv(m, m, 3, s_out)
                conv(m, width, 1, s_out)
                if b == 0 or stride != 1 or c != width:
                    conv(c, width, 1, s_out)
                c, size = width, s_out
        macs += c * self.num_classes
        params += c * self.num_classes + self.num_classes
        return Cost(macs / 1e6, params)

    # -- progressive shrinking and containment -------------------------------------------------------------------------
    def sample_elastic(self, rng: random.Random, depth=None, expand=None, width=None, kernel=None) -> Arch:
        """A uniform draw in which each dimension takes only the listed values (None: its largest). ``depth`` lists
        extra depths; ``width`` width multipliers (stem and stages alike); the stem's residual conv is skipped only
        when depth is elastic and its draw is the smallest extra depth [nasx]."""
        if kernel is not None and list(kernel) != [3]:
            raise ConfigError(f"kernel is not elastic in space '{self.name}' (3x3 only), got {list(kernel)}")

        def idx(values, given, name):
            if given is None:
                return [len(values) - 1]
            out = []
            for v in given:
                if float(v) not in [float(x) for x in values]:
                    raise ConfigError(f"{name} {v:g} is not a choice of space '{self.name}' ({list(values)})")
                out.append([float(x) for x in values].index(float(v)))
            return sorted(set(out))

        d, e, w = idx(self.depths, depth, "depth"), idx(self.expands, expand, "expand"), \
            idx(self.width_mults, width, "width")
        genes = []
        for g in self.genes:
            if g == "stem_depth":
                genes.append((g, 1 if depth is None or len(d) == 1 else rng.choice([0, 1])))
            elif g in ("stem_mid", "stem_out") or g.startswith("w"):
                genes.append((g, rng.choice(w)))
            elif g.startswith("d"):
                genes.append((g, rng.choice(d)))
            else:
                genes.append((g, rng.choice(e)))
        return Arch(self.name, tuple(genes))

    def supernet(self) -> "OFAResNetSupernet":
        return OFAResNetSupernet(self)


class ResNet(nn.Module):
    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], classifier: nn.Module):
        super().__init__()
        self.stem, self.blocks, self.classifier = stem, nn.Sequential(*blocks), classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class _Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class OFAResNetSupernet(nn.Module):
    def __init__(self, space: OFAResNetSpace):
        super().__init__()
        self.space = s = space
        mid, out = max(s.stem_mids), max(s.stem_outs)
        self.stem1 = ConvBN(s.in_channels, mid, 3, 2)
        self.stem2 = ConvBN(mid, mid, 3, 1)
        self.stem3 = ConvBN(mid, out, 3, 1)
        self.stages = nn.ModuleList()
        c = out
        for i, base in enumerate(s.base_depths):
            width = max(s.stage_outs[i])
            max_mid = s.mid(width, s.expands[-1])
            blocks = nn.ModuleList()
            for b in range(base + s.depths[-1]):
                blocks.append(ElasticBottleneck(c, width, max_mid, s.strides[i] if b == 0 else 1, b == 0))
                c = width
            self.stages.append(blocks)
        self.classifier = nn.Sequential(nn.Dropout(s.dropout), nn.Linear(c, s.num_classes))
        if s.zero_init_residual:  # [nasx; Goyal et al.'s trick] every bottleneck body starts at 0 (γ = 0 in its last BN)
            for blocks in self.stages:
                for block in blocks:
                    nn.init.zeros_(block.conv3.bn.weight)

    def _linear(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        lin = self.classifier[1]
        mark_extent(lin.weight, (lin.out_features, c))
        return leading(lin.weight, (lin.out_features, c)), lin.bias

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        s = self.space
        mid, out, deep, stages = s.decode(s.largest() if arch is None else s.validate(arch))
        x = self.stem1(x, mid)
        if deep:
            x = x + self.stem2(x, mid)
        x = F.max_pool2d(self.stem3(x, out), 3, 2, 1)
        for blocks, (width, es) in zip(self.stages, stages):
            for block, e in zip(blocks, es):
                x = block(x, s.mid(width, e), width)
        f = self.classifier[0](x.mean((2, 3)))
        return F.linear(f, *self._linear(f.shape[1]))

    @torch.no_grad()
    def reorganize_middle(self, keep: Sequence[float] = (), permute: ChannelPermuter | None = None) -> None:
        """OFA's channel sort in every bottleneck; ``keep``: expand ratios already trained as sub-widths, their band
        edges taken at the stage's largest width (as OFA does)."""
        permute = permute or ChannelPermuter()
        s = self.space
        for i, blocks in enumerate(self.stages):
            bands = [s.mid(max(s.stage_outs[i]), float(e)) for e in keep]
            for block in blocks:
                block.reorganize_middle(bands, permute)

    @torch.no_grad()
    def extract(self, arch: Arch) -> ResNet:
        s = self.space
        mid, out, deep, stages = s.decode(s.validate(arch))
        stem = [self.stem1.extract(s.in_channels, mid)]
        if deep:
            stem.append(_Residual(self.stem2.extract(mid, mid)))
        stem += [self.stem3.extract(mid, out), nn.MaxPool2d(3, 2, 1)]
        blocks, c = [], out
        for stage_blocks, (width, es) in zip(self.stages, stages):
            for block, e in zip(stage_blocks, es):
                blocks.append(block.extract(c, s.mid(width, e), width))
                c = width
        lin = nn.Linear(c, s.num_classes)
        w, b = self._linear(c)
        lin.weight.copy_(w)
        lin.bias.copy_(b)
        return ResNet(nn.Sequential(*stem), blocks, nn.Sequential(copy.deepcopy(self.classifier[0]), lin))
