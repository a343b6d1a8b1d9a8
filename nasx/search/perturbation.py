"""Perturbation-based architecture selection of VIM-NAS [seed; ref: DARTS-PT] on the α-mixed ViT supernet.

[seed] "rather than choosing the maximum α values, we progressively remove layer choices associated with the α
parameters and identify as best component the one leading to the highest validation accuracy drop."
[ref: Wang et al. 2021, DARTS-PT] one decision at a time: mask each remaining choice, measure the validation accuracy
without it, keep the choice whose removal drops it the most, fix it, go on to the next decision (DARTS-PT's optional
brief re-tuning between decisions is not done here).

nasx's choices [nasx]:

* Accuracy is the top-1 of :meth:`nasx.spaces.vit.ViTSupernet.forward_mixed` (every undecided row mixed by
  softmax(α) with its removed choices masked, every decided row one-hot) at the given embed dim, on fixed validation
  batches, in eval mode under ``torch.no_grad()``; with several data sets (a mapping of batches), the mean of their
  top-1s, each through its own head (as ``JointEvaluator``'s ``top1``).
* Order: the depth vector first, then layer 0, 1, … below the selected depth, per layer its heads then its MLP
  ratio. Layers at or past the selected depth are never run, so no decision is taken for them. A custom ``order``
  is a sequence of decisions ``("depth", None)``, ``("heads", i)``, ``("ratio", i)``; a layer decision is skipped
  when the layer is at or past the deepest depth still possible (its blocks are not run: nothing to measure).
* Ties (equal accuracy without two choices) go to the lower choice index: deterministic.
* The returned arch: ``embed`` the given index; ``depth`` and the decided genes their kept choice; a layer below the
  depth left undecided (only with a custom ``order``) α's argmax; genes of layers past the depth 0 (they do not change
  the network; as ``ConstrainedEvolution.canonical``).
* α is not changed: the selection works on a copy.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence

import torch

from nasx.arch import Arch

log = logging.getLogger("nasx")

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
KINDS = ("depth", "heads", "ratio")


def default_order(space) -> list[tuple[str, int | None]]:
    """Depth, then per layer (ascending) its heads and its MLP ratio."""
    return [("depth", None)] + [(kind, i) for i in range(space.max_depth) for kind in ("heads", "ratio")]


def _check_order(order: Sequence, space) -> list[tuple[str, int | None]]:
    out = []
    for entry in order:
        kind, layer = entry
        if kind not in KINDS:
            raise ValueError(f"perturbation order: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        layer = None if kind == "depth" else layer
        if kind != "depth" and (isinstance(layer, bool) or not isinstance(layer, int)
                                or not 0 <= layer < space.max_depth):
            raise ValueError(f"perturbation order: layer {layer!r} of {kind} out of range (max depth "
                             f"{space.max_depth})")
        if (kind, layer) in out:
            raise ValueError(f"perturbation order: ({kind!r}, {layer}) appears twice")
        out.append((kind, layer))
    return out


def _groups(batches: Batches | Mapping[str, Batches], head: int,
            names: Sequence[str] | None) -> list[tuple[int, Batches]]:
    """(head, batches) per data set: one list through ``head``, or a mapping through each data set's head (its
    position in ``names``, default the mapping's order)."""
    if isinstance(batches, Mapping):
        names = list(batches) if names is None else [str(n) for n in names]
        missing = [n for n in names if n not in batches]
        if missing:
            raise ValueError(f"perturbation selection: no validation batches for data set {missing[0]!r}")
        return [(h, batches[n]) for h, n in enumerate(names)]
    return [(head, batches)]


@torch.no_grad()
def mixed_top1(supernet, alpha, groups: list[tuple[int, Batches]], embed: int) -> float:
    """Top-1 of the α-mixed supernet at embed dim ``embed``: the mean over the groups (data sets) of each group's
    top-1. A multi-view batch x (B, V, T, C, S, S) is one prediction per item, the views' softmax averaged."""
    device = next(supernet.parameters()).device
    accuracies = []
    for head, batches in groups:
        correct = n = 0
        for x, y in batches:
            if len(y) == 0:
                continue
            x, y = x.to(device), y.to(device)
            if x.dim() == 6:
                b, v = x.shape[:2]
                scores = supernet.forward_mixed(x.flatten(0, 1), alpha, embed=embed, head=head)
                scores = scores.softmax(-1).view(b, v, -1).mean(1)
            else:
                scores = supernet.forward_mixed(x, alpha, embed=embed, head=head)
            correct += (scores.argmax(-1) == y).sum().item()
            n += len(y)
        if n == 0:
            raise ValueError(f"perturbation selection: no validation samples for head {head}")
        accuracies.append(correct / n)
    return sum(accuracies) / len(accuracies)


