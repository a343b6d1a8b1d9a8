"""VIM-NAS's architecture parameters α over the ViT space [seed: VIM-NAS Alg. 1; formulation nasx] (the mixed forward
that uses them is :meth:`nasx.spaces.vit.ViTSupernet.forward_mixed`; selection: :mod:`nasx.search.perturbation`).

:class:`ArchParameters` holds one logit per choice of every layer's heads and MLP ratio and one vector over the
depths, with masks that remove choices (selection); :func:`width_weights` turns a row of choice weights into weights
by width, the form the mixed block takes.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from nasx.arch import Arch, SearchSpace

ViTSpace = SearchSpace  # a nasx.spaces.vit.ViTSpace (not imported: that module imports this one)


def width_weights(widths: Sequence[int], weights: torch.Tensor) -> torch.Tensor:
    """Weights of C choices of widths ``widths`` (C,) -> a vector (max width,) whose entry k − 1 is the total weight
    of the choices of width k (0 where no choice has width k; choices of equal width add up). Differentiable in
    ``weights``; the form :meth:`SuperBlock.forward_mixed` takes [nasx]."""
    if len(widths) != weights.shape[-1] or min(widths) < 1:
        raise ValueError(f"{weights.shape[-1]} weights for widths {list(widths)}: need one per width, widths >= 1")
    index = torch.as_tensor([int(w) - 1 for w in widths], device=weights.device)
    return weights.new_zeros(max(widths)).index_add(0, index, weights)


def _wider_than(by_width: torch.Tensor) -> torch.Tensor:
    """(W,) weights by width (entry k − 1: width k) -> (W,) the total weight of the widths > i, for unit i."""
    return by_width.flip(0).cumsum(0).flip(0)


# -- architecture parameters α -------------------------------------------------------------------------------------
class ArchParameters(nn.Module):
    """VIM-NAS's architecture parameters α [seed: Alg. 1, "one weight per layer choice"; shapes and masks nasx].

    ``heads`` (max depth × number of head choices), ``ratios`` (max depth × number of MLP-ratio choices) and
    ``depth`` (number of depth choices) are logits, initialised to zero (uniform softmax) [nasx, as DARTS]. α has no
    embed-dim logits: the embed dim is a global choice the caller gives (:meth:`ViTSupernet.forward_mixed`,
    :meth:`arch`).

    Masks [nasx, for perturbation-based selection]: a boolean buffer per tensor (``heads_mask``, ``ratios_mask``,
    ``depth_mask``; True = the choice is removed); a removed choice's logit is −inf before the softmax, so its weight is
    exactly 0 and the remaining choices renormalise. :meth:`fix` removes all but one choice (the row becomes exactly
    one-hot). A row always keeps one choice. Masks are buffers, so ``state_dict`` round-trips them.

    Kinds name the rows: ``"heads"`` (row = layer), ``"ratio"`` (or ``"ratios"``; row = layer), ``"depth"`` (one
    row; ``layer`` is ignored, None by convention).
    """

    KINDS = {"heads": "heads", "ratio": "ratios", "ratios": "ratios", "depth": "depth"}

    def __init__(self, space: ViTSpace):
        super().__init__()
        self.max_depth, self.n_heads = space.max_depth, len(space.num_heads)
        self.n_ratios, self.n_depths = len(space.mlp_ratios), len(space.depths)
        self.heads = nn.Parameter(torch.zeros(self.max_depth, self.n_heads))
        self.ratios = nn.Parameter(torch.zeros(self.max_depth, self.n_ratios))
        self.depth = nn.Parameter(torch.zeros(self.n_depths))
        for name, p in (("heads", self.heads), ("ratios", self.ratios), ("depth", self.depth)):
            self.register_buffer(f"{name}_mask", torch.zeros(p.shape, dtype=torch.bool))

    def extra_repr(self) -> str:
        return (f"layers={self.max_depth}, heads={self.n_heads}, ratios={self.n_ratios}, depths={self.n_depths}, "
                f"removed={int(sum(m.sum() for m in self._masks()))}")

    def _masks(self) -> tuple[torch.Tensor, ...]:
        return self.heads_mask, self.ratios_mask, self.depth_mask

    def check(self, space: ViTSpace) -> None:
        """Raise ValueError unless α's shapes are those of ``space``'s genes."""
        want = (space.max_depth, len(space.num_heads), len(space.mlp_ratios), len(space.depths))
        have = (self.max_depth, self.n_heads, self.n_ratios, self.n_depths)
        if want != have:
            raise ValueError(f"architecture parameters of (layers, heads, ratios, depths) = {have} do not fit space "
                             f"'{space.name}' with {want}")

    def weights(self) -> dict[str, torch.Tensor]:
        """``{"heads": (L, H), "ratios": (L, R), "depth": (n_depths,)}``: softmax over each row of the logits, a
        removed (masked) choice exactly 0. Differentiable in the logits."""
        return {name: torch.softmax(getattr(self, name).masked_fill(getattr(self, f"{name}_mask"), float("-inf")), -1)
                for name in ("heads", "ratios", "depth")}

    # -- masks ---------------------------------------------------------------------------------------------------
    def _row(self, layer: int | None, kind: str) -> torch.Tensor:
        """The mask row (a view) of ``kind`` at ``layer``."""
        if kind not in self.KINDS:
            raise ValueError(f"unknown kind {kind!r}: one of heads, ratio, depth")
        name = self.KINDS[kind]
        mask = getattr(self, f"{name}_mask")
        if name == "depth":
            return mask
        if layer is None or not 0 <= int(layer) < self.max_depth:
            raise ValueError(f"{kind}: layer {layer} out of range (α has {self.max_depth} layers)")
        return mask[int(layer)]

    def _check_choice(self, row: torch.Tensor, kind: str, choice: int) -> int:
        if not 0 <= int(choice) < row.shape[0]:
            raise ValueError(f"{kind}: choice {choice} out of range ({row.shape[0]} choices)")
        return int(choice)

    def remaining(self, layer: int | None, kind: str) -> list[int]:
        """The choices of the row not removed, ascending."""
        return [c for c, m in enumerate(self._row(layer, kind).tolist()) if not m]

    def masked(self, layer: int | None, kind: str, choice: int) -> bool:
        """Whether ``choice`` of the row is removed."""
        row = self._row(layer, kind)
        return bool(row[self._check_choice(row, kind, choice)])

    @torch.no_grad()
    def mask(self, layer: int | None, kind: str, choice: int) -> None:
        """Remove ``choice`` from the row (the others renormalise). Removing a row's last choice is an error."""
        row = self._row(layer, kind)
        c = self._check_choice(row, kind, choice)
        if not row[c] and self.remaining(layer, kind) == [c]:
            raise ValueError(f"{kind} of layer {layer}: choice {c} is the last one left and cannot be removed")
        row[c] = True

    @torch.no_grad()
    def unmask(self, layer: int | None, kind: str, choice: int) -> None:
        """Put ``choice`` back into the row."""
        row = self._row(layer, kind)
        row[self._check_choice(row, kind, choice)] = False

    @contextmanager
    def with_mask(self, layer: int | None, kind: str, choice: int) -> Iterator["ArchParameters"]:
        """``with alpha.with_mask(i, "heads", c): ...``: ``choice`` removed inside the block, the mask restored after
        (even on an error)."""
        was = self.masked(layer, kind, choice)
        self.mask(layer, kind, choice)
        try:
            yield self
        finally:
            if not was:
                self.unmask(layer, kind, choice)

    @torch.no_grad()
    def fix(self, layer: int | None, kind: str, choice: int) -> None:
        """Make the row one-hot on ``choice``: every other choice removed (its weight then exactly 1)."""
        row = self._row(layer, kind)
        c = self._check_choice(row, kind, choice)
        row.fill_(True)
        row[c] = False

    # -- the discrete arch ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def arch(self, space: ViTSpace, embed_index: int) -> Arch:
        """The argmax arch: every gene (layers past the chosen depth included) the choice of largest softmax weight,
        the first on ties; ``embed`` is ``embed_index`` (α has no embed logits)."""
        self.check(space)
        if not 0 <= int(embed_index) < len(space.embed_dims):
            raise ValueError(f"embed index {embed_index} out of range: space '{space.name}' has "
                             f"{len(space.embed_dims)} embed dims")
        w = self.weights()
        genes = {"embed": int(embed_index), "depth": int(w["depth"].argmax())}
        heads, ratios = w["heads"].argmax(-1).tolist(), w["ratios"].argmax(-1).tolist()
        for i in range(space.max_depth):
            genes[f"h{i}"], genes[f"r{i}"] = heads[i], ratios[i]
        return space.arch(genes)
