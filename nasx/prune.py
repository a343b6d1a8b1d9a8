"""Filter pruning of the gallery model for CMP-NAS's weight-level compatibility study (supplementary Tab. 4).

φq = φg with filters pruned from the first two layers (conv1, conv2) of every bottleneck; each block's input and
output width, and so the residual additions, the neck and the classifier, are unchanged. Two criteria:

* ``"l1"`` — Li et al., "Pruning Filters for Efficient ConvNets" (ICLR'17): keep the filters of largest L1 norm.
  conv2's filters are ranked by their L1 norm over *all* their input channels, before conv1's pruned channels are
  removed (the paper's "independent" strategy). Weights of the kept filters are copied, nothing is retrained.
* ``"channel"`` — He et al., "Channel Pruning for Accelerating Very Deep Neural Networks" (ICCV'17): pick the input
  channels of the *next* layer (conv2 for conv1's filters, conv3 for conv2's) that best reconstruct that layer's
  output on calibration images, then refit the next layer's weights on the kept channels by least squares. As in
  the paper, the inputs come from the already-pruned network and the targets from the original one, block by
  block, so later layers compensate earlier errors. nasx's simplifications: greedy backward elimination (as in
  ThiNet, Luo et al. ICCV'17) minimising ||Y − Σ_{c∈S} Y_c||² replaces the LASSO selection; every output position of
  the calibration batch is used instead of 10 sampled positions per image; and the refit is the least-squares
  solution closest to the kept weights (well defined when channels are dead on the calibration batch).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasx.errors import ConfigError
from nasx.models.resnet import Bottleneck, ResNetEmbedding

METHODS = ("l1", "channel")


def prune_gallery(model: ResNetEmbedding, amount: float, method: str = "l1",
                  calibration: Tensor | None = None) -> ResNetEmbedding:
    """A pruned copy of ``model`` (which is left untouched) keeping ``max(1, round((1-amount)·width))`` filters of
    each bottleneck's conv1 and conv2. ``calibration``: a batch of images, required by ``method="channel"``."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ConfigError(f"prune.amount must be a fraction in [0, 1), got {amount!r}")
    if method not in METHODS:
        raise ConfigError(f"prune.method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "channel" and calibration is None:
        raise ConfigError("prune.calibration: method 'channel' needs a batch of calibration images")
    pruned = copy.deepcopy(model)

    def kept(n: int) -> int:
        return max(1, round((1 - amount) * n))

    if method == "l1":
        for b in pruned.blocks:
            keep1 = l1_keep(b.conv1, kept(b.conv1.out_channels))
            keep2 = l1_keep(b.conv2, kept(b.conv2.out_channels))
            prune_block(b, keep1, keep2)
        return pruned
    modes = {name: m.training for name, m in pruned.named_modules()}
    pruned.eval()
    with torch.no_grad():
        x_orig = x_pruned = pruned.stem(calibration)
        for b in pruned.blocks:
            original = copy.deepcopy(b)
            _channel_prune_block(b, original, x_pruned, x_orig, kept(b.conv1.out_channels),
                                 kept(b.conv2.out_channels))
            x_orig, x_pruned = original(x_orig), b(x_pruned)
    for name, m in pruned.named_modules():
        m.training = modes[name]
    return pruned


def l1_keep(conv: nn.Conv2d, n: int) -> Tensor:
    """Indices (ascending) of the ``n`` filters of ``conv`` with the largest L1 norm (ties: lower index first)."""
    norms = conv.weight.detach().abs().sum((1, 2, 3))
    return torch.argsort(-norms, stable=True)[:n].sort().values


def prune_block(block: Bottleneck, keep1: Tensor, keep2: Tensor) -> None:
    """Keep, in place, filters ``keep1`` of conv1 and ``keep2`` of conv2 (with their BN entries and the matching
    input channels of conv2 and conv3), copying the kept weights."""
    block.conv1, block.bn1 = _slice_conv(block.conv1, out_idx=keep1), _slice_bn(block.bn1, keep1)
    block.conv2 = _slice_conv(block.conv2, out_idx=keep2, in_idx=keep1)
    block.bn2 = _slice_bn(block.bn2, keep2)
    block.conv3 = _slice_conv(block.conv3, in_idx=keep2)


def select_channels(conv: nn.Conv2d, x: Tensor, y: Tensor, n: int) -> Tensor:
    """Indices (ascending) of ``n`` input channels S of ``conv`` chosen by greedy backward elimination to minimise
    ||y − Σ_{c∈S} conv_c(x_c)||², where conv_c is ``conv`` restricted to input channel c (bias-free convs).

    With patches X (P, C, k) and weights W (O, C, k), the error is ||y||² − 2 Σ_S b_c + Σ_{c,d∈S} G_cd with
    b_c = ⟨y, Y_c⟩ and G_cd = ⟨Y_c, Y_d⟩ = Σ_{k,l} (WᵀW)_{ck,dl} (XᵀX)_{ck,dl}: computed without materialising Y_c.
    """
    xf, yf, wf = _patches(conv, x), _flat_out(y), conv.weight.detach().double().flatten(1)
    c = conv.in_channels
    k = xf.shape[1] // c
    gram = ((wf.T @ wf) * (xf.T @ xf)).view(c, k, c, k).sum((1, 3))
    b = ((yf @ wf) * xf).view(len(xf), c, k).sum((0, 2))
    kept = torch.ones(c, dtype=torch.bool)
    g_kept = gram.sum(1)
    for _ in range(c - n):
        # error change when removing c from S: 2 b_c − 2 (G 1_S)_c + G_cc
        delta = (2 * b - 2 * g_kept + gram.diagonal()).masked_fill(~kept, float("inf"))
        drop = int(delta.argmin())
        kept[drop] = False
        g_kept -= gram[:, drop]
    return kept.nonzero().flatten()


def refit_conv(conv: nn.Conv2d, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
    """He et al.'s second step: the weights (O, len(idx), kh, kw) on input channels ``idx`` minimising
    ||y − conv_idx(x_idx)||² by linear least squares over output positions. Of all minimisers, the one closest to
    the kept channels' original weights (minimum-norm change), so that channels dead or collinear on the calibration
    batch keep their weights; a batch with fewer positions than C·kh·kw unknowns is fitted exactly (overfitted)."""
    w = conv.weight.detach()[:, idx]
    xs = _patches(conv, x[:, idx])
    w0 = w.double().flatten(1)
    delta = torch.linalg.lstsq(xs, _flat_out(y) - xs @ w0.T, driver="gelsd").solution
    return (w0 + delta.T).reshape(w.shape).to(w.dtype)


def _channel_prune_block(block: Bottleneck, original: Bottleneck, x_pruned: Tensor, x_orig: Tensor,
                         n1: int, n2: int) -> None:
    """Channel-prune ``block`` in place: inputs from the pruned network (``x_pruned``), targets from ``original``."""
    a1 = torch.relu(block.bn1(block.conv1(x_pruned)))
    a1_orig = torch.relu(original.bn1(original.conv1(x_orig)))
    y2 = original.conv2(a1_orig)
    keep1 = select_channels(block.conv2, a1, y2, n1)
    w2 = refit_conv(block.conv2, a1, y2, keep1)
    conv2 = block.conv2
    a2 = torch.relu(block.bn2(F.conv2d(a1[:, keep1], w2, None, conv2.stride, conv2.padding, conv2.dilation)))
    y3 = original.conv3(torch.relu(original.bn2(y2)))
    keep2 = select_channels(block.conv3, a2, y3, n2)
    w3 = refit_conv(block.conv3, a2, y3, keep2)
    prune_block(block, keep1, keep2)
    block.conv2.weight.data.copy_(w2[keep2])
    block.conv3.weight.data.copy_(w3)


def _patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Input patches of ``conv`` as (positions, C·kh·kw), channel-major like ``conv.weight.flatten(1)``."""
    cols = F.unfold(x.double(), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return cols.transpose(1, 2).flatten(0, 1)


def _flat_out(y: Tensor) -> Tensor:
    """A conv output (N, O, H, W) as (positions, O)."""
    return y.double().flatten(2).transpose(1, 2).flatten(0, 1)


def _slice_conv(conv: nn.Conv2d, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> nn.Conv2d:
    w = conv.weight.detach()
    w = w if out_idx is None else w[out_idx]
    w = w if in_idx is None else w[:, in_idx]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=False).to(w.device, w.dtype)
    new.weight.data.copy_(w)
    return new.train(conv.training)


def _slice_bn(bn: nn.BatchNorm2d, idx: Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum).to(bn.weight.device, bn.weight.dtype)
    for name in ("weight", "bias"):
        getattr(new, name).data.copy_(getattr(bn, name).detach()[idx])
    for name in ("running_mean", "running_var"):
        getattr(new, name).copy_(getattr(bn, name)[idx])
    new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)
