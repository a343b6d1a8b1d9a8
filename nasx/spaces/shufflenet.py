"""The SPOS ShuffleNetV2 one-shot space (CMP-NAS's query space; METHODS.md §1).

20 choice layers in stages of 4/4/8/4 [ref: SPOS]. Each layer picks a block — ShuffleNetV2 unit with a 3×3, 5×5 or
7×7 depthwise kernel, or the Shuffle-Xception unit — and a width: the block's middle channels scaled by
0.2, 0.4, …, 2.0 ([nasx] the scale list is ``mid_scales``) of SPOS's base (half the layer's output channels).

Genes, in order: ``b0, w0, b1, w1, …, b19, w19`` (block index 0-3, width index 0-9).

Weights are shared by slicing: every block of every layer is its own module holding max-width weights, and a
smaller width uses their leading channels. ``extract(arch)`` returns a :class:`ShuffleNet` of plain modules with
copies of the sampled weights; in eval mode it computes exactly what ``supernet(x, arch)`` computes.

Tiers [seed]: one supernet per compute tier, 330 / 230 / 100 MFLOPs, with every layer's widths scaled by
1.0 / 0.75 / 0.5 (``width_scale``; channels are rounded to multiples of 4, which the channel shuffle needs).
MFLOPs are multiply-accumulates of convolutions and the classifier, in millions.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from nasx.arch import Arch, Cost
from nasx.spaces.additive import AdditiveSearchSpace
from nasx.ops import SlicedBranch

BLOCKS = ("shuffle3", "shuffle5", "shuffle7", "xception")
KERNELS = (3, 5, 7, 3)
MID_SCALES = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def _main_spec(inp: int, outputs: int, stride: int, block: int) -> list[tuple]:
    if BLOCKS[block] != "xception":
        k = KERNELS[block]
        return [("conv", inp, "mid", 1, 1, False), ("bn", "mid"), ("relu",),
                ("conv", "mid", "mid", k, stride, True), ("bn", "mid"),
                ("conv", "mid", outputs, 1, 1, False), ("bn", outputs), ("relu",)]
    return [("conv", inp, inp, 3, stride, True), ("bn", inp),
            ("conv", inp, "mid", 1, 1, False), ("bn", "mid"), ("relu",),
            ("conv", "mid", "mid", 3, 1, True), ("bn", "mid"),
            ("conv", "mid", "mid", 1, 1, False), ("bn", "mid"), ("relu",),
            ("conv", "mid", "mid", 3, 1, True), ("bn", "mid"),
            ("conv", "mid", outputs, 1, 1, False), ("bn", outputs), ("relu",)]


def _proj_spec(inp: int, block: int) -> list[tuple]:
    return [("conv", inp, inp, KERNELS[block], 2, True), ("bn", inp),
            ("conv", inp, inp, 1, 1, False), ("bn", inp), ("relu",)]


def _spec_cost(spec: list[tuple], in_channels: int, mid: int, size: int) -> tuple[float, int, int]:
    """(multiply-accumulates, parameters, output size) of a branch spec on a ``size``×``size`` input."""
    macs, params, c = 0, 0, in_channels
    for op in spec:
        if op[0] == "conv":
            _, _, c_out, k, stride, dw = op
            out = c if dw else (mid if c_out == "mid" else c_out)
            size = (size - 1) // stride + 1
            weights = out * k * k * (1 if dw else c)
            macs += weights * size * size
            params += weights
            c = out
        elif op[0] == "bn":
            params += 2 * c
    return macs, params, size


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SPOS's channel shuffle: split the channels into the interleaved even and odd halves."""
    n, c, h, w = x.shape
    x = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    return x[0], x[1]


class ShuffleUnit(nn.Module):
    """A static ShuffleNetV2 / Shuffle-Xception unit: identity (stride 1) or projection (stride 2) + main."""

    def __init__(self, stride: int, main: nn.Module, proj: nn.Module | None):
        super().__init__()
        self.stride, self.main, self.proj = stride, main, proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x_proj, x = _split(x)
            return torch.cat((x_proj, self.main(x)), 1)
        return torch.cat((self.proj(x), self.main(x)), 1)


