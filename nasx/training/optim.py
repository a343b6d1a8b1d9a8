"""SGD that updates only what the sampled subnet used.

With plain SGD, a weight whose gradient is zero this step still moves: momentum keeps pushing it and weight decay
shrinks it. In a supernet that is wrong — an unsampled block or the unused channels of a sliced weight must stay
exactly as they were [ref: MixPath sets their grads to None; SPOS uses affine-free BN]. ``SlicedSGD``:

* skips parameters whose ``grad`` is ``None`` (blocks not on the path), like ``torch.optim.SGD``;
* for a sliced parameter, updates only the leading box recorded by the sliced ops (``nasx.ops.mark_extent``), in
  the weight and in its momentum buffer; everything outside the box keeps its value and its momentum.

With no extents recorded it is exactly SGD with momentum (``dampening=0``), weight decay and optional Nesterov.
"""
from __future__ import annotations

import torch

from nasx.ops import active_extent, clear_extents


def _box(t: torch.Tensor, extent: tuple[int, ...] | None) -> torch.Tensor:
    if extent is None or tuple(t.shape[:len(extent)]) == extent:
        return t
    return t[tuple(slice(0, e) for e in extent)]


class SlicedSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be non-negative")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
            params, grads, bufs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                ext = active_extent(p)
                params.append(_box(p, ext))
                grads.append(_box(p.grad, ext))
                if mom:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(_box(state["momentum_buffer"], ext))
            if not params:
                continue
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if mom:
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, grads)
                update = torch._foreach_add(grads, bufs, alpha=mom) if nesterov else bufs
            else:
                update = grads
            torch._foreach_add_(params, update, alpha=-lr)
        for group in self.param_groups:
            clear_extents(group["params"])
        return loss


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only, not on norm affine parameters or biases (SPOS, OFA)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
