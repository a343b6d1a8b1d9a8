"""Weight-entangled transformer layers (AutoFormer's ``*_super`` modules) and the token plumbing a ViT shares.

Every choice takes the leading sub-tensor of one max-size weight — ``W[:out, :in]``, ``bias[:out]`` — so a smaller
subnet literally lives inside a larger one [ref: AutoFormer, ``microsoft/Cream`` ``AutoFormer/model/module/``]. Like
``nasx.ops.sliced``, each layer takes its widths from the caller (the input width from ``x``), knows nothing of the
search, records the box it used with ``mark_extent`` (so ``SlicedSGD`` updates nothing else), and ``extract``s a
plain module holding copies.

The functions below (:func:`patchify`, :func:`assemble_tokens`, :func:`attend`, :func:`drop_path`) are the one
implementation of tokenisation and attention; the supernet and the static ViT both call them, so an extracted
network computes what the supernet computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasx.ops.sliced import leading, mark_extent


# -- shared functional pieces -------------------------------------------------------------------------------------
def patchify(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, patch: int) -> torch.Tensor:
    """Clips (B, T, C, H, W) -> patch tokens (B, T', N, D), N = (H/patch)·(W/patch).

    ``weight`` (D, C, p, p): every frame through the same patch embedding, T' = T [nasx].
    ``weight`` (D, C, k, p, p): a tubelet embedding of k frames, T' = T/k [nasx; after ViViT]; a 1-frame clip (an
    image) is embedded as if repeated k times, i.e. by the weight summed over its k frames.
    """
    b, t = x.shape[:2]
    if weight.dim() == 4:
        y = F.conv2d(x.flatten(0, 1), weight, bias, stride=patch)  # (B·T, D, h, w)
        return y.flatten(2).transpose(1, 2).unflatten(0, (b, t))
    k = weight.shape[2]
    if t == 1:
        return F.conv2d(x[:, 0], weight.sum(2), bias, stride=patch).flatten(2).transpose(1, 2).unsqueeze(1)
    if t % k:
        raise ValueError(f"a clip of {t} frames does not split into tubelets of {k} frames")
    y = F.conv3d(x.transpose(1, 2), weight, bias, stride=(k, patch, patch))  # (B, D, T', h, w)
    return y.flatten(3).permute(0, 2, 3, 1)


def assemble_tokens(patches: torch.Tensor, cls_token: torch.Tensor, pos_embed: torch.Tensor,
                    temporal_embed: torch.Tensor | None) -> torch.Tensor:
    """Patch tokens (B, T', N, D) -> the sequence (B, 1 + T'·N, D): ``[cls, frame 0's N patches, frame 1's, …]``.

    ``cls_token`` (1, 1, D); ``pos_embed`` (1, 1 + N, D): row 0 for the class token, rows 1.. the spatial position of
    a patch, the same in every frame; ``temporal_embed`` (1, ≥T', D) or None: row t added to every patch of frame t
    [nasx]. The class token attends over all T'·N patch tokens.
    """
    b, t = patches.shape[:2]
    x = patches + pos_embed[:, 1:].unsqueeze(1)
    if temporal_embed is not None:
        x = x + temporal_embed[0, :t, None]
    cls = (cls_token + pos_embed[:, :1]).expand(b, -1, -1)
    return torch.cat((cls, x.flatten(1, 2)), 1)


def attend(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head self-attention of fused projections (B, L, 3·h·d) laid out ``[q | k | v]``, head i of each block
    in rows i·d..(i+1)·d, -> (B, L, h·d). Scale d^-1/2 with d the fixed head dimension [ref: AutoFormer]."""
    b, n, _ = qkv.shape
    q, k, v = qkv.view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # each (B, h, L, d)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a residual branch per sample with probability ``p`` in training [ref: timm]."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def classify(classifier: nn.Module, features: torch.Tensor, head: int) -> torch.Tensor:
    """Logits of head ``head``: a :class:`Heads` picks it, a single classifier only has head 0."""
    if isinstance(classifier, Heads):
        return classifier(features, head)
    if head != 0:
        raise ValueError(f"head {head} requested from a model with one classifier head")
    return classifier(features)


class Heads(nn.Module):
    """One classifier per data set [seed: VIM-NAS]; ``forward(features, head)`` -> that data set's logits."""

    def __init__(self, heads: list[nn.Module]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, features: torch.Tensor, head: int = 0) -> torch.Tensor:
        if not 0 <= head < len(self.heads):
            raise ValueError(f"head {head} out of range: the model has {len(self.heads)} heads")
        return self.heads[head](features)


class PatchEmbed(nn.Module):
    """A static patch (or tubelet) embedding: (B, T, C, H, W) -> (B, T', N, D) through ``proj``."""

    def __init__(self, proj: nn.Conv2d | nn.Conv3d, patch: int):
        super().__init__()
        self.proj, self.patch = proj, patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.proj.weight, self.proj.bias, self.patch)


