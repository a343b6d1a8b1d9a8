"""Model-update regression metrics [seed: REG-NAS; ref: PCT, Yan et al. "Positive-congruent training"].

A **negative flip** is a sample the reference (older, smaller) model φ1 classifies correctly and the new model φ2
gets wrong; a positive flip the other way round. Over N samples:

* ``NFR(φ1 → φ2) = #{φ1 right ∧ φ2 wrong} / N``, ``PFR(φ1 → φ2) = #{φ1 wrong ∧ φ2 right} / N``
  (so top-1(φ2) − top-1(φ1) = PFR − NFR);
* the relative change ``C(φ1, φ2) = (M(φ1) − M(φ2)) / M(φ2)`` of a metric M [seed Eq. 1].

Everything takes per-sample predicted classes (the evaluator protocol keeps them:
:meth:`nasx.evaluation.classification.ClassificationEvaluator.predictions`) and the labels, as tensors or arrays of
shape (N,). Confidence intervals are percentile bootstraps over the test samples, *paired*: every replicate draws one
multiset of samples and evaluates every model on it, so differences between models keep their correlation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def _as_long(v, name: str) -> Tensor:
    t = torch.as_tensor(v)
    if t.dim() != 1:
        raise ValueError(f"{name} must be one predicted class (or label) per sample, shape (N,), got {tuple(t.shape)}")
    return t.long().cpu()


def _check(ref_pred, new_pred, y) -> tuple[Tensor, Tensor, Tensor]:
    r, n, t = _as_long(ref_pred, "ref_pred"), _as_long(new_pred, "new_pred"), _as_long(y, "y")
    if not len(r) == len(n) == len(t):
        raise ValueError(f"ref_pred, new_pred and y must cover the same samples: {len(r)}, {len(n)}, {len(t)}")
    if len(t) == 0:
        raise ValueError("no samples")
    return r, n, t


def negative_flips(ref_pred, new_pred, y) -> Tensor:
    """(N,) bool: the reference right and the new model wrong."""
    r, n, t = _check(ref_pred, new_pred, y)
    return (r == t) & (n != t)


def positive_flips(ref_pred, new_pred, y) -> Tensor:
    """(N,) bool: the reference wrong and the new model right."""
    r, n, t = _check(ref_pred, new_pred, y)
    return (r != t) & (n == t)


def negative_flip_rate(ref_pred, new_pred, y) -> float:
    """``#{ref right ∧ new wrong} / N`` (a fraction in [0, 1])."""
    return float(negative_flips(ref_pred, new_pred, y).float().mean())


def positive_flip_rate(ref_pred, new_pred, y) -> float:
    """``#{ref wrong ∧ new right} / N``."""
    return float(positive_flips(ref_pred, new_pred, y).float().mean())


def relative_change(m1: float, m2: float) -> float:
    """``C(φ1, φ2) = (M(φ1) − M(φ2)) / M(φ2)`` [seed Eq. 1]; NaN when M(φ2) is 0 (undefined)."""
    m1, m2 = float(m1), float(m2)
    return (m1 - m2) / m2 if m2 != 0 else math.nan


def nfr_matrix(preds: Sequence, y) -> list[list[float | None]]:
    """Pairwise NFR of a model family: entry [i][j] is NFR(model i → model j) for i < j (the reference is the older,
    smaller member), None on and below the diagonal."""
    k = len(preds)
    return [[negative_flip_rate(preds[i], preds[j], y) if i < j else None for j in range(k)] for i in range(k)]


def bootstrap_means(indicators: Tensor, resamples: int = 2000, seed: int = 0, chunk: int = 256) -> Tensor:
    """(resamples, k): the mean of each of k per-sample indicators (k, N) on ``resamples`` bootstrap draws of the N
    samples, the same draw for all k (paired)."""
    ind = torch.as_tensor(indicators).float()
    if ind.dim() == 1:
        ind = ind[None]
    n = ind.shape[1]
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for start in range(0, int(resamples), chunk):
        b = min(chunk, int(resamples) - start)
        counts = torch.zeros(b, n).scatter_add_(1, torch.randint(n, (b, n), generator=g), torch.ones(b, n))
        out.append(counts @ ind.T / n)
    return torch.cat(out)


def interval(replicates: Tensor, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of 1-D bootstrap replicates."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=replicates.dtype)
    lo, hi = torch.quantile(replicates, q).tolist()
    return float(lo), float(hi)


def flip_report(ref_pred, preds: Mapping[str, object], y, resamples: int = 2000, seed: int = 0,
                level: float = 0.95) -> dict[str, dict]:
    """Per new model (name → predictions): top-1, NFR and PFR against ``ref_pred``, each ``{value, lo, hi}`` (fractions),
    from one paired bootstrap over the samples; plus the reference's own top-1 under ``"reference"``. Because the draws
    are shared, ``diff(a, b)`` intervals can be read off the same replicates with :func:`bootstrap_means`."""
    r, _, t = _check(ref_pred, ref_pred, y)
    rows: list[tuple[str, str, Tensor]] = [("reference", "top1", (r == t))]
    for name, p in preds.items():
        _, n, _ = _check(r, p, t)
        rows += [(name, "top1", n == t), (name, "nfr", (r == t) & (n != t)), (name, "pfr", (r != t) & (n == t))]
    ind = torch.stack([row[2] for row in rows]).float()
    reps = bootstrap_means(ind, resamples, seed)
    out: dict[str, dict] = {}
    for k, (name, metric, v) in enumerate(rows):
        lo, hi = interval(reps[:, k], level)
        out.setdefault(name, {})[metric] = {"value": float(v.float().mean()), "lo": lo, "hi": hi}
    return out


def paired_difference(a: Tensor, b: Tensor, resamples: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float]:
    """mean(a) − mean(b) of two per-sample indicators over the same N samples, with a paired bootstrap interval
    (e.g. the NFR of two new models against one reference)."""
    reps = bootstrap_means(torch.stack([torch.as_tensor(a).float(), torch.as_tensor(b).float()]), resamples, seed)
    diff = reps[:, 0] - reps[:, 1]
    lo, hi = interval(diff, level)
    return {"value": float(torch.as_tensor(a).float().mean() - torch.as_tensor(b).float().mean()), "lo": lo, "hi": hi}
