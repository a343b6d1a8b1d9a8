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
from nasx.ops.sliced import leading


def _box(t: torch.Tensor, extent: tuple[int, ...] | None) -> torch.Tensor:
    return t if extent is None else leading(t, extent)


def _closure(closure):
    """``torch.optim``'s closure protocol: re-evaluate the loss with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class SlicedSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be non-negative")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure(closure)
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


class SlicedAdamW(torch.optim.Optimizer):
    """AdamW that updates only what the sampled subnet used [seed: VIM-NAS Alg. 1 "update the corresponding part of
    w in w_A while freezing the remaining part"; Tab. 10 trains with AdamW].

    Like :class:`SlicedSGD`: parameters without a gradient are skipped; for a sliced parameter only the leading box
    recorded by the sliced ops moves — its value, its decoupled weight decay and its two moment buffers. [nasx] Each
    entry keeps its own step count (entries of a sliced weight take part in different steps), so its bias correction
    is that of an Adam which has seen only the steps the entry was used in. With no extents recorded it is exactly
    ``torch.optim.AdamW`` (``amsgrad=False``).
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        if lr < 0 or weight_decay < 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError("lr and weight_decay must be non-negative, eps positive, betas in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure(closure)
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["steps"] = torch.zeros_like(p)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                ext = active_extent(p)
                w, g = _box(p, ext), _box(p.grad, ext)
                steps, m, v = (_box(state[k], ext) for k in ("steps", "exp_avg", "exp_avg_sq"))
                steps.add_(1)
                if wd:
                    w.mul_(1 - lr * wd)
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1 = 1 - torch.pow(b1, steps)
                bc2_sqrt = (1 - torch.pow(b2, steps)).sqrt()
                w.addcdiv_(m / bc1, (v.sqrt() / bc2_sqrt).add_(eps), value=-lr)
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
