"""Embeddings of images by a model's ``forward_features`` (the penultimate features), in batches or over a loader."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

@torch.no_grad()
def embed(model: nn.Module, x: Tensor, batch: int = 512,
          prepare: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Penultimate features (the embedding, (N, D)) of images x (N, C, H, W) in eval mode, in batches. x is model
    input, or raw pixels (e.g. uint8) that ``prepare`` turns into model input batch by batch on x's device."""
    model.eval()
    prepare = prepare or (lambda b: b)
    return torch.cat([model.forward_features(prepare(x[i:i + batch])) for i in range(0, len(x), batch)])


@torch.no_grad()
def embed_loader(models: Sequence[nn.Module], loader, device: torch.device) -> list[tuple[Tensor, Tensor | None]]:
    """One pass over a sequential loader of (x, _) batches through every model (images are decoded once for all):
    per model (embeddings (N, D), mirrored embeddings (N, D) or None). x (B, 3, S, S), or (B, 2, 3, S, S) =
    (image, mirrored) flip pairs."""
    for m in models:
        m.eval()
    feats: list[list[Tensor]] = [[] for _ in models]
    flips: list[list[Tensor]] = [[] for _ in models]
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        pair = x.dim() == 5
        for m, f, fl in zip(models, feats, flips):
            if pair:
                out = m.forward_features(x.flatten(0, 1)).view(len(x), 2, -1)
                f.append(out[:, 0].cpu())
                fl.append(out[:, 1].cpu())
            else:
                f.append(m.forward_features(x).cpu())
    return [(torch.cat(f), torch.cat(fl) if fl else None) for f, fl in zip(feats, flips)]


@torch.no_grad()
def load_pixels(loader) -> Tensor:
    """Every image of a sequential loader of raw (x in [0, 1], _) batches as uint8 (N, 3, S, S) (exact: crops are
    8-bit images divided by 255)."""
    return torch.cat([(x * 255).round().to(torch.uint8) for x, _ in loader])
