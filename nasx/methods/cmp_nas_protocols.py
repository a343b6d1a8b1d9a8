"""CMP-NAS's test protocols (DATASETS.md): the evaluate stage's homogeneous and heterogeneous metrics beside the
paragon A(φg, φg).

* closed set (digits): test queries against the training gallery, top-1/5/10.
* face: IJB-C 1:1 TAR@FAR 1e-2/1e-3/1e-4 and 1:N (G1, G2, averaged) rank-1/5/10 and TPIR@FPIR 1e-1/1e-2 on
  templates pooled from (image + mirrored) embeddings × face score; ``het`` embeds probes and ``tid1`` by φq,
  gallery templates and ``tid2`` by φg.
* fashion: the DeepFashion2 validation split's top-1/10/20.

An operating point the data cannot support (too few impostor pairs / non-mated probes) is reported as None with a
warning.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nasx.errors import MetricError
from nasx.evaluation.compatibility import FASHION_KS, KS, retrieval_metrics
from nasx.evaluation.embedding import embed, embed_loader
from nasx.metrics.retrieval import identification_g1_g2, pair_scores, tar_at_far, template_features

log = logging.getLogger("nasx")
FARS = (1e-2, 1e-3, 1e-4)  # [seed: Tab. 2]
RANKS = (1, 5, 10)  # [seed: Tab. 1]
FPIRS = (1e-1, 1e-2)  # 1e-1 [seed: Fig. 1]; 1e-2 [nasx]


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


def closed_set_results(data, model: torch.nn.Module, gallery: torch.nn.Module, dev: torch.device) -> dict:
    """Digits rows: test queries against the training gallery, top-1/5/10."""
    (qx, qy), (gx, gy) = data.split("test"), data.split("train")
    qx, qy, gx, gy = qx.to(dev), qy.to(dev), gx.to(dev), gy.to(dev)
    q, g_q, g_g = embed(model, qx), embed(model, gx), embed(gallery, gx)
    return {"query (retrained)": {**retrieval_metrics(q, g_q, qy, gy, "hom"),
                                  **retrieval_metrics(q, g_g, qy, gy, "het")},
            "paragon A(φg, φg)": retrieval_metrics(embed(gallery, qx), g_g, qy, gy, "hom")}


RESULTS = {"closed_set": closed_set_results, "face": face_results, "fashion": fashion_results}
PROTOCOL_NOTES = {
    "closed_set": "Queries: test split; gallery: training split; correct = same class; cosine similarity.",
    "face": "IJB-C, templates pooled from (image + mirrored) embeddings × face score. 1:1: "
            "ijbc_template_pair_label.txt, het = tid1 by the query model, tid2 by the gallery model. 1:N: mixed "
            "probes (query model) against G1 and G2 separately, averaged; rank-k over mated probes. — = not "
            "measurable on this data (too few impostor pairs / non-mated probes).",
    "fashion": "DeepFashion2 validation: user items with style > 0 as queries, shop items with style > 0 as the "
               "gallery, ground-truth box crops; correct = same (pair_id, style); cosine similarity.",
}
