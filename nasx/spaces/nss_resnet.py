"""The NSS expanded search space: a CIFAR ResNet of basic blocks with free depth and width per stage (METHODS.md §2).

Stem: 3×3 conv (``in_channels`` → ``stem_channels``), BN, ReLU [seed]. Body: 3 stages of basic residual blocks with
strides (1, 2, 2); stage i has depth d_i in 1..``max_depth`` and width w_i in 1..``max_width`` [seed]. A block is
conv3×3(stride s) BN ReLU conv3×3 BN, plus the shortcut, then ReLU. Head: global average pool, linear (with bias).
Convs have no bias. [nasx] The first block of every stage always has a projection shortcut (1×1 conv, stride s, BN)
and later blocks use identity: this keeps the cost a polynomial in (d_i, w_i) with no "does the width change"
indicator terms, so its expectation over a network space has a closed form (:meth:`NSSSpace.expected_mflops`).

Genes, in order: ``d0, w0, d1, w1, d2, w2``; choice c means depth (or width) c + 1.

Network spaces [nasx]: per stage, the expanded space is cut into candidate spaces of ``depth_step`` depths ×
``width_step`` widths, indexed depth-major (``depth_range * n_width_ranges + width_range``).

Weights are shared by channel masking [seed]: one super kernel per layer at ``max_width`` and ``max_depth`` blocks
per stage; width w keeps the first w channels and zeroes the rest, depth d takes the output of block d.
MFLOPs are multiply-accumulates of convolutions and the classifier, in millions.
"""
from __future__ import annotations

import copy
import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasx.arch import Arch, Budget, Cost, SearchSpace
from nasx.errors import InfeasibleBudgetError
from nasx.ops import mark_extent

STAGE_STRIDES = (1, 2, 2)  # CIFAR ResNet