# -- sliced layers ------------------------------------------------------------------------------------------------
class SlicedLinear(nn.Module):
    """``forward(x, out_features)``: ``x`` (..., in) with in ≤ ``max_in`` through ``W[:out, :in]``, ``bias[:out]``."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        self.weight = nn.Parameter(torch.empty(max_out, max_in))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)  # [ref: AutoFormer / timm ViT init]

    def sliced(self, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        mark_extent(self.weight, (out_features, in_features))
        w = leading(self.weight, (out_features, in_features))
        if self.bias is None:
            return w, None
        mark_extent(self.bias, (out_features,))
        return w, leading(self.bias, (out_features,))

    def forward(self, x: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
        return F.linear(x, *self.sliced(x.shape[-1], out_features or self.max_out))

    @torch.no_grad()
    def extract(self, in_features: int, out_features: int) -> nn.Linear:
        out = nn.Linear(in_features, out_features, bias=self.bias is not None)
        w, b = self.sliced(in_features, out_features)
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
        return out

    def extra_repr(self) -> str:
        return f"{self.max_in}->{self.max_out}, bias={self.bias is not None}"


class SlicedQKV(nn.Module):
    """The fused query/key/value projection, sliced per block.

    ``weight`` is (3, max_inner, max_in): block 0 the queries, 1 the keys, 2 the values; h heads of dimension d use
    rows [0, h·d) of each block and columns [0, in). [nasx] AutoFormer's ``qkv_super`` interleaves q, k, v rows
    (``w[i:out:3]``); three blocks make the same entanglement a leading box, so ``SlicedSGD`` and ``extract`` treat
    it like any sliced weight. ``forward(x, inner)`` -> (..., 3·inner) laid out ``[q | k | v]``.
    """

    def __init__(self, max_in: int, max_inner: int, bias: bool = True):
        super().__init__()
        self.max_in, self.max_inner = max_in, max_inner
        self.weight = nn.Parameter(torch.empty(3, max_inner, max_in))
        self.bias = nn.Parameter(torch.zeros(3, max_inner)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)

    def sliced(self, in_features: int, inner: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        mark_extent(self.weight, (3, inner, in_features))
        w = leading(self.weight, (3, inner, in_features)).reshape(3 * inner, in_features)
        if self.bias is None:
            return w, None
        mark_extent(self.bias, (3, inner))
        return w, leading(self.bias, (3, inner)).reshape(3 * inner)

    def forward(self, x: torch.Tensor, inner: int) -> torch.Tensor:
        return F.linear(x, *self.sliced(x.shape[-1], inner))

    @torch.no_grad()
    def extract(self, in_features: int, inner: int) -> nn.Linear:
        out = nn.Linear(in_features, 3 * inner, bias=self.bias is not None)
        w, b = self.sliced(in_features, inner)
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
        return out

    def extra_repr(self) -> str:
        return f"{self.max_in}->3x{self.max_inner}, bias={self.bias is not None}"


class SlicedLayerNorm(nn.Module):
    """Layer norm over the last dimension D ≤ ``max_dim`` with the first D affine weights [ref: AutoFormer]."""

    def __init__(self, max_dim: int, eps: float = 1e-6):
        super().__init__()
        self.max_dim, self.eps = max_dim, eps
        self.weight = nn.Parameter(torch.ones(max_dim))
        self.bias = nn.Parameter(torch.zeros(max_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        mark_extent(self.weight, (d,))
        mark_extent(self.bias, (d,))
        return F.layer_norm(x, (d,), leading(self.weight, (d,)), leading(self.bias, (d,)), self.eps)

    @torch.no_grad()
    def extract(self, dim: int) -> nn.LayerNorm:
        out = nn.LayerNorm(dim, eps=self.eps)
        out.weight.copy_(self.weight[:dim])
        out.bias.copy_(self.bias[:dim])
        return out


class SlicedPatchEmbed(nn.Module):
    """Patch (``tubelet`` = 1) or tubelet embedding whose output width is the first D of ``max_dim`` filters:
    ``forward(x, dim)`` (B, T, C, H, W) -> (B, T', N, dim) with the conv weight ``[:dim]`` and bias ``[:dim]``."""

    def __init__(self, in_channels: int, max_dim: int, patch: int, tubelet: int = 1):
        super().__init__()
        self.in_channels, self.max_dim, self.patch, self.tubelet = in_channels, max_dim, patch, tubelet
        kernel = (patch, patch) if tubelet == 1 else (tubelet, patch, patch)
        conv = (nn.Conv2d if tubelet == 1 else nn.Conv3d)(in_channels, max_dim, kernel, kernel)
        self.weight, self.bias = conv.weight, conv.bias  # the default conv initialisation

    def sliced(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        mark_extent(self.weight, (dim,))
        mark_extent(self.bias, (dim,))
        return leading(self.weight, (dim,)), leading(self.bias, (dim,))

    def forward(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return patchify(x, *self.sliced(dim), self.patch)

    @torch.no_grad()
    def extract(self, dim: int) -> PatchEmbed:
        kernel = tuple(self.weight.shape[2:])
        proj = (nn.Conv2d if self.tubelet == 1 else nn.Conv3d)(self.in_channels, dim, kernel, kernel)
        w, b = self.sliced(dim)
        proj.weight.copy_(w)
        proj.bias.copy_(b)
        return PatchEmbed(proj, self.patch)


@torch.no_grad()
def sliced_parameter(p: torch.Tensor, extent: tuple[int, ...]) -> nn.Parameter:
    """A copy of the leading box of ``p`` as a new parameter (class token, position embeddings)."""
    return nn.Parameter(p[tuple(slice(0, e) for e in extent)].clone())
