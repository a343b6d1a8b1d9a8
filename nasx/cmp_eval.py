"""CMP-NAS's compatibility metrics on each protocol: the search reward (``hom`` = A(φq, φq), ``het`` = A(φq, φg))
and the evaluate stage's test metrics. The stages themselves are in :mod:`nasx.cmp_nas`.

Reward protocols (on the search-reward split; ``hom`` and ``het`` are the reward metric):

* closed set (digits): top-``search.reward_k`` retrieval, validation queries against the training gallery.
* fashion: top-``search.reward_k`` (50 [seed]) retrieval, carved user items (style > 0) against carved shop items
  (style > 0); correct = same (pair_id, style). ``het``: queries by φq, gallery by φg.
* face: TAR@FAR=``search.reward_far`` (1e-3 [seed]) on 1:1 pairs formed within the carve (:func:`verification_pairs`).
  ``het`` [nasx]: the *first* image of each pair is the query (φq), the second the gallery side (φg), as for IJB-C's
  ``tid1 tid2`` pairs at test time. A carve with too few impostor pairs for that FAR falls back to the smallest FAR
  they support, 1/N_impostor [nasx], with a warning; every candidate's metrics record the FAR used as ``far``.

φg's side of ``het`` is embedded once per search; the reward images are decoded once and held in memory as uint8
(normalised per batch on the device), so each candidate only runs φq.

Test protocols (DATASETS.md): face → IJB-C 1:1 TAR@FAR 1e-2/1e-3/1e-4 and 1:N (G1, G2, averaged) rank-1/5/10 and
TPIR@FPIR 1e-1/1e-2 on templates pooled from (image + mirrored) embeddings × face score; ``het`` embeds probes and
``tid1`` by φq, gallery templates and ``tid2`` by φg. Fashion → the validation split's top-1/10/20. An operating
point the data cannot support (too few impostor pairs / non-mated probes) is reported as None with a warning.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nasx.arch import Arch
from nasx.errors import MetricError
from nasx.evaluator import bn_recalibrate
from nasx.metrics.retrieval import identification_g1_g2, pair_scores, tar_at_far, template_features, topk_retrieval

log = logging.getLogger("nasx")
KS = (1, 5, 10)  # digits
FASHION_KS = (1, 10, 20)  # [seed: Tab. 3]
FARS = (1e-2, 1e-3, 1e-4)  # [seed: Tab. 2]
RANKS = (1, 5, 10)  # [seed: Tab. 1]
FPIRS = (1e-1, 1e-2)  # 1e-1 [seed: Fig. 1]; 1e-2 [nasx]
ENUMERATE_PAIRS = 1 << 22  # impostor pairs are enumerated up to this many candidates, sampled beyond


# -- embedding -----------------------------------------------------------------------------------------------------
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


# -- reward protocols ------------------------------------------------------------------------------------------------
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

    def to(self, device: torch.device) -> VerificationReward:
        self.images, self.pairs, self.genuine = self.images.to(device), self.pairs.to(device), self.genuine.to(device)
        return self

    def embed_queries(self, model: nn.Module) -> Tensor:
        return embed(model, self.images, prepare=self.prepare)

    embed_gallery = embed_queries

    def score(self, query: Tensor, gallery: Tensor, prefix: str) -> dict[str, float]:
        scores = pair_scores(query[self.pairs[:, 0]], gallery[self.pairs[:, 1]])
        return {prefix: tar_at_far(scores, self.genuine, (self.far,))[self.far], "far": self.far}


def _sample(n: int, k: int, g: torch.Generator) -> Tensor:
    """k of range(n) without replacement, seeded, ascending."""
    return torch.randperm(n, generator=g)[:k].sort().values


def verification_pairs(labels: Tensor, max_genuine: int, max_impostor: int, seed: int) -> tuple[Tensor, Tensor]:
    """1:1 pairs within one image set [nasx]: (pairs (P, 2) int64 indices into labels, genuine (P,) int64 1/0).

    Genuine: every pair i < j of the same label, identities taken in a seeded order until ``max_genuine`` pairs
    (the last identity's pairs cut) — by identity, so a cap bounds the images the reward needs. Impostor: pairs
    i < j of different labels among the images those genuine pairs use: all of them, or a seeded sample of
    ``max_impostor``. Genuine pairs come first. Raises MetricError when no label has two images.
    """
    g = torch.Generator().manual_seed(seed)
    sorted_labels, order = labels.sort(stable=True)
    counts = torch.unique_consecutive(sorted_labels, return_counts=True)[1]
    starts = torch.cumsum(counts, 0) - counts
    genuine, total = [], 0
    for c in torch.randperm(len(counts), generator=g).tolist():
        if total >= max_genuine:
            break
        if counts[c] >= 2:
            members = order[starts[c]:starts[c] + counts[c]].sort().values
            genuine.append(torch.combinations(members, 2))
            total += len(genuine[-1])
    if not genuine:
        raise MetricError(f"no two images share an identity among the {len(labels)} search-reward images: no "
                          f"genuine pair (raise data.carve_fraction)")
    gen = torch.cat(genuine)[:max_genuine]
    used = torch.unique(gen)
    lu, n = labels[used], len(used)
    if n * (n - 1) // 2 <= ENUMERATE_PAIRS:
        i, j = torch.triu_indices(n, n, 1)
        keep = lu[i] != lu[j]
        imp = torch.stack([i[keep], j[keep]], 1)
        if len(imp) > max_impostor:
            imp = imp[_sample(len(imp), max_impostor, g)]
    else:  # rejection sampling of distinct unordered pairs, then a seeded subset
        keys = torch.empty(0, dtype=torch.long)
        for _ in range(1000):
            a, b = torch.randint(0, n, (2, max_impostor), generator=g)
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
            ok = lu[lo] != lu[hi]
            keys = torch.unique(torch.cat([keys, lo[ok] * n + hi[ok]]))
            if len(keys) >= max_impostor:
                break
        keys = keys[_sample(len(keys), min(max_impostor, len(keys)), g)]
        imp = torch.stack([keys // n, keys % n], 1)
    if len(imp) == 0:
        raise MetricError(f"the {n} search-reward images of genuine pairs all share one identity: no impostor pair")
    pairs = torch.cat([gen, used[imp]])
    return pairs, torch.cat([torch.ones(len(gen), dtype=torch.long), torch.zeros(len(imp), dtype=torch.long)])


class CompatibilityEvaluator:
    """``evaluator(arch) -> {hom, het, …}`` for a query candidate from the supernet, on a reward protocol
    (:class:`RetrievalReward` or :class:`VerificationReward`).

    Per candidate: extract, recalibrate BN on the cached training batches, embed the query side (and, for hom, the
    gallery side) with φq; het scores φq's query side against φg's gallery side, embedded once here. Cached per
    arch."""

    def __init__(self, supernet, calibration, reward, gallery_model: nn.Module,
                 device: str | torch.device = "cpu"):
        self.supernet, self.device = supernet.eval(), torch.device(device)
        self.calibration = [(x.to(self.device), y.to(self.device)) for x, y in calibration]
        self.reward = reward.to(self.device)
        self.gallery_g = self.reward.embed_gallery(gallery_model.to(self.device))  # φg: once for the whole search
        self.cache: dict[Arch, dict[str, float]] = {}

    def __call__(self, arch: Arch) -> dict[str, float]:
        if arch not in self.cache:
            model = bn_recalibrate(self.supernet.extract(arch).to(self.device), self.calibration)
            q = self.reward.embed_queries(model)
            g = q if self.reward.shared else self.reward.embed_gallery(model)
            m = self.reward.score(q, g, "hom")
            m.update(self.reward.score(q, self.gallery_g, "het"))
            self.cache[arch] = m
        return self.cache[arch]


class RetrievalEvaluator(CompatibilityEvaluator):
    """The closed-set protocol (digits): queries (x, y) against a gallery (x, y), model-input tensors."""

    metrics = tuple(RetrievalReward.names(KS, 1))

    def __init__(self, supernet, calibration, queries: tuple[Tensor, Tensor], gallery: tuple[Tensor, Tensor],
                 gallery_model: nn.Module, reward_k: int = 1, device: str | torch.device = "cpu"):
        super().__init__(supernet, calibration, RetrievalReward(*queries, *gallery, KS, reward_k), gallery_model,
                         device)


# -- test protocols ---------------------------------------------------------------------------------------------------
def _or_none(fn: Callable[[], float], what: str, warned: set[str]) -> float | None:
    """fn(), or None (with one warning per ``what`` in ``warned``) when the data cannot support the metric."""
    try:
        return fn()
    except MetricError as e:
        if what not in warned:
            warned.add(what)
            log.warning("evaluate: %s not measurable on this data (%s); reported as None", what, e)
        return None


def _rows(ids: Tensor, wanted: Tensor | Sequence[int]) -> Tensor:
    """Positions of template ids ``wanted`` (all present) in the ascending ``ids``."""
    return torch.searchsorted(ids, torch.as_tensor(wanted, dtype=ids.dtype).contiguous())


def _chunked_pair_scores(a: Tensor, b: Tensor, ia: Tensor, ib: Tensor, chunk: int = 1 << 18) -> Tensor:
    """pair_scores(a[ia], b[ib]) without materialising all pairs' features (IJB-C has 15.7M pairs)."""
    return torch.cat([pair_scores(a[ia[s:s + chunk]], b[ib[s:s + chunk]]) for s in range(0, len(ia), chunk)])


def ijbc_metrics(ijbc, template_ids: Tensor, probe_side: Tensor, gallery_side: Tensor, prefix: str,
                 warned: set[str] | None = None) -> dict:
    """IJB-C metrics of template features (T, D) in ``template_ids`` order: ``probe_side`` embeds probes and each
    pair's tid1, ``gallery_side`` the 1:N gallery templates and tid2. Keys ``{prefix}_tar@far={far:g}``,
    ``{prefix}_rank{k}``, ``{prefix}_tpir@fpir={fpir:g}``; values fractions in [0, 1] or None (not measurable)."""
    pairs, warned = ijbc.pairs, set() if warned is None else warned
    scores = _chunked_pair_scores(probe_side, gallery_side, _rows(template_ids, pairs[:, 0]),
                                  _rows(template_ids, pairs[:, 1]))
    out: dict[str, float | None] = {}
    for far in FARS:
        out[f"{prefix}_tar@far={far:g}"] = _or_none(lambda: tar_at_far(scores, pairs[:, 2], (far,))[far],
                                                    f"TAR@FAR={far:g}", warned)

    def side(mapping: dict[int, int], feats: Tensor) -> tuple[Tensor, Tensor]:
        tids = sorted(mapping)
        return feats[_rows(template_ids, tids)], torch.tensor([mapping[t] for t in tids])

    probe, g1, g2 = side(ijbc.probe, probe_side), side(ijbc.gallery_g1, gallery_side), side(ijbc.gallery_g2,
                                                                                            gallery_side)
    ranks = identification_g1_g2(*probe, g1, g2, ranks=RANKS, fpirs=())
    out.update({f"{prefix}_rank{k}": ranks[f"rank{k}"] for k in RANKS})
    for fpir in FPIRS:
        out[f"{prefix}_tpir@fpir={fpir:g}"] = _or_none(
            lambda: identification_g1_g2(*probe, g1, g2, ranks=(1,), fpirs=(fpir,))[f"tpir@fpir={fpir:g}"],
            f"TPIR@FPIR={fpir:g}", warned)
    return out


def face_results(data, model: nn.Module, gallery: nn.Module, device: torch.device) -> dict[str, dict]:
    """IJB-C rows: the query model hom/het and the paragon A(φg, φg)."""
    ijbc = data.ijbc()
    (fq, fq_flip), (fg, fg_flip) = embed_loader([model, gallery], data.test_dataloader(), device)
    scores = torch.tensor([im.score for im in ijbc.images])
    templates = torch.tensor([im.template_id for im in ijbc.images])
    medias = torch.tensor([im.media_id for im in ijbc.images])
    tids, tq = template_features(fq, scores, templates, medias, fq_flip)
    _, tg = template_features(fg, scores, templates, medias, fg_flip)
    warned: set[str] = set()
    return {"query (retrained)": {**ijbc_metrics(ijbc, tids, tq, tq, "hom", warned),
                                  **ijbc_metrics(ijbc, tids, tq, tg, "het", warned)},
            "paragon A(φg, φg)": ijbc_metrics(ijbc, tids, tg, tg, "hom", warned)}


def fashion_results(data, model: nn.Module, gallery: nn.Module, device: torch.device) -> dict[str, dict]:
    """DeepFashion2 validation rows: the query model hom/het and the paragon A(φg, φg), top-1/10/20."""
    queries, shop = data.test_sets()
    (qq, _), (qg, _) = embed_loader([model, gallery], data.eval_loader(queries.crops), device)
    (gq, _), (gg, _) = embed_loader([model, gallery], data.eval_loader(shop.crops), device)
    yq, yg = queries.labels, shop.labels
    return {"query (retrained)": {**retrieval_metrics(qq, gq, yq, yg, "hom", ks=FASHION_KS),
                                  **retrieval_metrics(qq, gg, yq, yg, "het", ks=FASHION_KS)},
            "paragon A(φg, φg)": retrieval_metrics(qg, gg, yq, yg, "hom", ks=FASHION_KS)}


def report_columns(protocol: str) -> list[list[str]]:
    """[key suffix, label] of each reported test metric, in display order (results.json ``metrics``)."""
    if protocol == "face":
        return ([[f"tar@far={f:g}", f"TAR@FAR={f:.0e}".replace("e-0", "e-")] for f in FARS]
                + [[f"rank{k}", f"rank-{k}"] for k in RANKS]
                + [[f"tpir@fpir={f:g}", f"TPIR@FPIR={f:.0e}".replace("e-0", "e-")] for f in FPIRS])
    return [[f"top{k}", f"top-{k}"] for k in (FASHION_KS if protocol == "fashion" else KS)]
