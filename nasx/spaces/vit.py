"""The weight-entangled ViT space of AutoFormer, with video tokens (VIM-NAS's space; METHODS.md §3).

Network [ref: AutoFormer]: patch embedding, class token and position embedding, then pre-norm transformer blocks
(``x + attn(LN(x))``, ``x + mlp(LN(x))``, GELU MLP), a final layer norm, and a linear classifier on the class token.
Attention has a fixed head dimension (``head_dim``, 64 in AutoFormer), so h heads project to h·head_dim.

Genes, in order: ``embed`` (index into ``embed_dims``, one width D for every layer), ``depth`` (index into
``depths``), then per layer i < max depth ``h{i}`` (index into ``num_heads``) and ``r{i}`` (index into
``mlp_ratios``; MLP width ``int(D · ratio)``) [ref]. Layers past the depth are the identity, so their genes do not
change the network.

Weight entanglement [ref]: every choice takes the leading sub-tensor of one shared weight (``nasx.ops.vit``): linear
``W[:out, :in]``; the fused QKV per q/k/v block, rows [0, h·head_dim) of each; layer norms, patch embedding, class
token and position embedding their first D entries. The supernet's width ``super_embed_dim`` may exceed the largest
choice (AutoFormer's supernets are 256/448/640 wide) [ref].

Video [nasx]: a clip (B, T, C, H, W) has every frame embedded by the same patch embedding (or, with ``tubelet`` = k >
1, every k frames by one tubelet embedding), a learned temporal position embedding (``max_frames`` rows, sliced to
D and to the clip's T') is added to each frame's patches, and the class token attends over all T'·N tokens. An image
(B, C, H, W) is a 1-frame clip. With ``max_frames`` = 1 there is no temporal embedding and the network is
AutoFormer's ViT.

Multi-head [seed: VIM-NAS]: ``num_classes`` may be one count per data set; the model then has one linear head per
data set and ``forward(x, arch, head)`` / ``static(x, head)`` pick one (head 0 by default).

Cost: MFLOPs are multiply-accumulates, in millions, of the patch embedding, every linear layer, attention's
QKᵀ and AV, and the classifier of the counted head; layer norms, GELU, softmax and additions are not counted (as in
the other spaces, where BN and ReLU are not). Parameters are those of the extracted static model, including class
token, position and temporal embeddings and every head [ref: AutoFormer counts the sampled subnet's parameters with
class token and position embedding].

Architecture parameters α [seed: VIM-NAS Alg. 1; formulation nasx] (:class:`ArchParameters`): one logit per choice
of every layer's heads and MLP ratio and one vector over the depths. :meth:`ViTSupernet.forward_mixed` is the
α-weighted mixture of the whole space in ONE forward, exact thanks to weight entanglement (every choice is the
leading slice of the same weights): head j of a layer is scaled by the total weight of the head choices with more
than j heads, MLP hidden unit i by the total weight of the ratios whose width exceeds i; depth mixes the class-token
logits after each candidate depth (as in NSS). Perturbation-based selection on it: :mod:`nasx.search.perturbation`; α itself: :mod:`nasx.spaces.vit_alpha`.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasx.arch import Arch, Budget, Cost, SearchSpace
from nasx.errors import InfeasibleBudgetError
from nasx.ops.sliced import leading, mark_extent
from nasx.ops.vit import (Heads, PatchEmbed, SlicedLayerNorm, SlicedLinear, SlicedPatchEmbed, SlicedQKV,
                          assemble_tokens, attend, classify, drop_path, sliced_parameter)
from nasx.spaces.vit_alpha import ArchParameters, _wider_than, width_weights  # noqa: F401 - re-exported


def _ascending(name: str, key: str, values: Sequence, kind=float) -> tuple:
    values = tuple(kind(v) for v in values)
    if not values or any(v <= 0 for v in values) or list(values) != sorted(set(values)):
        raise ValueError(f"space '{name}': {key} must be a non-empty strictly increasing list of positive numbers, "
                         f"got {list(values)}")
    return values


def as_clip(x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) -> 1-frame clips (B, 1, C, H, W); clips (B, T, C, H, W) pass through."""
    if x.dim() == 4:
        return x.unsqueeze(1)
    if x.dim() != 5:
        raise ValueError(f"expected images (B, C, H, W) or clips (B, T, C, H, W), got shape {tuple(x.shape)}")
    return x


