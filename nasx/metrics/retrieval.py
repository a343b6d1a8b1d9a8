"""Retrieval metrics for CMP-NAS: top-k retrieval, 1:1 verification (TAR@FAR), IJB-C template pooling and 1:N
open-set identification (rank-k, TPIR@FPIR).

Conventions:

- Embeddings are float tensors of shape (N, D). Similarity is cosine: every function L2-normalises its inputs.
- Homogeneous accuracy A(φ, φ) passes query and gallery embeddings from the same model; heterogeneous accuracy
  A(φq, φg) passes query embeddings from φq and gallery embeddings from φg. The functions never know which model
  made which.
- Every metric is a fraction in [0, 1], returned as a plain Python float.
- Similarity ties are resolved against the query: an incorrect item tied with the best correct one ranks ahead of
  it, so the rank of the first correct match is 1 + the number of incorrect items scoring at least as high.
  Otherwise a collapsed model (constant embeddings) would score 100 %.
- Bad inputs raise ``ValueError`` with a one-line message.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nasx.errors import MetricError

# At most this many (query × gallery) similarities are held at once: 2**24 float32 = 64 MiB per block.
_BLOCK_ELEMENTS = 2 ** 24


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x if x.is_floating_point() else x.float(), dim=1)


def _check_embeddings(a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    for name, x in ((a_name, a), (b_name, b)):
        if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise MetricError(f"{name} embeddings must be a non-empty (N, D) tensor, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise MetricError(f"{name} embeddings contain NaN or infinite values")
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"{a_name} embeddings have dim {a.shape[1]} but {b_name} embeddings have dim {b.shape[1]}")


def _check_rows(x: Tensor, n: int, name: str, dims: tuple[int, ...] = (1,)) -> None:
    if x.dim() not in dims or x.shape[0] != n:
        shapes = " or ".join(f"({n},)" if d == 1 else f"({n}, C)" for d in dims)
        raise MetricError(f"{name} must have shape {shapes} to match its embeddings, got {tuple(x.shape)}")


def _check_positive(values: Sequence, name: str) -> None:
    if not values:
        raise MetricError(f"{name} must name at least one value")
    for v in values:
        if not v > 0:
            raise MetricError(f"{name} must be positive, got {v}")


def _count_at_rate(n: int, rate: float, what: str, rate_name: str) -> int:
    """⌈n·rate⌉, rounded first so that e.g. 30·0.1 gives 3, not 4; raises when n·rate < 1."""
    if not 0 < rate <= 1:
        raise MetricError(f"{rate_name} must be in (0, 1], got {rate}")
    count = math.ceil(round(n * rate, 6))
    if round(n * rate, 6) < 1:
        raise MetricError(f"{rate_name} {rate:g} needs at least {math.ceil(round(1 / rate, 6))} {what}, got {n}")
    return count


def _chunks(n: int, other: int, chunk_size: int | None) -> Iterator[slice]:
    size = chunk_size or max(1, _BLOCK_ELEMENTS // other)
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _shared_ids(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Map label rows of two sets — shape (N,) or (N, C), e.g. (pair_id, style) — to shared integer ids."""
    if a.shape[1:] != b.shape[1:]:
        raise MetricError(f"query labels have shape {tuple(a.shape)} but gallery labels have shape {tuple(b.shape)}; "
                         f"both must be (N,) or both (N, C) with the same C")
    ids = torch.unique(torch.cat([a, b]), dim=0, return_inverse=True)[1]
    return ids[:len(a)], ids[len(a):]


def topk_retrieval(query: Tensor, gallery: Tensor, query_labels: Tensor, gallery_labels: Tensor,
                   ks: Sequence[int] = (1, 5, 10), exclude_self: bool = False,
                   chunk_size: int | None = None) -> dict[int, float]:
    """Top-k accuracy: the share of queries with a correct gallery item among the k most similar.

    query (Nq, D) and gallery (Ng, D) are embeddings; labels are int tensors (Nq,)/(Ng,) — correct = same label —
    or (Nq, C)/(Ng, C) — correct = the whole row equal, e.g. DeepFashion2's (pair_id, style). A query with no correct
    item in the gallery counts as a miss; incorrect items tied with the best correct one rank ahead of it.
    ``exclude_self``: the query set is the gallery set (query i is gallery item i), and each query's own item is left
    out of its ranking. Queries are processed ``chunk_size`` at a time (default: enough to hold ~2**24
    similarities), so memory is O(chunk·Ng), never O(Nq·Ng).
    Returns {k: fraction in [0, 1]}.
    """
    _check_embeddings(query, gallery, "query", "gallery")
    _check_rows(query_labels, len(query), "query_labels", (1, 2))
    _check_rows(gallery_labels, len(gallery), "gallery_labels", (1, 2))
    _check_positive(ks, "ks")
    if exclude_self and len(query) != len(gallery):
        raise MetricError(f"exclude_self needs the query set to be the gallery set, got {len(query)} queries "
                         f"and {len(gallery)} gallery items")
    q, g = _unit(query), _unit(gallery)
    q_ids, g_ids = (ids.to(q.device) for ids in _shared_ids(query_labels, gallery_labels))
    ranks = torch.empty(len(q), dtype=torch.float64, device=q.device)
    for s in _chunks(len(q), len(g), chunk_size):
        sim = q[s] @ g.T
        correct = q_ids[s, None] == g_ids[None, :]
        if exclude_self:
            rows = torch.arange(s.stop - s.start, device=q.device)
            sim[rows, rows + s.start] = -math.inf
            correct[rows, rows + s.start] = False
        best_correct = sim.masked_fill(~correct, -math.inf).amax(1)
        rank = (((sim >= best_correct[:, None]) & ~correct).sum(1) + 1).double()  # ties count against the query
        ranks[s] = rank.masked_fill(~correct.any(1), math.inf)
    return {int(k): (ranks <= k).double().mean().item() for k in ks}


