"""CMP-NAS's search reward: compatibility of a query candidate φq with the frozen gallery model φg
(``hom`` = A(φq, φq), ``het`` = A(φq, φg)) on the search-reward split, for each protocol.

* closed set (digits): top-``search.reward_k`` retrieval, validation queries against the training gallery.
* fashion: top-``search.reward_k`` (50 [seed]) retrieval, carved user items (style > 0) against carved shop items
  (style > 0); correct = same (pair_id, style). ``het``: queries by φq, gallery by φg.
* face: TAR@FAR=``search.reward_far`` (1e-3 [seed]) on 1:1 pairs formed within the carve
  (:func:`nasx.evaluation.pairs.verification_pairs`). ``het`` [nasx]: the *first* image of each pair is the query
  (φq), the second the gallery side (φg), as for IJB-C's ``tid1 tid2`` pairs at test time. A carve with too few
  impostor pairs for that FAR falls back to the smallest FAR they support, 1/N_impostor [nasx], with a warning;
  every candidate's metrics record the FAR used as ``far``.

φg's side of ``het`` is embedded once per search; the reward images are decoded once and held in memory as uint8
(normalised per batch on the device), so each candidate only runs φq.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nasx.arch import Arch
from nasx.evaluation.base import Batches, SupernetEvaluator
from nasx.evaluation.embedding import embed
from nasx.metrics.retrieval import pair_scores, tar_at_far, topk_retrieval

log = logging.getLogger("nasx")
KS = (1, 5, 10)  # digits
FASHION_KS = (1, 10, 20)  # [seed: Tab. 3]


def retrieval_metrics(query: Tensor, gallery: Tensor, yq: Tensor, yg: Tensor, prefix: str,
                      reward_k: int | None = None, ks: Sequence[int] = KS) -> dict[str, float]:
    """``{prefix}_top{k}`` for k in ks (and reward_k), plus ``{prefix}`` = top-reward_k when given."""
    all_ks = tuple(sorted(set(ks) | ({reward_k} if reward_k else set())))
    top = topk_retrieval(query, gallery, yq, yg, ks=all_ks)
    out = {f"{prefix}_top{k}": top[k] for k in all_ks}
    if reward_k:
        out[prefix] = top[reward_k]
    return out


class RetrievalReward:
    """Top-k retrieval of queries against a gallery; labels (N,) or (N, 2) rows, correct = equal rows.
    Images are model input, or raw pixels normalised by ``prepare``."""

    shared = False  # the query and gallery sides are different images

    def __init__(self, queries: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor,
                 ks: Sequence[int], reward_k: int, prepare: Callable[[Tensor], Tensor] | None = None):
        self.queries, self.query_labels, self.gallery, self.gallery_labels = queries, query_labels, gallery, \
            gallery_labels
        self.ks, self.reward_k, self.prepare = tuple(ks), reward_k, prepare

    @staticmethod
    def names(ks: Sequence[int], reward_k: int) -> list[str]:
        all_ks = sorted(set(ks) | {reward_k})
        return ["hom", "het"] + [f"{p}_top{k}" for p in ("hom", "het") for k in all_ks]

    @property
    def metric_names(self) -> list[str]:
        return self.names(self.ks, self.reward_k)

    def to(self, device: torch.device) -> RetrievalReward:
        for key in ("queries", "query_labels", "gallery", "gallery_labels"):
            setattr(self, key, getattr(self, key).to(device))
        return self

    def embed_queries(self, model: nn.Module) -> Tensor:
        return embed(model, self.queries, prepare=self.prepare)

    def embed_gallery(self, model: nn.Module) -> Tensor:
        return embed(model, self.gallery, prepare=self.prepare)

    def score(self, query: Tensor, gallery: Tensor, prefix: str) -> dict[str, float]:
        return retrieval_metrics(query, gallery, self.query_labels, self.gallery_labels, prefix, self.reward_k,
                                 self.ks)


def supported_far(far: float, n_impostor: int) -> float:
    """``far`` if n_impostor impostor pairs support it (at least one false accept at that rate), else 1/n_impostor."""
    if round(n_impostor * far, 6) >= 1:
        return far
    fallback = 1.0 / n_impostor
    log.warning("search reward: %d impostor pairs cannot measure TAR@FAR=%g; using FAR=%.3g instead (the smallest "
                "they support); a larger data.carve_fraction or search.reward_impostor_pairs restores it",
                n_impostor, far, fallback)
    return fallback


class VerificationReward:
    """1:1 verification on pairs of one image set: TAR at ``far`` (see :func:`supported_far`) of the cosine scores
    of (first image as query, second as gallery side). ``pairs`` (P, 2) index ``images``; ``genuine`` (P,) 1/0."""

    shared = True  # both sides are the same images: φq embeds them once for hom

    def __init__(self, images: Tensor, pairs: Tensor, genuine: Tensor, far: float,
                 prepare: Callable[[Tensor], Tensor] | None = None):
        self.images, self.pairs, self.genuine, self.prepare = images, pairs, genuine, prepare
        self.far = supported_far(far, int((genuine == 0).sum()))

    @staticmethod
    def names() -> list[str]:
        return ["hom", "het", "far"]

    metric_names = property(lambda self: self.names())

    def to(self, device: torch.device) -> VerificationReward:
        self.images, self.pairs, self.genuine = self.images.to(device), self.pairs.to(device), self.genuine.to(device)
        return self

    def embed_queries(self, model: nn.Module) -> Tensor:
        return embed(model, self.images, prepare=self.prepare)

    embed_gallery = embed_queries

    def score(self, query: Tensor, gallery: Tensor, prefix: str) -> dict[str, float]:
        scores = pair_scores(query[self.pairs[:, 0]], gallery[self.pairs[:, 1]])
        return {prefix: tar_at_far(scores, self.genuine, (self.far,))[self.far], "far": self.far}


class CompatibilityEvaluator(SupernetEvaluator):
    """Scores a query candidate on a reward protocol (:class:`RetrievalReward` or :class:`VerificationReward`):
    its query side (and, for hom, its gallery side) embedded by the calibrated candidate φq; het scores φq's query
    side against φg's gallery side, embedded once here."""

    def __init__(self, supernet: nn.Module, calibration: Batches, reward, gallery_model: nn.Module,
                 device: str | torch.device = "cpu"):
        super().__init__(supernet, calibration, device)
        self.reward = reward.to(self.device)
        self.metrics = tuple(reward.metric_names)
        self.gallery_g = self.reward.embed_gallery(gallery_model.to(self.device))  # φg: once for the whole search

    def score(self, arch: Arch, model: nn.Module) -> dict[str, float]:
        q = self.reward.embed_queries(model)
        g = q if self.reward.shared else self.reward.embed_gallery(model)
        m = self.reward.score(q, g, "hom")
        m.update(self.reward.score(q, self.gallery_g, "het"))
        return m