class BasicBlock(nn.Module):
    """A static basic residual block (N, c_in, H, W) -> (N, c_out, H/stride, W/stride)."""

    def __init__(self, c_in: int, c_out: int, stride: int, project: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)) \
            if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class NSSResNet(nn.Module):
    """A static network of the space: stem, 3 stages of :class:`BasicBlock`, global pooling, linear classifier."""

    def __init__(self, stem: nn.Module, stages: Sequence[Sequence[nn.Module]], classifier: nn.Linear):
        super().__init__()
        self.stem, self.classifier = stem, classifier
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, w_2) pooled features (the embedding)."""
        return self.stages(self.stem(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class NSSSpace(SearchSpace):
    """The expanded space and its partition into candidate network spaces; geometry and granularity are config."""

    def __init__(self, name: str = "nss_expanded", max_depth: int = 16, max_width: int = 512, depth_step: int = 4,
                 width_step: int = 64, stem_channels: int = 16, input_size: int = 32, in_channels: int = 3,
                 num_classes: int = 10):
        for key, v in dict(max_depth=max_depth, max_width=max_width, depth_step=depth_step, width_step=width_step,
                           stem_channels=stem_channels, input_size=input_size).items():
            if v < 1:
                raise ValueError(f"space '{name}': {key} must be positive, got {v}")
        if max_depth % depth_step or max_width % width_step:
            raise ValueError(f"space '{name}': max_depth {max_depth} must be a multiple of depth_step {depth_step} "
                             f"and max_width {max_width} a multiple of width_step {width_step}")
        self.name = name
        self.max_depth, self.max_width, self.depth_step, self.width_step = max_depth, max_width, depth_step, width_step
        self.stem_channels, self.input_size = stem_channels, input_size
        self.in_channels, self.num_classes = in_channels, num_classes
        self.genes = {}
        for i in range(3):
            self.genes[f"d{i}"] = max_depth
            self.genes[f"w{i}"] = max_width
        self.areas = []  # output H·W of each stage
        size = input_size
        for stride in STAGE_STRIDES:
            size = (size - 1) // stride + 1
            self.areas.append(size * size)
        self.n_width_ranges = max_width // width_step
        self.n_spaces = (max_depth // depth_step) * self.n_width_ranges
        # per candidate space: E[w], E[w²], E[d - 1]·E[w²] (d, w independent and uniform within the space)
        moments = []
        for j in range(self.n_spaces):
            d_lo, d_hi, w_lo, w_hi = self.space_bounds(j)
            ew2 = sum(w * w for w in range(w_lo, w_hi + 1)) / (w_hi - w_lo + 1)
            moments.append(((w_lo + w_hi) / 2, ew2, ((d_lo + d_hi) / 2 - 1) * ew2))
        self._moments = torch.tensor(moments, dtype=torch.float64)  # (n_spaces, 3)

    # -- genes -----------------------------------------------------------------------------------------------------
    def depth(self, arch: Arch, i: int) -> int:
        return arch[f"d{i}"] + 1

    def width(self, arch: Arch, i: int) -> int:
        return arch[f"w{i}"] + 1

    def describe(self, arch: Arch) -> str:
        """Human-readable, e.g. ``depths 3/5/2, widths 64/128/256``."""
        return (f"depths {'/'.join(str(self.depth(arch, i)) for i in range(3))}, "
                f"widths {'/'.join(str(self.width(arch, i)) for i in range(3))}")

    # -- cost: a polynomial in (d_i, w_i) ----------------------------------------------------------------------------
    def _macs_params(self, depths: Sequence[int], widths: Sequence[int]) -> tuple[int, int]:
        c0, size = self.stem_channels, self.input_size
        macs = self.in_channels * c0 * 9 * size * size
        params = self.in_channels * c0 * 9 + 2 * c0
        c_in = c0
        for d, w, area in zip(depths, widths, self.areas):
            # first block: conv1 (9·c_in·w) + 1×1 projection (c_in·w) + conv2 (9·w²); later blocks: 2 × 9·w²
            macs += area * (10 * c_in * w + 9 * w * w + 18 * (d - 1) * w * w)
            params += 10 * c_in * w + 9 * w * w + 6 * w + (d - 1) * (18 * w * w + 4 * w)  # BN: 2 per channel
            c_in = w
        return macs + c_in * self.num_classes, params + c_in * self.num_classes + self.num_classes

    def cost(self, arch: Arch) -> Cost:
        macs, params = self._macs_params([self.depth(arch, i) for i in range(3)],
                                         [self.width(arch, i) for i in range(3)])
        return Cost(macs / 1e6, params)

    def min_cost(self) -> Cost:
        macs, params = self._macs_params((1, 1, 1), (1, 1, 1))
        return Cost(macs / 1e6, params)

    def repair(self, arch: Arch, budget: Budget, rng: random.Random) -> Arch:
        """Shrink randomly chosen genes, each to a random choice in [c // 2, c − 1], until ``arch`` fits.

        Terminates: every step lowers one gene, cost is monotone in every gene, and the all-zero arch costs
        :meth:`min_cost`, which :meth:`check_feasible` has compared with the budget. Halving at most keeps the
        repaired arch near the original instead of collapsing one gene.
        """
        self.check_feasible(budget)
        arch = self.validate(arch)
        while not budget.admits(self.cost(arch)):
            reducible = [n for n, c in arch.genes if c > 0]
            if not reducible:  # a FLOPs and a params bound that the smallest arch meets only one of
                raise InfeasibleBudgetError(f"no architecture of space '{self.name}' fits {budget}")
            gene = rng.choice(reducible)
            c = arch[gene]
            arch = arch.replace(**{gene: rng.randrange(c // 2, c)})
        return arch

    # -- network spaces ----------------------------------------------------------------------------------------------
    def space_bounds(self, j: int) -> tuple[int, int, int, int]:
        """``(d_lo, d_hi, w_lo, w_hi)`` of candidate space ``j``, inclusive and 1-based."""
        if not 0 <= j < self.n_spaces:
            raise ValueError(f"candidate space {j} out of range 0..{self.n_spaces - 1}")
        di, wi = divmod(j, self.n_width_ranges)
        return (di * self.depth_step + 1, (di + 1) * self.depth_step,
                wi * self.width_step + 1, (wi + 1) * self.width_step)

    def corner_archs(self, spaces: Sequence[int] | None = None) -> tuple[Arch, Arch]:
        """The cheapest and the dearest arch of the candidate spaces (every stage at its space's smallest / largest
        depth and width; the whole expanded space when ``spaces`` is None). Cost grows with every depth and width,
        so every arch of those spaces costs between the two."""
        if spaces is None:
            return self.arch([0] * len(self.genes)), self.arch([k - 1 for k in self.genes.values()])
        bounds = [self.space_bounds(j) for j in spaces]
        return (self.arch([v - 1 for b in bounds for v in (b[0], b[2])]),
                self.arch([v - 1 for b in bounds for v in (b[1], b[3])]))

    def sample_in(self, spaces: Sequence[int], rng: random.Random) -> Arch:
        """An arch uniform within candidate space ``spaces[i]`` for each stage i [seed: S1]."""
        if len(spaces) != 3:
            raise ValueError(f"expected one candidate space per stage (3), got {len(spaces)}")
        choices = []
        for j in spaces:
            d_lo, d_hi, w_lo, w_hi = self.space_bounds(j)
            choices += [rng.randint(d_lo, d_hi) - 1, rng.randint(w_lo, w_hi) - 1]
        return self.arch(choices)

    def width_mask(self, width: int) -> torch.Tensor:
        """(max_width,) float mask: 1 on the first ``width`` channels."""
        return (torch.arange(self.max_width) < width).float()

    def candidate_masks(self, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """One arch uniform within every candidate space of every stage, as masks for :meth:`forward_soft`.

        Returns width masks (3, n_spaces, max_width) and one-hot depths (3, n_spaces, max_depth); Gumbel-softmax
        weights g_i over stage i's spaces give ``g_i @ widths[i]`` and ``g_i @ depths[i]``.
        """
        widths = torch.zeros(3, self.n_spaces, self.max_width)
        depths = torch.zeros(3, self.n_spaces, self.max_depth)
        for i in range(3):
            for j in range(self.n_spaces):
                d_lo, d_hi, w_lo, w_hi = self.space_bounds(j)
                widths[i, j, :rng.randint(w_lo, w_hi)] = 1.0
                depths[i, j, rng.randint(d_lo, d_hi) - 1] = 1.0
        return widths, depths

    def expected_mflops(self, probs: torch.Tensor) -> torch.Tensor:
        """Exact E[cost(arch).mflops] (a 0-d tensor, differentiable in ``probs``).

        ``probs`` is (3, n_spaces), row i a distribution over stage i's candidate spaces; spaces are drawn per
        stage independently and the arch uniformly within them. The cost polynomial is linear in each stage's
        monomials w_i, w_i², (d_i − 1)·w_i² and has only the cross term w_{i−1}·w_i, whose expectation factorises
        across independent stages.
        """
        if tuple(probs.shape) != (3, self.n_spaces):
            raise ValueError(f"probs must have shape (3, {self.n_spaces}), got {tuple(probs.shape)}")
        e = probs @ self._moments.to(probs)  # (3, 3): E[w_i], E[w_i²], E[(d_i − 1)·w_i²]
        c0, size = self.stem_channels, self.input_size
        total = probs.new_tensor(float(self.in_channels * c0 * 9 * size * size))
        c_in = probs.new_tensor(float(c0))
        for i, area in enumerate(self.areas):
            total = total + area * (10 * c_in * e[i, 0] + 9 * e[i, 1] + 18 * e[i, 2])
            c_in = e[i, 0]
        return (total + self.num_classes * c_in) / 1e6

    def supernet(self) -> "NSSSupernet":
        return NSSSupernet(self)


def _support(v: torch.Tensor) -> int:
    """1 + the index of the last nonzero entry of a 1-d tensor (0 if all zero)."""
    nz = torch.nonzero(v)
    return int(nz.max()) + 1 if len(nz) else 0


@torch.no_grad()
def _sliced_conv(conv: nn.Conv2d, c_in: int, c_out: int) -> nn.Conv2d:
    out = nn.Conv2d(c_in, c_out, conv.kernel_size, conv.stride, conv.padding, bias=False)
    out.weight.copy_(conv.weight[:c_out, :c_in])
    return out


@torch.no_grad()
def _sliced_bn(bn: nn.BatchNorm2d, c: int) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(c, bn.eps, bn.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(out, name).copy_(getattr(bn, name)[:c])
    out.num_batches_tracked.copy_(bn.num_batches_tracked)
    return out


class _SuperBlock(BasicBlock):
    """A basic block at max width whose outputs are multiplied by a channel mask.

    The mask comes after every BN (not after the conv: a zeroed conv output would become BN's beta), so masked
    channels are exactly zero everywhere, and the kept channels see the same per-channel batch statistics as a
    sliced block, in train mode too. Weight rows/columns outside the mask's support get zero gradient; their box
    is recorded with ``mark_extent`` so that ``SlicedSGD`` leaves them (and their momentum) alone.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor, ext_in: int, ext: int) -> torch.Tensor:
        """``x`` (N, C_in, H, W) with channels ≥ ``ext_in`` zero; ``mask`` (1, C, 1, 1) nonzero below ``ext``."""
        for conv, bn, c_in in ((self.conv1, self.bn1, ext_in), (self.conv2, self.bn2, ext)) + (
                () if self.shortcut is None else ((self.shortcut[0], self.shortcut[1], ext_in),)):
            mark_extent(conv.weight, (ext, c_in))
            mark_extent(bn.weight, (ext,))
            mark_extent(bn.bias, (ext,))
        out = F.relu(self.bn1(self.conv1(x))) * mask
        out = self.bn2(self.conv2(out)) * mask
        # relu(m·a + m·b) = m·relu(a + b) for m ≥ 0: the block output stays masked without another multiply
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x) * mask))

    def extract(self, c_in: int, w: int) -> BasicBlock:
        block = BasicBlock(c_in, w, self.conv1.stride[0], self.shortcut is not None)
        block.conv1, block.bn1 = _sliced_conv(self.conv1, c_in, w), _sliced_bn(self.bn1, w)
        block.conv2, block.bn2 = _sliced_conv(self.conv2, w, w), _sliced_bn(self.bn2, w)
        if self.shortcut is not None:
            block.shortcut = nn.Sequential(_sliced_conv(self.shortcut[0], c_in, w), _sliced_bn(self.shortcut[1], w))
        return block