class SuperShuffleUnit(nn.Module):
    """One block choice of one layer, at max width; ``forward(x, mid)`` runs it at ``mid`` middle channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, block: int, max_mid: int):
        super().__init__()
        self.stride = stride
        self.inp = in_channels if stride == 2 else in_channels // 2
        self.main = SlicedBranch(_main_spec(self.inp, out_channels - self.inp, stride, block), max_mid)
        self.proj = SlicedBranch(_proj_spec(self.inp, block), max_mid) if stride == 2 else None

    def forward(self, x: torch.Tensor, mid: int) -> torch.Tensor:
        if self.stride == 1:
            x_proj, x = _split(x)
            return torch.cat((x_proj, self.main(x, mid)), 1)
        return torch.cat((self.proj(x, mid), self.main(x, mid)), 1)

    def extract(self, mid: int) -> ShuffleUnit:
        proj = self.proj.extract(self.inp, mid) if self.proj is not None else None
        return ShuffleUnit(self.stride, self.main.extract(self.inp, mid), proj)


class ShuffleNet(nn.Module):
    """A static network of the space: stem, units, 1×1 conv, global pooling, dropout, linear classifier."""

    def __init__(self, stem: nn.Module, units: Sequence[nn.Module], last: nn.Module, classifier: nn.Module):
        super().__init__()
        self.stem, self.units, self.last = stem, nn.Sequential(*units), last
        self.classifier = classifier  # embedding -> logits: dropout, then the linear layer

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, last_channels) pooled features (the embedding)."""
        return self.last(self.units(self.stem(x))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class ShuffleNetSpace(AdditiveSearchSpace):
    """The space; its geometry is config (``conf/space/shufflenet_*.yaml``); the data sets channels and classes."""

    def __init__(self, name: str = "shufflenet_spos", stage_repeats: Sequence[int] = (4, 4, 8, 4),
                 stage_channels: Sequence[int] = (64, 160, 320, 640), stem_channels: int = 16,
                 last_channels: int = 1024, width_scale: float = 1.0, mid_scales: Sequence[float] = MID_SCALES,
                 input_size: int = 224, stem_stride: int = 2, dropout: float = 0.1, in_channels: int = 3,
                 num_classes: int = 1000):
        self.name = name
        scale = lambda c: max(4, int(round(c * width_scale / 4)) * 4)  # noqa: E731
        self.stem_channels, self.last_channels = scale(stem_channels), scale(last_channels)
        self.stage_channels = [scale(c) for c in stage_channels]
        self.stage_repeats = list(stage_repeats)
        self.mid_scales = list(mid_scales)
        self.input_size, self.stem_stride, self.dropout = input_size, stem_stride, dropout
        self.in_channels, self.num_classes = in_channels, num_classes

        # (in, out, stride, input size) per layer
        self.layers: list[tuple[int, int, int, int]] = []
        c = self.stem_channels
        size = (input_size - 1) // stem_stride + 1
        for repeats, out in zip(self.stage_repeats, self.stage_channels):
            if out <= c:
                raise ValueError(f"space '{name}': stage width {out} must exceed its input width {c}")
            for i in range(repeats):
                stride = 2 if i == 0 else 1
                self.layers.append((c, out, stride, size))
                c, size = out, (size - 1) // stride + 1
        self.mids = [[max(1, round(out // 2 * s)) for s in self.mid_scales] for _, out, _, _ in self.layers]
        self.genes = {}
        for i in range(len(self.layers)):
            self.genes[f"b{i}"] = len(BLOCKS)
            self.genes[f"w{i}"] = len(self.mid_scales)
        self._build_cost_tables(size)

    def _build_cost_tables(self, final_size: int) -> None:
        s1 = (self.input_size - 1) // self.stem_stride + 1
        c_last_in = self.stage_channels[-1]
        fixed_macs = self.in_channels * self.stem_channels * 9 * s1 * s1 \
            + c_last_in * self.last_channels * final_size ** 2 + self.last_channels * self.num_classes
        fixed_params = self.in_channels * self.stem_channels * 9 + 2 * self.stem_channels \
            + c_last_in * self.last_channels + 2 * self.last_channels + self.last_channels * self.num_classes
        units = []
        for i, (c_in, c_out, stride, size) in enumerate(self.layers):
            inp = c_in if stride == 2 else c_in // 2
            table = {}
            for b in range(len(BLOCKS)):
                for w, mid in enumerate(self.mids[i]):
                    macs, params, _ = _spec_cost(_main_spec(inp, c_out - inp, stride, b), inp, mid, size)
                    if stride == 2:
                        m2, p2, _ = _spec_cost(_proj_spec(inp, b), inp, mid, size)
                        macs, params = macs + m2, params + p2
                    table[(b, w)] = (macs / 1e6, params)
            units.append(((f"b{i}", f"w{i}"), table))
        self._set_cost_tables(Cost(fixed_macs / 1e6, fixed_params), units)

    def supernet(self) -> "ShuffleNetSupernet":
        return ShuffleNetSupernet(self)

    def describe(self, arch: Arch) -> str:
        """Human-readable layer list, e.g. ``shuffle5×1.2 | xception×0.4 | …``."""
        c = arch.choices()
        return " | ".join(f"{BLOCKS[c[2 * i]]}×{self.mid_scales[c[2 * i + 1]]:g}" for i in range(len(self.layers)))


class ShuffleNetSupernet(nn.Module):
    """``forward(x, arch)`` runs the path of ``arch``; ``forward(x, None)`` is SPOS's warm-up: every layer outputs
    the mean of its four blocks at the largest width [seed]."""

    def __init__(self, space: ShuffleNetSpace):
        super().__init__()
        self.space = space
        self.stem = nn.Sequential(
            nn.Conv2d(space.in_channels, space.stem_channels, 3, space.stem_stride, 1, bias=False),
            nn.BatchNorm2d(space.stem_channels), nn.ReLU(inplace=True))
        self.layers = nn.ModuleList(
            nn.ModuleList(SuperShuffleUnit(c_in, c_out, stride, b, max(mids)) for b in range(len(BLOCKS)))
            for (c_in, c_out, stride, _), mids in zip(space.layers, space.mids))
        self.last = nn.Sequential(nn.Conv2d(space.stage_channels[-1], space.last_channels, 1, bias=False),
                                  nn.BatchNorm2d(space.last_channels), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(space.dropout),
                                        nn.Linear(space.last_channels, space.num_classes, bias=False))

    def forward_features(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        x = self.stem(x)
        if arch is None:
            for i, blocks in enumerate(self.layers):
                mid = self.space.mids[i][-1]
                x = torch.stack([blk(x, mid) for blk in blocks]).mean(0)
        else:
            c = arch.choices()
            for i, blocks in enumerate(self.layers):
                x = blocks[c[2 * i]](x, self.space.mids[i][c[2 * i + 1]])
        return self.last(x).mean((2, 3))

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        return self.classifier(self.forward_features(x, arch))

    def extract(self, arch: Arch) -> ShuffleNet:
        arch = self.space.validate(arch)
        c = arch.choices()
        units = [blocks[c[2 * i]].extract(self.space.mids[i][c[2 * i + 1]]) for i, blocks in enumerate(self.layers)]
        return ShuffleNet(copy.deepcopy(self.stem), units, copy.deepcopy(self.last), copy.deepcopy(self.classifier))
