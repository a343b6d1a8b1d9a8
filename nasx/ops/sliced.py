"""Sliced convolution and batch norm (OFA's ``weight[:out, :in]``).

A smaller width uses the leading sub-tensor of one max-size weight, so a step costs what the sampled subnet costs.
Each forward that builds a graph records the leading box of each parameter it used (``mark_extent``); the
:class:`nasx.training.optim.SlicedSGD` optimizer reads the box so that weights outside the sampled subnet get no
update at all — no momentum drift, no weight decay — as SPOS and MixPath require.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_EXTENT = "_nasx_extent"


def mark_extent(p: torch.Tensor, extent: tuple[int, ...]) -> None:
    """Record that the leading box ``p[:extent[0], :extent[1], ...]`` took part in the current step."""
    if not (torch.is_grad_enabled() and p.requires_grad):
        return
    old = getattr(p, _EXTENT, None)
    if old is not None and old != extent:
        extent = tuple(max(a, b) for a, b in zip(old, extent))
    setattr(p, _EXTENT, extent)


def leading(t: torch.Tensor, extent: tuple[int, ...]) -> torch.Tensor:
    """``t[:extent[0], :extent[1], ...]``, slicing only the dimensions not taken whole: each slice is one more autograd
    node (and, in backward, a zero-filled full-size gradient), which a step of a small subnet notices."""
    for dim, e in enumerate(extent):
        if e != t.shape[dim]:
            t = t.narrow(dim, 0, e)
    return t


def active_extent(p: torch.Tensor) -> tuple[int, ...] | None:
    """The recorded box, or ``None`` if ``p`` was used whole (or not recorded)."""
    return getattr(p, _EXTENT, None)


def clear_extents(params) -> None:
    for p in params:
        if hasattr(p, _EXTENT):
            delattr(p, _EXTENT)


class SlicedConv2d(nn.Module):
    """A conv whose output (and, unless depthwise, input) channels are the leading ones of a max-size weight.

    ``forward(x, out_channels)``: ``x`` is (N, C_in, H, W) with C_in ≤ ``max_in``; depthwise convs use
    ``out_channels = C_in`` and ``groups = C_in``.
    """

    def __init__(self, max_in: int, max_out: int, kernel_size: int, stride: int = 1, depthwise: bool = False):
        super().__init__()
        if depthwise and max_in != max_out:
            raise ValueError("a depthwise conv has as many outputs as inputs")
        self.max_in, self.max_out, self.kernel_size, self.stride = max_in, max_out, kernel_size, stride
        self.depthwise = depthwise
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def sliced_weight(self, in_channels: int, out_channels: int) -> torch.Tensor:
        if self.depthwise:
            w = self.weight if out_channels == self.max_out else self.weight[:out_channels]
            mark_extent(self.weight, (out_channels,))
        else:
            w = self.weight if (out_channels, in_channels) == (self.max_out, self.max_in) else \
                self.weight[:out_channels, :in_channels]
            mark_extent(self.weight, (out_channels, in_channels))
        return w

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        c_in = x.shape[1]
        out_channels = c_in if self.depthwise else (out_channels or self.max_out)
        w = self.sliced_weight(c_in, out_channels)
        return F.conv2d(x, w, None, self.stride, self.padding, 1, c_in if self.depthwise else 1)

    @torch.no_grad()
    def extract(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding a copy of the sliced weight."""
        groups = in_channels if self.depthwise else 1
        conv = nn.Conv2d(in_channels, out_channels, self.kernel_size, self.stride, self.padding, groups=groups,
                         bias=False)
        w = self.weight[:out_channels] if self.depthwise else self.weight[:out_channels, :in_channels]
        conv.weight.copy_(w)
        return conv

    def extra_repr(self) -> str:
        kind = "depthwise " if self.depthwise else ""
        return f"{kind}{self.max_in}->{self.max_out}, k={self.kernel_size}, stride={self.stride}"


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the leading ``C`` channels of its max-size affine parameters and running statistics.

    Running statistics of the slice are updated in place (the slices are views), so recalibrating a subnet resets
    and recomputes exactly its channels. ``momentum=None`` gives the exact cumulative average, as in
    ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        full = c == self.num_features
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            factor = 0.0
        use_batch_stats = self.training or not self.track_running_stats
        if self.affine:
            mark_extent(self.weight, (c,))
            mark_extent(self.bias, (c,))
        return F.batch_norm(
            x,
            self.running_mean if full else self.running_mean[:c],
            self.running_var if full else self.running_var[:c],
            self.weight if full or not self.affine else self.weight[:c],
            self.bias if full or not self.affine else self.bias[:c],
            use_batch_stats, factor, self.eps)

    @torch.no_grad()
    def extract(self, channels: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(channels, self.eps, self.momentum, self.affine, self.track_running_stats)
        if self.affine:
            bn.weight.copy_(self.weight[:channels])
            bn.bias.copy_(self.bias[:channels])
        if self.track_running_stats:
            bn.running_mean.copy_(self.running_mean[:channels])
            bn.running_var.copy_(self.running_var[:channels])
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class SlicedBranch(nn.Module):
    """A chain of sliced convs, batch norms and ReLUs whose variable channel count is called ``mid``.

    ``spec`` lists ``("conv", c_in, c_out, kernel, stride, depthwise)``, ``("bn", c)`` and ``("relu",)`` where a
    channel count is an ``int`` or the string ``"mid"`` (then ``max_mid`` is allocated). ``forward(x, mid)`` runs
    the chain at ``mid`` middle channels; ``extract(mid)`` returns the same chain as plain modules.
    """

    def __init__(self, spec: list[tuple], max_mid: int):
        super().__init__()
        size = lambda c: max_mid if c == "mid" else c  # noqa: E731
        self.ops = nn.ModuleList()
        self._plan: list[tuple[str, object]] = []  # (kind, channel symbol of the op's output)
        for op in spec:
            if op[0] == "conv":
                _, c_in, c_out, k, stride, dw = op
                self.ops.append(SlicedConv2d(size(c_in), size(c_out), k, stride, depthwise=dw))
                self._plan.append(("conv", c_out))
            elif op[0] == "bn":
                self.ops.append(SlicedBatchNorm2d(size(op[1])))
                self._plan.append(("bn", op[1]))
            elif op[0] == "relu":
                self.ops.append(nn.ReLU(inplace=True))
                self._plan.append(("relu", None))
            else:
                raise ValueError(f"unknown op {op[0]!r}")

    def forward(self, x: torch.Tensor, mid: int) -> torch.Tensor:
        for op, (kind, c_out) in zip(self.ops, self._plan):
            if kind == "conv":
                x = op(x, mid if c_out == "mid" else c_out)
            else:
                x = op(x)
        return x

    def extract(self, in_channels: int, mid: int) -> nn.Sequential:
        layers, c = [], in_channels
        for op, (kind, c_out) in zip(self.ops, self._plan):
            if kind == "conv":
                out = c if op.depthwise else (mid if c_out == "mid" else c_out)
                layers.append(op.extract(c, out))
                c = out
            elif kind == "bn":
                layers.append(op.extract(c))
            else:
                layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)
