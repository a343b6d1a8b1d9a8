"""One backbone shared by several data sets, one linear classifier head per data set [seed: VIM-NAS; ref: PolyViT]."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MultiHead(nn.Module):
    """``forward(x, head, *args)``: the backbone's features (B, ``features``) of x, classified by head ``head``
    into that data set's classes. ``args`` go on to the backbone (e.g. a supernet's sampled arch). A step that
    trains one data set leaves the other heads without gradients, so they are not updated."""

    def __init__(self, backbone: nn.Module, features: int, num_classes: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(nn.Linear(features, int(k)) for k in num_classes)

    def forward(self, x: Tensor, head: int, *args) -> Tensor:
        return self.heads[head](self.backbone(x, *args))
