"""Batch-level augmentation of VIM-NAS's Tab. 10 [seed]: mixup, cutmix and random erasing, in torch, on the device.

Each acts on a batch of images (B, C, H, W) or clips (B, T, C, H, W) (a clip's frames get the same box) and draws its
randomness from a ``torch.Generator`` the caller seeds from (seed, step), so a resumed run repeats it. What the seed
fixes: mixup α 0.8 and cutmix α 1.0 for ImageNet, mixup 0.3 for SSV2, random erasing on, label smoothing 0.1 / 0.3.
What follows timm's ``Mixup`` and ``RandomErasing`` [ref; nasx's code]: when both mixup and cutmix are on, each batch
uses one of them with probability 1/2; λ ~ Beta(α, α); a batch is mixed with itself reversed; cutmix's λ is corrected
to the area actually pasted; targets are smoothed one-hot vectors mixed with λ; random erasing replaces, with
probability ``prob`` per sample, a rectangle of 2–33 % of the frame (aspect ratio 0.3–3.3, log-uniform) with normal
noise (the inputs are standardised).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_targets(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def _beta(alpha: float, g: torch.Generator) -> float:
    a = torch._standard_gamma(torch.tensor([alpha, alpha], dtype=torch.float64), generator=g)
    return float(a[0] / a.sum())


def _box(h: int, w: int, lam: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """A box of area ≈ (1 − λ)·H·W at a uniform centre, clipped to the frame (timm's rand_bbox)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = (int(torch.randint(0, n, (1,), generator=g)) for n in (h, w))
    return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float, smoothing: float,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed x, soft targets (B, K)). ``mixup``/``cutmix`` are the Beta α's; 0 turns one off; both 0: no mixing."""
    targets = soft_targets(y, num_classes, smoothing)
    if mixup <= 0 and cutmix <= 0:
        return x, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand(1, generator=g)) < 0.5)
    lam = _beta(cutmix if use_cutmix else mixup, g)
    flipped = x.flip(0)
    if use_cutmix:
        h, w = x.shape[-2:]
        y0, y1, x0, x1 = _box(h, w, lam, g)
        x = x.clone()
        x[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * flipped
    return x, lam * targets + (1 - lam) * targets.flip(0)


def random_erase(x: torch.Tensor, prob: float, g: torch.Generator, area: tuple[float, float] = (0.02, 1 / 3),
                 aspect: tuple[float, float] = (0.3, 3.3), attempts: int = 10) -> torch.Tensor:
    """Each sample, with probability ``prob``: a rectangle of ``area`` of the frame (aspect log-uniform in
    ``aspect``; the first of ``attempts`` draws that fits, as timm tries 10) replaced by standard normal noise, the same
    box on every frame of a clip. Vectorised over the batch: one mask, one ``torch.where``."""
    if prob <= 0:
        return x
    b, (h, w) = x.shape[0], x.shape[-2:]
    apply = torch.rand(b, generator=g) < prob
    target = torch.empty(b, attempts).uniform_(*area, generator=g) * (h * w)
    ratio = torch.empty(b, attempts).uniform_(math.log(aspect[0]), math.log(aspect[1]), generator=g).exp()
    eh, ew = (target * ratio).sqrt().round().long(), (target / ratio).sqrt().round().long()
    fits = (eh > 0) & (eh < h) & (ew > 0) & (ew < w)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits
    apply &= fits.any(1)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    top = (torch.rand(b, generator=g) * (h - eh + 1)).floor().long()
    left = (torch.rand(b, generator=g) * (w - ew + 1)).floor().long()
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None])
    mask = mask.view(b, *([1] * (x.dim() - 3)), h, w).to(x.device)
    noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    return torch.where(mask, noise, x)