# -- the static network -------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, qkv: nn.Linear, proj: nn.Linear, heads: int):
        super().__init__()
        self.qkv, self.proj, self.heads = qkv, proj, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(attend(self.qkv(x), self.heads))


class Block(nn.Module):
    """A static pre-norm transformer block (B, L, D) -> (B, L, D)."""

    def __init__(self, norm1: nn.LayerNorm, attn: Attention, norm2: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1, self.attn, self.norm2 = norm1, attn, norm2
        self.mlp = nn.Sequential(fc1, nn.GELU(), fc2)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class VisionTransformer(nn.Module):
    """A static ViT of the space, for images (B, C, H, W) and clips (B, T, C, H, W)."""

    def __init__(self, patch_embed: PatchEmbed, cls_token: nn.Parameter, pos_embed: nn.Parameter,
                 temporal_embed: nn.Parameter | None, blocks: Sequence[Block], norm: nn.LayerNorm,
                 classifier: nn.Module):
        super().__init__()
        self.patch_embed, self.cls_token, self.pos_embed = patch_embed, cls_token, pos_embed
        self.temporal_embed = temporal_embed
        self.blocks, self.norm = nn.Sequential(*blocks), norm
        self.classifier = classifier  # nn.Linear, or Heads (one per data set)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """-> (B, D): the class token after the final layer norm (the embedding)."""
        x = assemble_tokens(self.patch_embed(as_clip(x)), self.cls_token, self.pos_embed, self.temporal_embed)
        return self.norm(self.blocks(x)[:, 0])

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        return classify(self.classifier, self.forward_features(x), head)


# -- the space -----------------------------------------------------------------------------------------------------
class ViTSpace(SearchSpace):
    """The genes and exact costs; geometry is config (``conf/space/vit_*.yaml``); the data set channels/classes."""

    video = True  # the supernet takes clips (B, T, C, H, W) as well as images

    def __init__(self, name: str = "vit_autoformer_t", embed_dims: Sequence[int] = (192, 216, 240),
                 depths: Sequence[int] = (12, 13, 14), num_heads: Sequence[int] = (3, 4),
                 mlp_ratios: Sequence[float] = (3.5, 4.0), head_dim: int = 64, super_embed_dim: int | None = None,
                 patch_size: int = 16, input_size: int = 224, in_channels: int = 3,
                 num_classes: int | Sequence[int] = 1000, frames: int = 1, max_frames: int = 1, tubelet: int = 1,
                 qkv_bias: bool = True, drop_path: float = 0.0):
        self.name = name
        self.embed_dims = _ascending(name, "embed_dims", embed_dims, int)
        self.depths = _ascending(name, "depths", depths, int)
        self.num_heads = _ascending(name, "num_heads", num_heads, int)
        self.mlp_ratios = _ascending(name, "mlp_ratios", mlp_ratios, float)
        self.super_embed_dim = int(super_embed_dim or self.embed_dims[-1])
        for key, v in dict(head_dim=head_dim, patch_size=patch_size, input_size=input_size, in_channels=in_channels,
                           frames=frames, max_frames=max_frames, tubelet=tubelet).items():
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"space '{name}': {key} must be a positive integer, got {v!r}")
        if self.super_embed_dim < self.embed_dims[-1]:
            raise ValueError(f"space '{name}': super_embed_dim {self.super_embed_dim} is below the largest embed dim "
                             f"{self.embed_dims[-1]}")
        if input_size % patch_size:
            raise ValueError(f"space '{name}': input_size {input_size} is not a multiple of patch_size {patch_size}")
        if max_frames % tubelet:
            raise ValueError(f"space '{name}': max_frames {max_frames} is not a multiple of tubelet {tubelet}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"space '{name}': drop_path must be in [0, 1), got {drop_path}")
        self.head_dim, self.patch_size, self.input_size = int(head_dim), int(patch_size), int(input_size)
        self.in_channels, self.tubelet, self.max_frames = int(in_channels), int(tubelet), int(max_frames)
        self.qkv_bias, self.drop_path = bool(qkv_bias), float(drop_path)
        self.head_classes = (int(num_classes),) if isinstance(num_classes, int) else tuple(int(k) for k in num_classes)
        self.num_classes = num_classes if isinstance(num_classes, int) else self.head_classes
        self.patches = (input_size // patch_size) ** 2  # N, per frame (or tubelet)
        self.temporal_positions = max_frames // tubelet  # rows of the temporal embedding; 1 = none
        self.frames = self._check_frames(int(frames))  # the clip length the cost is counted at
        self.max_depth = self.depths[-1]
        self.max_hidden = self.hidden(self.super_embed_dim, self.mlp_ratios[-1])
        self.genes = {"embed": len(self.embed_dims), "depth": len(self.depths)}
        for i in range(self.max_depth):
            self.genes[f"h{i}"] = len(self.num_heads)
            self.genes[f"r{i}"] = len(self.mlp_ratios)

    @staticmethod
    def hidden(dim: int, ratio: float) -> int:
        """MLP width of an embed dim and ratio, ``int(D · ratio)`` [ref: AutoFormer]."""
        return int(dim * ratio + 1e-9)

    def _check_frames(self, t: int) -> int:
        if t > self.max_frames:
            raise ValueError(f"space '{self.name}': clips of {t} frames exceed max_frames {self.max_frames}")
        if t > 1 and t % self.tubelet:
            raise ValueError(f"space '{self.name}': clips of {t} frames do not split into tubelets of {self.tubelet}")
        return t

    # -- genes ---------------------------------------------------------------------------------------------------
    def decode(self, arch: Arch) -> tuple[int, list[tuple[int, int]]]:
        """``(D, [(heads, mlp hidden) of each layer below the depth])``."""
        d = self.embed_dims[arch["embed"]]
        return d, [(self.num_heads[arch[f"h{i}"]], self.hidden(d, self.mlp_ratios[arch[f"r{i}"]]))
                   for i in range(self.depths[arch["depth"]])]

    def describe(self, arch: Arch) -> str:
        """Human-readable, e.g. ``D=64 | 2h mlp×3 | 1h mlp×2``."""
        d = self.embed_dims[arch["embed"]]
        return " | ".join([f"D={d}"] + [f"{self.num_heads[arch[f'h{i}']]}h mlp×{self.mlp_ratios[arch[f'r{i}']]:g}"
                                        for i in range(self.depths[arch["depth"]])])

    def largest(self) -> Arch:
        return self.arch([k - 1 for k in self.genes.values()])

    # -- cost ----------------------------------------------------------------------------------------------------
    def _macs_params(self, d: int, layers: Sequence[tuple[int, int]], frames: int, head: int) -> tuple[int, int]:
        c, p, k, n = self.in_channels, self.patch_size, self.tubelet, self.patches
        tokens = 1 + (1 if frames == 1 else frames // k) * n  # L = 1 + T'·N
        macs = frames * n * c * p * p * d  # T'·N patches of C·k·p² inputs (an image: N of C·p², weights summed)
        params = d * c * k * p * p + d + d + (1 + n) * d  # embedding, class token, position embedding
        if self.temporal_positions > 1:
            params += self.temporal_positions * d
        for heads, hidden in layers:
            a = heads * self.head_dim
            macs += tokens * (3 * a * d + a * d + 2 * d * hidden) + 2 * tokens * tokens * a  # + QKᵀ and AV
            params += (4 * d + 3 * a * d + (3 * a if self.qkv_bias else 0) + a * d + d + 2 * d * hidden + hidden
                       + d)
        macs += d * self.head_classes[head]  # the class token only
        params += 2 * d + sum(d * classes + classes for classes in self.head_classes)
        return macs, params

    def cost(self, arch: Arch, frames: int | None = None, head: int = 0) -> Cost:
        """Exact cost of the extracted model on one clip of ``frames`` frames (default: the space's ``frames``;
        1 = an image), classified by head ``head``."""
        d, layers = self.decode(arch)
        macs, params = self._macs_params(d, layers, self.frames if frames is None else self._check_frames(frames),
                                         head)
        return Cost(macs / 1e6, params)

    def min_cost(self) -> Cost:
        return self.cost(self.arch([0] * len(self.genes)))

    def repair(self, arch: Arch, budget: Budget, rng: random.Random) -> Arch:
        """Shrink randomly chosen genes that matter (embed, depth, the heads and MLP ratios of layers below the
        depth), each to a random choice in [c // 2, c − 1], until ``arch`` fits. Terminates: cost grows with every
        gene, each step lowers one, and with all of them at 0 the cost is :meth:`min_cost`."""
        self.check_feasible(budget)
        arch = self.validate(arch)
        while not budget.admits(self.cost(arch)):
            depth = self.depths[arch["depth"]]
            live = ["embed", "depth"] + [f"{g}{i}" for i in range(depth) for g in ("h", "r")]
            reducible = [g for g in live if arch[g] > 0]
            if not reducible:  # a FLOPs and a params bound that the smallest arch meets only one of
                raise InfeasibleBudgetError(f"no architecture of space '{self.name}' fits {budget}")
            gene = rng.choice(reducible)
            c = arch[gene]
            arch = arch.replace(**{gene: rng.randrange(c // 2, c)})
        return arch

    def supernet(self) -> "ViTSupernet":
        return ViTSupernet(self)


# -- the supernet --------------------------------------------------------------------------------------------------
def _linear_mixed(x: torch.Tensor, layer: SlicedLinear, out_features: int, total: torch.Tensor) -> torch.Tensor:
    """``layer`` at ``W[:out, :in]`` with its bias scaled by ``total`` (the weights' sum): Σ_c w_c·(W x_c + b) when x
    is Σ_c w_c x_c."""
    w, b = layer.sliced(x.shape[-1], out_features)
    y = F.linear(x, w)
    return y if b is None else y + total * b


class SuperBlock(nn.Module):
    """A transformer block at max width: ``forward(x, heads, hidden)`` on x (B, L, D) with D ≤ the super width."""

    def __init__(self, dim: int, max_heads: int, head_dim: int, max_hidden: int, qkv_bias: bool, drop: float):
        super().__init__()
        self.head_dim, self.drop_path = head_dim, drop
        self.norm1 = SlicedLayerNorm(dim)
        self.qkv = SlicedQKV(dim, max_heads * head_dim, qkv_bias)
        self.proj = SlicedLinear(max_heads * head_dim, dim)
        self.norm2 = SlicedLayerNorm(dim)
        self.fc1 = SlicedLinear(dim, max_hidden)
        self.fc2 = SlicedLinear(max_hidden, dim)

    def forward(self, x: torch.Tensor, heads: int, hidden: int) -> torch.Tensor:
        d = x.shape[-1]
        a = attend(self.qkv(self.norm1(x), heads * self.head_dim), heads)
        x = x + drop_path(self.proj(a, d), self.drop_path, self.training)
        h = self.fc2(nn.functional.gelu(self.fc1(self.norm2(x), hidden)), d)
        return x + drop_path(h, self.drop_path, self.training)

    def forward_mixed(self, x: torch.Tensor, head_weights: torch.Tensor, hidden_weights: torch.Tensor) -> torch.Tensor:
        """The α-weighted mixture of the block's choices in one forward [nasx formulation of VIM-NAS's α, seed
        Alg. 1], on x (B, L, D).

        ``head_weights`` (H,) and ``hidden_weights`` (N,) are weights *by width* (:func:`width_weights`): entry k − 1
        is the weight of the choice of k heads (k hidden units); H and N are the largest widths, whose slices are
        computed. Attention head j's output (before the projection) is scaled by m_j = Σ_{c: heads_c > j} w_c, MLP
        hidden unit i (after GELU) by Σ_{c: hidden_c > i} w_c, and the biases of the projection and of fc2 by Σ_c w_c.
        Every choice being the leading slice of the same weights (entanglement) and the heads independent, this is
        exactly ``x + Σ_c w_c·attn_c(x)`` then ``x + Σ_c w_c·mlp_c(x)`` (the residual counted once: with softmax
        weights, Σ_c w_c = 1, it is the mixture of the choices' block outputs). Drop path as in :meth:`forward`.
        """
        d = x.shape[-1]
        heads, hidden = head_weights.shape[-1], hidden_weights.shape[-1]
        if heads * self.head_dim > self.qkv.max_inner or hidden > self.fc1.max_out:
            raise ValueError(f"mixed block: {heads} heads / {hidden} hidden units exceed the supernet's "
                             f"{self.qkv.max_inner // self.head_dim} / {self.fc1.max_out}")
        keep_head, keep_unit = _wider_than(head_weights), _wider_than(hidden_weights)
        a = attend(self.qkv(self.norm1(x), heads * self.head_dim), heads)  # (B, L, H·head_dim)
        a = (a.unflatten(-1, (heads, self.head_dim)) * keep_head[:, None]).flatten(-2)
        x = x + drop_path(_linear_mixed(a, self.proj, d, keep_head[0]), self.drop_path, self.training)
        h = nn.functional.gelu(self.fc1(self.norm2(x), hidden)) * keep_unit
        return x + drop_path(_linear_mixed(h, self.fc2, d, keep_unit[0]), self.drop_path, self.training)

    def extract(self, d: int, heads: int, hidden: int) -> Block:
        a = heads * self.head_dim
        attn = Attention(self.qkv.extract(d, a), self.proj.extract(a, d), heads)
        return Block(self.norm1.extract(d), attn, self.norm2.extract(d), self.fc1.extract(d, hidden),
                     self.fc2.extract(hidden, d), self.drop_path)


class ViTSupernet(nn.Module):
    """``forward(x, arch, head=0)`` runs ``arch``'s subnet on images (B, C, H, W) or clips (B, T, C, H, W);
    ``arch=None`` is the largest subnet ([nasx]: what SPOS-style warm-up trains)."""

    def __init__(self, space: ViTSpace):
        super().__init__()
        self.space = s = space
        dim = s.super_embed_dim
        self.patch_embed = SlicedPatchEmbed(s.in_channels, dim, s.patch_size, s.tubelet)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + s.patches, dim))
        self.temporal_embed = nn.Parameter(torch.zeros(1, s.temporal_positions, dim)) \
            if s.temporal_positions > 1 else None
        for p in (self.cls_token, self.pos_embed, self.temporal_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)  # [ref: AutoFormer]
        rates = [s.drop_path * i / max(1, s.max_depth - 1) for i in range(s.max_depth)]  # linear in depth [ref]
        self.blocks = nn.ModuleList(SuperBlock(dim, s.num_heads[-1], s.head_dim, s.max_hidden, s.qkv_bias, r)
                                    for r in rates)
        self.norm = SlicedLayerNorm(dim)
        heads = [SlicedLinear(dim, k) for k in s.head_classes]
        self.classifier = heads[0] if len(heads) == 1 else Heads(heads)

    def _tokens(self, x: torch.Tensor, d: int) -> torch.Tensor:
        x = as_clip(x)
        s = self.space
        if tuple(x.shape[2:]) != (s.in_channels, s.input_size, s.input_size):
            raise ValueError(f"space '{s.name}' takes frames of ({s.in_channels}, {s.input_size}, {s.input_size}), "
                             f"got {tuple(x.shape[2:])}")
        s._check_frames(x.shape[1])
        patches = self.patch_embed(x, d)  # (B, T', N, d)
        mark_extent(self.cls_token, (1, 1, d))
        mark_extent(self.pos_embed, (1, 1 + s.patches, d))
        temporal = None
        if self.temporal_embed is not None:
            mark_extent(self.temporal_embed, (1, patches.shape[1], d))
            temporal = leading(self.temporal_embed, (1, patches.shape[1], d))
        return assemble_tokens(patches, leading(self.cls_token, (1, 1, d)), leading(self.pos_embed, (1, 1 + s.patches, d)),
                               temporal)

    def forward_features(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        """-> (B, D) of ``arch``: the class token after the final layer norm."""
        d, layers = self.space.decode(self.space.largest() if arch is None else self.space.validate(arch))
        x = self._tokens(x, d)
        for block, (heads, hidden) in zip(self.blocks, layers):  # blocks past the depth: the identity
            x = block(x, heads, hidden)
        return self.norm(x[:, 0])

    def forward(self, x: torch.Tensor, arch: Arch | None = None, head: int = 0) -> torch.Tensor:
        return classify(self.classifier, self.forward_features(x, arch), head)

    def forward_mixed(self, x: torch.Tensor, alpha: ArchParameters, embed: int | None = None,
                      head: int = 0) -> torch.Tensor:
        """Logits of head ``head`` of the α-mixed supernet: the step of α ← α − γ ∇α L_val [seed: VIM-NAS Alg. 1]
        and what perturbation-based selection measures [seed].

        The mixture is nasx's formulation (the seed gives no equations): at embed dim D = ``embed`` (a value of
        ``embed_dims``; default the largest; α has no embed logits), the tokens as in :meth:`forward`; block i mixes
        its head and MLP-ratio choices by softmax(α) rows i (:meth:`SuperBlock.forward_mixed`, exact by
        entanglement); depth mixes as in NSS: Σ_d w_d · classifier(norm(x after depths[d] blocks)[:, 0]), the
        class-token logits after each candidate depth. Blocks past the deepest depth whose weight is non-zero are
        never run (a depth masked out of α removes its layers from the computation; the result is the same).
        With α one-hot on an arch's genes this is ``self(x, arch, head)``.
        """
        s = self.space
        d = s.embed_dims[-1] if embed is None else int(embed)
        if d not in s.embed_dims:
            raise ValueError(f"space '{s.name}': embed dim {embed} is not one of {list(s.embed_dims)}")
        alpha.check(s)
        w = alpha.weights()
        hidden = [s.hidden(d, r) for r in s.mlp_ratios]
        live = [k for k, v in enumerate((w["depth"] > 0).tolist()) if v]
        ends = {depth: k for k, depth in enumerate(s.depths) if k in live}
        x = self._tokens(x, d)
        logits = None
        for i in range(s.depths[live[-1]]):
            x = self.blocks[i].forward_mixed(x, width_weights(s.num_heads, w["heads"][i]),
                                             width_weights(hidden, w["ratios"][i]))
            k = ends.get(i + 1)
            if k is not None:
                out = w["depth"][k] * classify(self.classifier, self.norm(x[:, 0]), head)
                logits = out if logits is None else logits + out
        return logits

    def extract(self, arch: Arch) -> VisionTransformer:
        """A static :class:`VisionTransformer` of plain modules with copies of ``arch``'s slices; equals
        ``self(x, arch, head)`` in eval mode for images and clips."""
        d, layers = self.space.decode(self.space.validate(arch))
        t = self.space.temporal_positions
        temporal = sliced_parameter(self.temporal_embed, (1, t, d)) if self.temporal_embed is not None else None
        heads = [h.extract(d, h.max_out) for h in
                 (self.classifier.heads if isinstance(self.classifier, Heads) else [self.classifier])]
        return VisionTransformer(
            self.patch_embed.extract(d), sliced_parameter(self.cls_token, (1, 1, d)),
            sliced_parameter(self.pos_embed, (1, 1 + self.space.patches, d)), temporal,
            [block.extract(d, heads_, hidden) for block, (heads_, hidden) in zip(self.blocks, layers)],
            self.norm.extract(d), heads[0] if len(heads) == 1 else Heads(heads))