def _deepest_possible(alpha, space) -> int:
    """The largest depth (in layers) whose choice is not removed."""
    return space.depths[alpha.remaining(None, "depth")[-1]]


def _choice_value(space, kind: str, choice: int):
    return {"depth": space.depths, "heads": space.num_heads, "ratio": space.mlp_ratios}[kind][choice]


@torch.no_grad()
def perturbation_select(supernet, alpha, space, batches: Batches | Mapping[str, Batches], embed_index: int,
                        order: Sequence[tuple[str, int | None]] | None = None, head: int = 0,
                        progress: bool | Callable[[dict], None] | None = None,
                        names: Sequence[str] | None = None) -> tuple[Arch, list[dict]]:
    """Select an arch from α by progressive perturbation [seed; ref DARTS-PT; nasx's choices in the module doc].

    ``supernet`` a :class:`~nasx.spaces.vit.ViTSupernet`, ``alpha`` its trained
    :class:`~nasx.spaces.vit.ArchParameters` (not changed), ``batches`` a list of validation (x, y) scored through
    head ``head``, or a mapping data set → list scored through each data set's head (``names`` gives the head order;
    default the mapping's), ``embed_index`` the embed-dim gene (α has no embed logits; the mixed supernet runs at that
    dim). ``progress``: True logs each decision, a callable receives each record.

    For every decision, for each remaining choice c: remove c, measure the top-1, put c back; keep (fix one-hot) the
    choice whose removal gives the lowest top-1 (ties: the lower index). Returns the arch and one record per decision
    ``{"kind": "depth" | "heads" | "ratio", "layer": i (None for depth), "accuracy": top-1 before the decision,
    "accuracy_without": {choice: top-1 without it}, "kept": c, "kept_value": its value (depth, heads or ratio)}``.
    A row with one choice left is kept without measurement (``accuracy_without`` empty).
    """
    alpha.check(space)
    if not 0 <= int(embed_index) < len(space.embed_dims):
        raise ValueError(f"embed index {embed_index} out of range: space '{space.name}' has "
                         f"{len(space.embed_dims)} embed dims")
    embed = space.embed_dims[int(embed_index)]
    decisions = default_order(space) if order is None else _check_order(order, space)
    groups = _groups(batches, head, names)
    alpha = copy.deepcopy(alpha)
    was_training = supernet.training
    supernet.eval()
    records: list[dict] = []
    try:
        for kind, layer in decisions:
            if kind != "depth" and layer >= _deepest_possible(alpha, space):
                continue  # the layer's block is never run: nothing to decide
            accuracy = mixed_top1(supernet, alpha, groups, embed)
            remaining = alpha.remaining(layer, kind)
            without: dict[int, float] = {}
            if len(remaining) > 1:
                for c in remaining:
                    with alpha.with_mask(layer, kind, c):
                        without[c] = mixed_top1(supernet, alpha, groups, embed)
            kept = min(remaining, key=lambda c: (without.get(c, 0.0), c))
            alpha.fix(layer, kind, kept)
            record = {"kind": kind, "layer": layer, "accuracy": accuracy, "accuracy_without": without,
                      "kept": kept, "kept_value": _choice_value(space, kind, kept)}
            records.append(record)
            if callable(progress):
                progress(record)
            elif progress:
                log.info("perturbation selection: %s%s keeps %s (top-1 %.4f; without each: %s)", kind,
                         "" if layer is None else f" of layer {layer}", record["kept_value"], accuracy,
                         ", ".join(f"{c}: {a:.4f}" for c, a in without.items()))
    finally:
        supernet.train(was_training)
    arch = alpha.arch(space, int(embed_index))
    depth = space.depths[arch["depth"]]
    dead = {f"{g}{i}": 0 for i in range(depth, space.max_depth) for g in ("h", "r")}
    return (arch.replace(**dead) if dead else arch), records