def pair_scores(feat_a: Tensor, feat_b: Tensor) -> Tensor:
    """Cosine similarity of each pair: feat_a (N, D) and feat_b (N, D) → (N,) in [-1, 1]."""
    _check_embeddings(feat_a, feat_b, "first", "second")
    if len(feat_a) != len(feat_b):
        raise MetricError(f"pair_scores needs as many first as second embeddings, got {len(feat_a)} and {len(feat_b)}")
    return (_unit(feat_a) * _unit(feat_b)).sum(1)


def tar_at_far(scores: Tensor, labels: Tensor, fars: Sequence[float] = (1e-2, 1e-3, 1e-4)) -> dict[float, float]:
    """1:1 verification: TAR (share of genuine pairs accepted) at each target FAR (share of impostor pairs accepted).

    scores (N,) are pair similarities; labels (N,) are 1 for genuine and 0 for impostor pairs. A pair is accepted
    when score ≥ threshold. The ROC is ``sklearn.metrics.roc_curve``'s (one point per distinct score, plus the
    accept-nothing point), and TAR@FAR is the highest TAR among ROC points with FAR ≤ target: the operating point at
    the lowest threshold that keeps FAR within the target. No interpolation. (insightface's IJB-C script instead
    takes the point whose FAR is nearest the target, which may exceed it.) Raises when a target FAR is below one
    impostor pair, 1/N_impostor, where the estimate would be meaningless. Returns {far: fraction in [0, 1]}.
    """
    scores = torch.as_tensor(scores).double().flatten()
    labels = torch.as_tensor(labels, device=scores.device).flatten()
    if len(scores) != len(labels):
        raise MetricError(f"tar_at_far needs one label per score, got {len(scores)} scores and {len(labels)} labels")
    if not ((labels == 0) | (labels == 1)).all():
        raise MetricError("tar_at_far labels must be 1 (genuine) or 0 (impostor)")
    if not torch.isfinite(scores).all():
        raise MetricError("tar_at_far scores contain NaN or infinite values")
    n_genuine = int(labels.sum())
    n_impostor = len(labels) - n_genuine
    if n_genuine == 0 or n_impostor == 0:
        raise MetricError(f"tar_at_far needs genuine and impostor pairs, got {n_genuine} genuine "
                         f"and {n_impostor} impostor")
    _check_positive(fars, "fars")
    for far in fars:
        _count_at_rate(n_impostor, far, "impostor pairs", "FAR")
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order].double()
    # The last index of each run of equal scores: one ROC point per distinct threshold.
    ends = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), torch.tensor([len(s) - 1], device=s.device)])
    tps = y.cumsum(0)[ends]
    fps = (ends + 1).double() - tps
    zero = s.new_zeros(1)
    fpr, tpr = torch.cat([zero, fps / n_impostor]), torch.cat([zero, tps / n_genuine])
    idx = torch.searchsorted(fpr, s.new_tensor([float(f) for f in fars]), right=True) - 1
    return {float(f): tpr[i].item() for f, i in zip(fars, idx)}


