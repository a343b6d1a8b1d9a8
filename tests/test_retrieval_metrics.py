"""Retrieval metrics against independent brute-force computations and hand-made cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from nasx.metrics import retrieval
from nasx.metrics.retrieval import (identification_1n, identification_g1_g2, pair_scores, tar_at_far,
                                    template_features, topk_retrieval)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _brute_topk(query, gallery, q_labels, g_labels, ks, exclude_self=False):
    """Per query: sort the gallery by cosine, wrong items first among equal cosines (ties count against the
    query), look for a matching label tuple in the first k."""
    hits = {k: 0 for k in ks}
    for i, q in enumerate(query):
        wanted = tuple(np.atleast_1d(q_labels[i]))
        items = [(_cos(q, g), tuple(np.atleast_1d(g_labels[j]))) for j, g in enumerate(gallery)
                 if not (exclude_self and j == i)]
        ranked = [label for _, label in sorted(items, key=lambda t: (-t[0], t[1] == wanted))]
        for k in ks:
            hits[k] += wanted in ranked[:k]
    return {k: hits[k] / len(query) for k in ks}


def _brute_identification(probe, p_subj, gallery, g_subj, ranks, fpirs):
    """Loops over probes and subjects; the threshold is read off the sorted non-mated best scores."""
    subjects = sorted(set(g_subj.tolist()))
    mated_ranks, mated_scores, non_mated_best = [], [], []
    for x, subj in zip(probe, p_subj.tolist()):
        per_subject = {s: max(_cos(x, g) for g, gs in zip(gallery, g_subj.tolist()) if gs == s) for s in subjects}
        order = sorted(subjects, key=lambda s: (-per_subject[s], s == subj))  # ties count against the probe
        if subj in per_subject:
            mated_ranks.append(order.index(subj) + 1)
            mated_scores.append(per_subject[subj])
        else:
            non_mated_best.append(per_subject[order[0]])
    out = {f"rank{k}": sum(r <= k for r in mated_ranks) / len(mated_ranks) for k in ranks}
    descending = sorted(non_mated_best, reverse=True)
    for fpir in fpirs:
        threshold = descending[math.ceil(round(len(descending) * fpir, 6)) - 1]
        out[f"tpir@fpir={fpir:g}"] = sum(r == 1 and s > threshold for r, s in zip(mated_ranks, mated_scores)) \
            / len(mated_ranks)
    return out


def _clusters(rng, n_classes, n_per_class, dim, noise):
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return centres[labels] + noise * rng.normal(size=(len(labels), dim)), labels


# ---------------------------------------------------------------- top-k retrieval

def test_topk_hand_made_three_queries():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    query = torch.tensor([[1.0, 0.1], [0.9, 0.5], [1.0, 0.3]])  # correct item at rank 1, 2 and 3
    result = topk_retrieval(query, gallery, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert result == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})
    assert all(type(v) is float for v in result.values())


def test_topk_matches_brute_force_on_random_clusters():
    rng = np.random.default_rng(0)
    gallery, g_labels = _clusters(rng, 12, 5, 16, noise=1.5)
    query = gallery[rng.permutation(len(gallery))[:40]] + rng.normal(size=(40, 16))
    q_labels = g_labels[rng.permutation(len(g_labels))[:40]]
    ks = (1, 5, 10)
    result = topk_retrieval(torch.tensor(query), torch.tensor(gallery), torch.tensor(q_labels),
                            torch.tensor(g_labels), ks)
    assert result == pytest.approx(_brute_topk(query, gallery, q_labels, g_labels, ks))
    assert 0 < result[1] < result[10] < 1


def test_topk_exclude_self_leaves_out_the_query_itself():
    rng = np.random.default_rng(1)
    feats, labels = _clusters(rng, 8, 4, 12, noise=1.0)
    ks = (1, 3, 5)
    x, y = torch.tensor(feats), torch.tensor(labels)
    assert topk_retrieval(x, x, y, y, ks) == {1: 1.0, 3: 1.0, 5: 1.0}  # each query finds itself
    assert topk_retrieval(x, x, y, y, ks, exclude_self=True) == pytest.approx(
        _brute_topk(feats, feats, labels, labels, ks, exclude_self=True))


def test_topk_pair_id_and_style_must_both_match():
    gallery = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    g_labels = torch.tensor([[7, 1], [7, 2], [9, 1]])  # (pair_id, style)
    query = torch.tensor([[1.0, 0.05], [1.0, 0.05]])
    q_labels = torch.tensor([[7, 2], [9, 1]])  # nearest item shares pair_id 7 but not style 2
    assert topk_retrieval(query, gallery, q_labels, g_labels, ks=(1, 2, 3)) == pytest.approx({1: 0.0, 2: 0.5, 3: 1.0})

    rng = np.random.default_rng(2)
    g = rng.normal(size=(50, 8))
    q = rng.normal(size=(30, 8))
    gl = rng.integers(0, 4, size=(50, 2))
    ql = rng.integers(0, 4, size=(30, 2))
    ks = (1, 5, 20)
    assert topk_retrieval(torch.tensor(q), torch.tensor(g), torch.tensor(ql), torch.tensor(gl), ks) == \
        pytest.approx(_brute_topk(q, g, ql, gl, ks))


def test_topk_heterogeneous_uses_query_model_against_gallery_model_embeddings():
    rng = np.random.default_rng(3)
    images, labels = _clusters(rng, 10, 6, 20, noise=0.7)
    gallery_model = rng.normal(size=(20, 16))
    models = {"paragon": gallery_model, "compatible": gallery_model + 0.05 * rng.normal(size=(20, 16)),
              "incompatible": rng.normal(size=(20, 16))}
    q_imgs, g_imgs, q_labels, g_labels = images[::2], images[1::2], labels[::2], labels[1::2]
    gallery = g_imgs @ gallery_model
    ks = (1, 5)
    het = {name: topk_retrieval(torch.tensor(q_imgs @ w), torch.tensor(gallery), torch.tensor(q_labels),
                                torch.tensor(g_labels), ks) for name, w in models.items()}
    for name, w in models.items():
        assert het[name] == pytest.approx(_brute_topk(q_imgs @ w, gallery, q_labels, g_labels, ks))
    w = models["incompatible"]
    hom = topk_retrieval(torch.tensor(q_imgs @ w), torch.tensor(g_imgs @ w), torch.tensor(q_labels),
                         torch.tensor(g_labels), ks)
    # The incompatible model is a good retriever on its own gallery, but not on the gallery model's.
    assert het["compatible"][1] >= het["paragon"][1] - 0.1
    assert het["incompatible"][1] < 0.4 < 0.8 < hom[1]


@pytest.mark.parametrize("exclude_self", [False, True])
def test_topk_chunking_gives_identical_results(monkeypatch, exclude_self):
    rng = np.random.default_rng(4)
    feats, labels = _clusters(rng, 15, 4, 10, noise=2.0)
    x, y = torch.tensor(feats), torch.tensor(labels)
    ks = (1, 5, 10)
    whole = topk_retrieval(x, x, y, y, ks, exclude_self=exclude_self, chunk_size=len(x))
    for chunk_size in (1, 7, 59):
        assert topk_retrieval(x, x, y, y, ks, exclude_self=exclude_self, chunk_size=chunk_size) == whole
    monkeypatch.setattr(retrieval, "_BLOCK_ELEMENTS", 3 * len(x))  # automatic chunks of 3 queries
    assert topk_retrieval(x, x, y, y, ks, exclude_self=exclude_self) == whole


def _tied_embeddings(rng, n: int, dim: int = 6) -> np.ndarray:
    """Random positive multiples of ±basis vectors: every cosine is exactly -1, 0 or 1, so ties abound."""
    rows = np.zeros((n, dim))
    rows[np.arange(n), rng.integers(0, dim, n)] = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 2.0, n)
    return rows


def test_constant_embeddings_score_no_better_than_chance():
    labels = torch.arange(5).repeat_interleave(4)  # 5 classes × 4 items: 16 wrong items tie with every correct one
    x = torch.ones(20, 8)
    ks = (1, 5, 16, 17)
    assert topk_retrieval(x, x, labels, labels, ks) == {1: 0.0, 5: 0.0, 16: 0.0, 17: 1.0}
    assert topk_retrieval(x, x, labels, labels, ks, exclude_self=True) == {1: 0.0, 5: 0.0, 16: 0.0, 17: 1.0}
    # chance is top-1 = 1/5 on this gallery under a random order of the tied items; constant embeddings must not
    # beat it (they used to score 100 %)
    rng = np.random.default_rng(11)
    z = torch.tensor(rng.normal(size=(1, 8))).expand(20, 8)
    assert topk_retrieval(z, z, labels, labels, (1,))[1] <= 1 / 5


def test_topk_with_ties_matches_pessimistic_brute_force():
    rng = np.random.default_rng(12)
    gallery, query = _tied_embeddings(rng, 40), _tied_embeddings(rng, 30)
    g_labels, q_labels = rng.integers(0, 4, 40), rng.integers(0, 4, 30)
    ks = (1, 2, 5, 10, 20)
    result = topk_retrieval(torch.tensor(query), torch.tensor(gallery), torch.tensor(q_labels),
                            torch.tensor(g_labels), ks)
    assert result == pytest.approx(_brute_topk(query, gallery, q_labels, g_labels, ks))
    assert 0 < result[1] < result[20] < 1  # a real spread, not all hits or all misses
    assert topk_retrieval(torch.tensor(gallery), torch.tensor(gallery), torch.tensor(g_labels),
                          torch.tensor(g_labels), ks, exclude_self=True, chunk_size=7) == \
        pytest.approx(_brute_topk(gallery, gallery, g_labels, g_labels, ks, exclude_self=True))


def test_topk_query_without_any_correct_item_is_a_miss():
    gallery, query = torch.eye(3), torch.eye(3)
    assert topk_retrieval(query, gallery, torch.tensor([0, 1, 5]), torch.tensor([0, 1, 2]), ks=(3,)) == \
        pytest.approx({3: 2 / 3})
    # With exclude_self, a query whose label no other item shares has nothing to find, even at k = N.
    labels = torch.tensor([0, 0, 1])
    assert topk_retrieval(query, gallery, labels, labels, ks=(3,), exclude_self=True) == pytest.approx({3: 2 / 3})


def test_topk_bad_inputs_raise_one_line_errors():
    x, y = torch.randn(4, 8), torch.arange(4)
    with pytest.raises(ValueError, match="query embeddings have dim 8 but gallery embeddings have dim 16"):
        topk_retrieval(x, torch.randn(4, 16), y, y)
    with pytest.raises(ValueError, match="non-empty"):
        topk_retrieval(torch.empty(0, 8), x, torch.empty(0, dtype=torch.long), y)
    with pytest.raises(ValueError, match="query_labels must have shape"):
        topk_retrieval(x, x, torch.arange(3), y)
    with pytest.raises(ValueError, match="exclude_self needs the query set to be the gallery set"):
        topk_retrieval(x[:3], x, y[:3], y, exclude_self=True)
    with pytest.raises(ValueError, match="NaN"):
        topk_retrieval(torch.full((4, 8), math.nan), x, y, y)


# ---------------------------------------------------------------- 1:1 verification

def test_pair_scores_are_cosine_per_pair():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    assert pair_scores(torch.tensor(a), torch.tensor(b)).tolist() == pytest.approx([_cos(u, v) for u, v in zip(a, b)])
    with pytest.raises(ValueError, match="first embeddings have dim 5 but second embeddings have dim 4"):
        pair_scores(torch.tensor(a), torch.randn(6, 4))


def _sklearn_tar(scores, labels, far):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(tpr[fpr <= far].max())


def test_tar_at_far_matches_sklearn_roc_curve():
    rng = np.random.default_rng(6)
    scores = np.concatenate([rng.normal(2.0, 1.0, 3000), rng.normal(0.0, 1.0, 20000)])
    labels = np.concatenate([np.ones(3000, int), np.zeros(20000, int)])
    fars = (1e-1, 1e-2, 1e-3, 1e-4)
    result = tar_at_far(torch.tensor(scores), torch.tensor(labels), fars)
    assert result == pytest.approx({f: _sklearn_tar(scores, labels, f) for f in fars})
    assert result[1e-4] < result[1e-3] < result[1e-2] < result[1e-1]


def test_tar_at_far_with_tied_scores_matches_sklearn():
    rng = np.random.default_rng(7)
    scores = np.round(np.concatenate([rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.0, 2000)]), 1)
    labels = np.concatenate([np.ones(500, int), np.zeros(2000, int)])
    fars = (0.3, 0.05, 1e-2, 1e-3)
    assert tar_at_far(scores, labels, fars) == pytest.approx({f: _sklearn_tar(scores, labels, f) for f in fars})


def test_tar_at_far_hand_made():
    impostor = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3]
    genuine = [0.95, 0.9, 0.45, 0.35]
    scores = torch.tensor(genuine + impostor)
    labels = torch.tensor([1] * 4 + [0] * 10)
    # FAR 0.1 admits one impostor: threshold 0.9 accepts the genuine 0.95 and the genuine 0.9 tied with it.
    # FAR 0.2 admits two: threshold 0.45 (just above the third impostor) accepts three genuine pairs.
    assert tar_at_far(scores, labels, (0.1, 0.2, 0.25, 0.3)) == \
        pytest.approx({0.1: 0.5, 0.2: 0.75, 0.25: 0.75, 0.3: 1.0})


def test_tar_at_far_bad_inputs_raise_one_line_errors():
    scores, labels = torch.randn(100), torch.tensor([1] * 10 + [0] * 90)
    with pytest.raises(ValueError, match="FAR 0.001 needs at least 1000 impostor pairs, got 90"):
        tar_at_far(scores, labels, (0.1, 1e-3))
    with pytest.raises(ValueError, match="needs genuine and impostor pairs, got 0 genuine"):
        tar_at_far(scores, torch.zeros(100), (0.1,))
    with pytest.raises(ValueError, match="one label per score"):
        tar_at_far(scores, labels[:50], (0.1,))


# ---------------------------------------------------------------- IJB-C template pooling

def test_template_features_match_hand_pooling():
    rng = np.random.default_rng(8)
    feats, flipped = rng.normal(size=(9, 4)), rng.normal(size=(9, 4))
    face_scores = rng.uniform(0.5, 1.0, size=9)
    templates = np.array([5, 5, 5, 5, 2, 2, 2, 9, 9])
    medias = np.array([1, 1, 3, 3, 1, 1, 4, 7, 3])  # media 1 appears in templates 5 and 2: pooled separately
    expected = {}
    for t in sorted(set(templates.tolist())):
        per_media = {}
        for i in np.flatnonzero(templates == t):
            per_media.setdefault(medias[i], []).append((feats[i] + flipped[i]) * face_scores[i])
        pooled = sum(np.mean(images, axis=0) for images in per_media.values())
        expected[t] = pooled / np.linalg.norm(pooled)
    ids, pooled = template_features(torch.tensor(feats), torch.tensor(face_scores), torch.tensor(templates),
                                    torch.tensor(medias), torch.tensor(flipped))
    assert ids.tolist() == [2, 5, 9]
    for t, f in zip(ids.tolist(), pooled.numpy()):
        assert f == pytest.approx(expected[t])


def test_template_features_without_flip_weight_media_equally():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Template 0: media 0 holds three frames, media 1 one image; the mean per media gives them equal weight.
    ids, pooled = template_features(feats, torch.ones(4), torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 0, 1]))
    assert ids.tolist() == [0]
    assert pooled[0].tolist() == pytest.approx([2 ** -0.5, 2 ** -0.5])


# ---------------------------------------------------------------- 1:N open-set identification

def _probe_at(cosine: float, axis: int, dim: int = 5) -> list[float]:
    """A unit vector with the given cosine to basis vector ``axis`` and the rest on the last axis."""
    v = [0.0] * dim
    v[axis], v[-1] = cosine, math.sqrt(1 - cosine ** 2)
    return v


def test_tpir_threshold_excludes_a_mated_probe_scoring_below_it():
    gallery = torch.eye(5)[:3]  # subjects 0, 1, 2
    non_mated_scores = [0.8, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2]
    mated = [_probe_at(0.9, 0), _probe_at(0.7, 1), _probe_at(0.8, 1)]
    probes = torch.tensor(mated + [_probe_at(c, 2) for c in non_mated_scores])
    subjects = torch.tensor([0, 1, 1] + [99] * 10)
    result = identification_1n(probes, subjects, gallery, torch.tensor([0, 1, 2]), ranks=(1,), fpirs=(0.1, 0.2))
    # FPIR 0.1: threshold 0.8 (rank ⌈10·0.1⌉ = 1) keeps the 0.9 mate and drops the 0.7 one and the 0.8 one, which
    # is not above it. FPIR 0.2: threshold 0.6 keeps all three.
    assert result == pytest.approx({"rank1": 1.0, "tpir@fpir=0.1": 1 / 3, "tpir@fpir=0.2": 1.0})


def test_tpir_threshold_rank_survives_float_error_in_n_times_fpir():
    gallery = torch.eye(5)[:3]
    non_mated_scores = [0.99 - 0.005 * i for i in range(100)]  # 100 · 0.07 = 7.000000000000001 in floating point
    probes = torch.tensor([_probe_at(0.97, 0), _probe_at(0.958, 1)] + [_probe_at(c, 2) for c in non_mated_scores])
    subjects = torch.tensor([0, 1] + [99] * 100)
    # Threshold = the 7th highest non-mated score, 0.96, not the 8th (0.955), which would also admit the 0.958 mate.
    assert identification_1n(probes, subjects, gallery, torch.tensor([0, 1, 2]), ranks=(1,), fpirs=(0.07,)) == \
        pytest.approx({"rank1": 1.0, "tpir@fpir=0.07": 0.5})


def test_tpir_needs_the_mate_at_rank_one():
    gallery = torch.eye(5)[:3]
    probes = torch.tensor([_probe_at(0.9, 0), [0.6, 0.8, 0, 0, 0]] + [_probe_at(0.1, 2)] * 10)
    subjects = torch.tensor([0, 0] + [99] * 10)  # the second probe scores 0.8 for subject 1, 0.6 for its mate
    result = identification_1n(probes, subjects, gallery, torch.tensor([0, 1, 2]), ranks=(1, 2), fpirs=(0.1,))
    assert result == pytest.approx({"rank1": 0.5, "rank2": 1.0, "tpir@fpir=0.1": 0.5})


def test_identification_matches_brute_force_with_several_templates_per_subject():
    rng = np.random.default_rng(9)
    centres = rng.normal(size=(30, 12))
    g_subj = np.concatenate([np.arange(20), rng.integers(0, 20, size=10)])  # some subjects have two templates
    gallery = centres[g_subj] + 0.8 * rng.normal(size=(len(g_subj), 12))
    p_subj = rng.integers(0, 30, size=200)  # subjects 20..29 are not in the gallery
    probe = centres[p_subj] + 0.8 * rng.normal(size=(200, 12))
    ranks, fpirs = (1, 5, 10), (0.1, 0.02)
    args = (torch.tensor(probe), torch.tensor(p_subj), torch.tensor(gallery), torch.tensor(g_subj), ranks, fpirs)
    result = identification_1n(*args)
    assert result == pytest.approx(_brute_identification(probe, p_subj, gallery, g_subj, ranks, fpirs))
    assert identification_1n(*args, chunk_size=7) == result
    assert 0 < result["tpir@fpir=0.02"] < result["tpir@fpir=0.1"] <= result["rank1"] < 1


def test_identification_of_constant_embeddings_scores_no_better_than_chance():
    gallery, g_subj = torch.ones(4, 6), torch.arange(4)
    probes = torch.ones(20, 6)
    p_subj = torch.tensor([0, 1, 2, 3] * 3 + [9] * 8)
    result = identification_1n(probes, p_subj, gallery, g_subj, ranks=(1, 3, 4), fpirs=(0.5,))
    # every mate ties with 3 other subjects: rank 4, never rank 1, so no TPIR either
    assert result == {"rank1": 0.0, "rank3": 0.0, "rank4": 1.0, "tpir@fpir=0.5": 0.0}


def test_identification_with_ties_matches_pessimistic_brute_force():
    rng = np.random.default_rng(13)
    g_subj = np.concatenate([np.arange(6), rng.integers(0, 6, 4)])
    gallery, probe = _tied_embeddings(rng, len(g_subj)), _tied_embeddings(rng, 60)
    p_subj = rng.integers(0, 8, 60)  # subjects 6 and 7 are not in the gallery
    ranks, fpirs = (1, 2, 3, 6), (0.1, 0.5)
    result = identification_1n(torch.tensor(probe), torch.tensor(p_subj), torch.tensor(gallery),
                               torch.tensor(g_subj), ranks, fpirs, chunk_size=9)
    assert result == pytest.approx(_brute_identification(probe, p_subj, gallery, g_subj, ranks, fpirs))
    assert 0 < result["rank1"] < result["rank6"] == 1.0


def test_g1_g2_are_evaluated_separately_then_averaged():
    rng = np.random.default_rng(10)
    centres = rng.normal(size=(20, 8))
    p_subj = rng.integers(0, 20, size=120)
    probe = centres[p_subj] + 1.2 * rng.normal(size=(120, 8))
    g1_subj, g2_subj = np.arange(10), np.arange(10, 20)  # disjoint: mated in G1 means non-mated in G2
    g1, g2 = centres[g1_subj] + 0.3 * rng.normal(size=(10, 8)), centres[g2_subj] + 0.3 * rng.normal(size=(10, 8))
    ranks, fpirs = (1, 5), (0.1,)
    result = identification_g1_g2(torch.tensor(probe), torch.tensor(p_subj), (torch.tensor(g1), torch.tensor(g1_subj)),
                                  (torch.tensor(g2), torch.tensor(g2_subj)), ranks, fpirs)
    r1 = _brute_identification(probe, p_subj, g1, g1_subj, ranks, fpirs)
    r2 = _brute_identification(probe, p_subj, g2, g2_subj, ranks, fpirs)
    assert r1 != r2
    assert result == pytest.approx({name: (r1[name] + r2[name]) / 2 for name in r1})


def test_identification_bad_inputs_raise_one_line_errors():
    gallery, g_subj = torch.eye(4), torch.arange(4)
    probes = torch.randn(20, 4)
    with pytest.raises(ValueError, match="no mated probes"):
        identification_1n(probes, torch.full((20,), 9), gallery, g_subj)
    with pytest.raises(ValueError, match="FPIR 0.01 needs at least 100 non-mated probes, got 10"):
        identification_1n(probes, torch.tensor([0] * 10 + [9] * 10), gallery, g_subj, fpirs=(0.1, 0.01))
    with pytest.raises(ValueError, match="probe embeddings have dim 4 but gallery embeddings have dim 3"):
        identification_1n(probes, torch.zeros(20, dtype=torch.long), torch.eye(3), torch.arange(3))
