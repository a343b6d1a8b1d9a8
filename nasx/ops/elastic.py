"""Once-for-all's elastic MobileNetV3 block [ref: ``mit-han-lab/once-for-all``, ``ofa/imagenet_classification/
elastic_nn/modules/dynamic_layers.py`` and ``dynamic_op.py``; nasx's own code].

* :class:`ElasticDepthwise`: a depthwise conv whose kernel k ∈ ``kernels`` is taken from one k_max×k_max weight:
  the centre k'×k' of the next larger kernel, passed through a learned (k'²×k'²) *kernel transformation matrix*
  (initialised to the identity), step by step from k_max down to k — for {3, 5, 7}: 7→5 through a 25×25 matrix,
  5→3 through a 9×9 one, shared by all channels of the layer (OFA's ``KERNEL_TRANSFORM_MODE = 1``).
* :class:`ElasticSE`: squeeze-and-excitation on the leading ``mid`` channels, reduction 4, its hidden width
  ``make_divisible(mid // 4)``.
* :class:`ElasticMBConv`: 1×1 expand (in → mid) + BN + act, depthwise (k, stride) + BN + act, SE, 1×1 project
  (mid → out) + BN, identity shortcut when stride 1 and in = out. ``mid = make_divisible(round(in · e))``, so every
  smaller expand ratio uses the leading channels of the larger ones' weights (and BN statistics).

Every op records the box it used (``mark_extent``) and ``extract``s plain modules holding copies, so an extracted
block computes in eval mode what the elastic block computes.

Channel sorting [ref: OFA's ``re_organize_middle_weights``]: before the elastic-expand phases OFA permutes every
block's middle channels so that the most important come first (importance: the L1 norm of the project conv's weights
reading the channel), which makes the leading channels a small expand ratio keeps the ones that matter most. A
permutation of middle channels leaves the full network's function unchanged. Channels already trained as the prefix
of a smaller ratio (``bands``) keep their band (OFA's ``expand_ratio_stage``), and are only re-sorted inside it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasx.ops.sliced import SlicedBatchNorm2d, SlicedConv2d, leading, mark_extent

SE_REDUCTION = 4


def importance_order(importance: torch.Tensor, bands: Sequence[int] = ()) -> torch.Tensor:
    """The channel order OFA's sort gives: descending importance, but a channel stays in its band, the bands being
    cut at the widths in ``bands`` (prefixes already trained as smaller widths). OFA adds −1e5 per band to the
    importance; here the sort is by (band, −importance), which is the same order without a magic constant."""
    n = importance.numel()
    band = torch.zeros(n, dtype=torch.long)
    for edge in sorted({int(b) for b in bands if 0 < int(b) < n}):
        band[edge:] += 1
    order = torch.argsort(-importance.detach().float().cpu(), stable=True)
    return order[torch.argsort(band[order], stable=True)]


class ChannelPermuter:
    """``permute(t, dim, idx)``: reorder tensor ``t`` in place along ``dim``; for a parameter, also every optimizer
    state tensor of its shape (momentum, Adam moments, per-entry step counts), so training continues as if the
    channels had always been in that order."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer] = ()):
        self.optimizers = list(optimizers)

    @torch.no_grad()
    def __call__(self, t: torch.Tensor, dim: int, idx: torch.Tensor) -> None:
        idx = idx.to(t.device)
        t.copy_(t.index_select(dim, idx))
        for opt in self.optimizers:
            state = opt.state.get(t) if isinstance(t, nn.Parameter) else None
            for v in (state or {}).values():
                if torch.is_tensor(v) and v.shape == t.shape:
                    v.copy_(v.index_select(dim, idx.to(v.device)))

    def bn(self, bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            if t is not None:
                self(t, 0, idx)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """OFA's (and MobileNet's) channel rounding: the nearest multiple of ``divisor``, never 10 % below ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "h_swish":
        return nn.Hardswish(inplace=True)
    raise ValueError(f"unknown activation {name!r} (relu or h_swish)")


def _centre(w: torch.Tensor, k: int) -> torch.Tensor:
    start = (w.shape[-1] - k) // 2
    return w[..., start:start + k, start:start + k]


class ElasticDepthwise(nn.Module):
    """Depthwise conv with an elastic kernel; ``forward(x, k)`` on the leading ``x.shape[1]`` channels."""

    def __init__(self, max_channels: int, kernels: Sequence[int], stride: int):
        super().__init__()
        self.kernels = sorted(int(k) for k in kernels)
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"elastic kernels must be odd, got {self.kernels}")
        self.stride, self.max_channels = stride, max_channels
        self.conv = SlicedConv2d(max_channels, max_channels, self.kernels[-1], stride, depthwise=True)
        # one matrix per step down, named as OFA names them ("7to5"); identity at first
        self.transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for big, small in zip(self.kernels[:0:-1], self.kernels[-2::-1])})

    def weight(self, channels: int, k: int) -> torch.Tensor:
        """(channels, 1, k, k): the transformed kernel."""
        if k not in self.kernels:
            raise ValueError(f"kernel {k} is not one of {self.kernels}")
        mark_extent(self.conv.weight, (channels,))
        w = leading(self.conv.weight, (channels,))
        for big, small in zip(self.kernels[:0:-1], self.kernels[-2::-1]):
            if big <= k:
                break
            w = F.linear(_centre(w, small).reshape(channels, small * small), self.transforms[f"{big}to{small}"])
            w = w.view(channels, 1, small, small)
        return w

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        c = x.shape[1]
        return F.conv2d(x, self.weight(c, k), None, self.stride, k // 2, 1, c)

    @torch.no_grad()
    def extract(self, channels: int, k: int) -> nn.Conv2d:
        conv = nn.Conv2d(channels, channels, k, self.stride, k // 2, groups=channels, bias=False)
        conv.weight.copy_(self.weight(channels, k))
        return conv


class SqueezeExcite(nn.Module):
    """Static SE: global pool → 1×1 reduce + bias → ReLU → 1×1 expand + bias → hard sigmoid → scale."""

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d):
        super().__init__()
        self.reduce, self.expand = reduce, expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * F.hardsigmoid(self.expand(s))


class ElasticSE(nn.Module):
    def __init__(self, max_channels: int, divisor: int):
        super().__init__()
        self.divisor = divisor
        hidden = make_divisible(max_channels // SE_REDUCTION, divisor)
        self.reduce = nn.Conv2d(max_channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, max_channels, 1)

    def hidden(self, channels: int) -> int:
        return make_divisible(channels // SE_REDUCTION, self.divisor)

    def _sliced(self, channels: int):
        h = self.hidden(channels)
        for p, box in ((self.reduce.weight, (h, channels)), (self.reduce.bias, (h,)), (self.expand.weight, (channels, h)),
                       (self.expand.bias, (channels,))):
            mark_extent(p, box)
        return (leading(self.reduce.weight, (h, channels)), leading(self.reduce.bias, (h,)),
                leading(self.expand.weight, (channels, h)), leading(self.expand.bias, (channels,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rw, rb, ew, eb = self._sliced(x.shape[1])
        s = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), rw, rb))
        return x * F.hardsigmoid(F.conv2d(s, ew, eb))

    @torch.no_grad()
    def extract(self, channels: int) -> SqueezeExcite:
        h = self.hidden(channels)
        reduce, expand = nn.Conv2d(channels, h, 1), nn.Conv2d(h, channels, 1)
        rw, rb, ew, eb = self._sliced(channels)
        for p, v in ((reduce.weight, rw), (reduce.bias, rb), (expand.weight, ew), (expand.bias, eb)):
            p.copy_(v)
        return SqueezeExcite(reduce, expand)


class MBConv(nn.Module):
    """A static MobileNetV3 block (the extracted form of :class:`ElasticMBConv`)."""

    def __init__(self, expand: nn.Module | None, depthwise: nn.Module, se: nn.Module | None, project: nn.Module,
                 residual: bool):
        super().__init__()
        self.expand, self.depthwise, self.se, self.project = expand, depthwise, se, project
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.depthwise(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return h + x if self.residual else h


class ElasticMBConv(nn.Module):
    """``forward(x, k, e)``: the block at depthwise kernel k and expand ratio e (``expands``); ``e = 1`` blocks have
    no expand conv (MobileNetV3's first block)."""

    def __init__(self, cin: int, cout: int, stride: int, kernels: Sequence[int], expands: Sequence[float], act: str,
                 use_se: bool, divisor: int):
        super().__init__()
        self.cin, self.cout, self.stride, self.act, self.divisor = cin, cout, stride, act, divisor
        self.expands = sorted(float(e) for e in expands)
        self.mids = {e: self.mid(e) for e in self.expands}
        max_mid = max(self.mids.values())
        self.has_expand = self.expands != [1.0]
        if self.has_expand:
            self.expand_conv = SlicedConv2d(cin, max_mid, 1)
            self.expand_bn = SlicedBatchNorm2d(max_mid)
        self.dw = ElasticDepthwise(max_mid, kernels, stride)
        self.dw_bn = SlicedBatchNorm2d(max_mid)
        self.se = ElasticSE(max_mid, divisor) if use_se else None
        self.project = SlicedConv2d(max_mid, cout, 1)
        self.project_bn = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout
        self._act = activation(act)

    def mid(self, e: float) -> int:
        return self.cin if e == 1.0 else make_divisible(round(self.cin * e), self.divisor)

    def forward(self, x: torch.Tensor, k: int, e: float) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = self._act(self.expand_bn(self.expand_conv(x, self.mids[e])))
        h = self._act(self.dw_bn(self.dw(h, k)))
        if self.se is not None:
            h = self.se(h)
        h = self.project_bn(self.project(h, self.cout))
        return h + x if self.residual else h

    @torch.no_grad()
    def reorganize_middle(self, bands: Sequence[int], permute: ChannelPermuter) -> None:
        """OFA's sort of this block's middle channels (see the module docstring); nothing for a block without an
        expand conv (its middle channels are its input's: OFA skips the first block too)."""
        if not self.has_expand:
            return
        idx = importance_order(self.project.weight.abs().sum(dim=(0, 2, 3)), bands)
        permute(self.project.weight, 1, idx)
        if self.se is not None:
            se = self.se
            permute(se.expand.weight, 0, idx)
            permute(se.expand.bias, 0, idx)
            permute(se.reduce.weight, 1, idx)
            hidden = importance_order(se.expand.weight.abs().sum(dim=(0, 2, 3)))  # SE's own hidden units, unbanded
            permute(se.expand.weight, 1, hidden)
            permute(se.reduce.weight, 0, hidden)
            permute(se.reduce.bias, 0, hidden)
        permute.bn(self.dw_bn, idx)
        permute(self.dw.conv.weight, 0, idx)
        permute.bn(self.expand_bn, idx)
        permute(self.expand_conv.weight, 0, idx)

    @torch.no_grad()
    def extract(self, k: int, e: float) -> MBConv:
        mid = self.mids[e]
        expand = None
        if self.has_expand:
            expand = nn.Sequential(self.expand_conv.extract(self.cin, mid), self.expand_bn.extract(mid),
                                   activation(self.act))
        dw = nn.Sequential(self.dw.extract(mid, k), self.dw_bn.extract(mid), activation(self.act))
        se = self.se.extract(mid) if self.se is not None else None
        bn = nn.BatchNorm2d(self.cout, self.project_bn.eps, self.project_bn.momentum)
        bn.load_state_dict(self.project_bn.state_dict())
        return MBConv(expand, dw, se, nn.Sequential(self.project.extract(mid, self.cout), bn), self.residual)