def template_features(image_feats: Tensor, image_scores: Tensor, templates: Tensor, medias: Tensor,
                      flipped_feats: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """IJB-C template pooling: per image, (embedding + flipped embedding) × face score; mean over the images of each
    media within a template; sum over the template's media; L2-normalise.

    image_feats, flipped_feats (N, D); image_scores (N,) face-detector scores; templates, medias (N,) int ids (a
    media shared by two templates is pooled separately in each). Embeddings are used as given, not normalised
    per image. Returns (template_ids (T,) sorted ascending, unit-norm features (T, D)).
    """
    n = len(image_feats)
    if image_feats.dim() != 2 or n == 0:
        raise MetricError(f"image embeddings must be a non-empty (N, D) tensor, got shape {tuple(image_feats.shape)}")
    if flipped_feats is not None and flipped_feats.shape != image_feats.shape:
        raise MetricError(f"flipped embeddings have shape {tuple(flipped_feats.shape)} but image embeddings have "
                         f"shape {tuple(image_feats.shape)}")
    for name, x in (("image_scores", image_scores), ("templates", templates), ("medias", medias)):
        _check_rows(x, n, name)
    feats = image_feats if image_feats.is_floating_point() else image_feats.float()
    if flipped_feats is not None:
        feats = feats + flipped_feats
    feats = feats * image_scores.to(feats)[:, None]
    groups, group_of = torch.unique(torch.stack([templates, medias], 1).to(feats.device), dim=0, return_inverse=True)
    media_sum = feats.new_zeros(len(groups), feats.shape[1]).index_add_(0, group_of, feats)
    media_mean = media_sum / torch.bincount(group_of, minlength=len(groups)).to(feats)[:, None]
    template_ids, template_of = torch.unique(groups[:, 0], return_inverse=True)
    pooled = feats.new_zeros(len(template_ids), feats.shape[1]).index_add_(0, template_of, media_mean)
    return template_ids, F.normalize(pooled, dim=1)


def identification_1n(probe_feats: Tensor, probe_subjects: Tensor, gallery_feats: Tensor, gallery_subjects: Tensor,
                      ranks: Sequence[int] = (1, 5, 10), fpirs: Sequence[float] = (1e-1, 1e-2),
                      chunk_size: int | None = None) -> dict[str, float]:
    """1:N open-set identification of probe templates against one gallery.

    probe_feats (P, D), gallery_feats (G, D) template embeddings; probe_subjects (P,), gallery_subjects (G,) int
    subject ids. A probe is *mated* when its subject is in the gallery, *non-mated* otherwise. A probe's score for a
    subject is its best score over that subject's gallery templates (IJB-C has one per subject).

    - ``rank{k}``: share of mated probes whose mate is among the k highest-scoring subjects (rank = 1 + the number of
      other subjects scoring at least as high as the mate).
    - ``tpir@fpir={fpir:g}``: threshold = the ⌈N_nonmated·FPIR⌉-th highest of the non-mated probes' best scores;
      share of mated probes whose mate ranks first with a score strictly above the threshold.

    Raises when no probe is mated, or when N_nonmated·FPIR < 1. Returns {name: fraction in [0, 1]}.
    """
    _check_embeddings(probe_feats, gallery_feats, "probe", "gallery")
    _check_rows(probe_subjects, len(probe_feats), "probe_subjects")
    _check_rows(gallery_subjects, len(gallery_feats), "gallery_subjects")
    _check_positive(ranks, "ranks")
    p, g = _unit(probe_feats), _unit(gallery_feats)
    subjects, subject_of = torch.unique(gallery_subjects.to(p.device), return_inverse=True)
    probe_subjects = probe_subjects.to(p.device)
    mate = torch.searchsorted(subjects, probe_subjects).clamp(max=len(subjects) - 1)
    mated = subjects[mate] == probe_subjects
    if not mated.any():
        raise MetricError("identification_1n has no mated probes: no probe subject appears in the gallery")
    best = torch.empty(len(p), dtype=p.dtype, device=p.device)
    mate_score = torch.empty_like(best)
    mate_rank = torch.empty(len(p), dtype=torch.long, device=p.device)
    for s in _chunks(len(p), len(g), chunk_size):
        sim = p[s] @ g.T
        per_subject = sim.new_full((len(sim), len(subjects)), -math.inf)
        per_subject.scatter_reduce_(1, subject_of.expand_as(sim), sim, "amax")
        best[s] = per_subject.amax(1)
        mate_score[s] = per_subject.gather(1, mate[s, None]).squeeze(1)
        # ties count against the probe: every other subject scoring at least the mate's score ranks ahead of it
        others = per_subject.scatter(1, mate[s, None], -math.inf)
        mate_rank[s] = (others >= mate_score[s, None]).sum(1) + 1
    rank, score = mate_rank[mated], mate_score[mated]
    out = {f"rank{k}": (rank <= k).double().mean().item() for k in ranks}
    non_mated_best = best[~mated].sort(descending=True).values
    for fpir in fpirs:
        r = _count_at_rate(len(non_mated_best), fpir, "non-mated probes", "FPIR")
        threshold = non_mated_best[r - 1]
        out[f"tpir@fpir={fpir:g}"] = ((rank == 1) & (score > threshold)).double().mean().item()
    return out


def identification_g1_g2(probe_feats: Tensor, probe_subjects: Tensor, gallery_g1: tuple[Tensor, Tensor],
                         gallery_g2: tuple[Tensor, Tensor], ranks: Sequence[int] = (1, 5, 10),
                         fpirs: Sequence[float] = (1e-1, 1e-2), chunk_size: int | None = None) -> dict[str, float]:
    """IJB-C 1:N protocol: ``identification_1n`` of the mixed probes against gallery G1 and against G2 separately
    (each a (features (G, D), subjects (G,)) pair; a probe mated in one is non-mated in the other), then the mean of
    each metric over the two galleries."""
    results = [identification_1n(probe_feats, probe_subjects, feats, subjects, ranks, fpirs, chunk_size)
               for feats, subjects in (gallery_g1, gallery_g2)]
    return {name: (results[0][name] + results[1][name]) / 2 for name in results[0]}