class NSSSupernet(nn.Module):
    """Stem, 3 stages of ``max_depth`` masked blocks at ``max_width``, pooling and a ``max_width``-input head."""

    def __init__(self, space: NSSSpace):
        super().__init__()
        self.space = space
        c0, w = space.stem_channels, space.max_width
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0),
                                  nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(
            nn.ModuleList(_SuperBlock(c_in if k == 0 else w, w, stride if k == 0 else 1, k == 0)
                          for k in range(space.max_depth))
            for c_in, stride in zip((c0, w, w), STAGE_STRIDES))
        self.classifier = nn.Linear(w, space.num_classes)

    def _features(self, x: torch.Tensor, masks: Sequence[torch.Tensor],
                  depth_weights: Sequence[torch.Tensor | int]) -> torch.Tensor:
        """``depth_weights[i]`` is an int depth (take block d's output) or a (max_depth,) weight vector."""
        x = self.stem(x)
        ext_in = self.space.stem_channels
        for blocks, mask, dw in zip(self.stages, masks, depth_weights):
            ext = _support(mask)
            m = mask.to(x).view(1, -1, 1, 1)
            hard = isinstance(dw, int)
            out = 0
            for k in range(dw if hard else _support(dw)):
                x = blocks[k](x, m, ext_in if k == 0 else ext, ext)
                if not hard:
                    out = out + dw[k] * x
            x = x if hard else out
            ext_in = ext
        mark_extent(self.classifier.weight, (self.space.num_classes, ext_in))
        return x.mean((2, 3))

    def forward_features(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, max_width) pooled features of ``arch`` (channels past its width are 0)."""
        arch = self.space.validate(arch)
        masks = [self.space.width_mask(self.space.width(arch, i)) for i in range(3)]  # on the CPU: no sync
        return self._features(x, masks, [self.space.depth(arch, i) for i in range(3)])

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, num_classes) logits of ``arch`` (hard masks, blocks past d_i skipped)."""
        return self.classifier(self.forward_features(x, arch))

    def forward_soft(self, x: torch.Tensor, width_masks: Sequence[torch.Tensor],
                     depth_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits with soft masks, differentiable in both.

        ``width_masks``: 3 tensors (max_width,) in [0, 1]; ``depth_weights``: 3 tensors (max_depth,) summing to 1.
        Stage i outputs Σ_k depth_weights[i][k] · (output of block k); blocks past the last nonzero weight are
        not computed.
        """
        if len(width_masks) != 3 or len(depth_weights) != 3:
            raise ValueError("forward_soft needs one width mask and one depth weight vector per stage (3 each)")
        for m, dw in zip(width_masks, depth_weights):
            if m.shape != (self.space.max_width,) or dw.shape != (self.space.max_depth,):
                raise ValueError(f"width masks must be ({self.space.max_width},) and depth weights "
                                 f"({self.space.max_depth},), got {tuple(m.shape)} and {tuple(dw.shape)}")
            if _support(dw) == 0:
                raise ValueError("every stage needs a nonzero depth weight")
        return self.classifier(self._features(x, width_masks, depth_weights))

    def extract(self, arch: Arch) -> NSSResNet:
        """A static :class:`NSSResNet` with copies of the leading sub-tensors; equals ``self(x, arch)`` in eval."""
        arch = self.space.validate(arch)
        stages, c_in = [], self.space.stem_channels
        for i, blocks in enumerate(self.stages):
            w = self.space.width(arch, i)
            stages.append([blocks[k].extract(c_in if k == 0 else w, w) for k in range(self.space.depth(arch, i))])
            c_in = w
        head = nn.Linear(c_in, self.space.num_classes)
        with torch.no_grad():
            head.weight.copy_(self.classifier.weight[:, :c_in])
            head.bias.copy_(self.classifier.bias)
        return NSSResNet(copy.deepcopy(self.stem), stages, head)
