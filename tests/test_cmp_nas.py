"""CMP-NAS (METHODS.md §1): BCT makes a query model compatible with the gallery model; retrieval rewards."""
from __future__ import annotations


import pytest
import torch
from conftest import compose

from nasx.cmp_nas import RetrievalEvaluator, embed, retrieval_metrics
from nasx.data.digits import DigitsDataModule
from nasx.errors import ConfigError
from nasx.models.resnet import ResNetEmbedding
from nasx.training.base import fit_quiet
from nasx.training.standalone import StandaloneTraining

OPT = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, schedule="cosine")




@pytest.fixture(scope="module")
def trained(tiny_space):
    """A gallery ResNet and two query nets of the same arch: one with BCT, one from scratch (vanilla)."""
    torch.manual_seed(0)
    data = DigitsDataModule(seed=0, image_size=16, batch_size=64)
    data.setup()
    gallery = ResNetEmbedding(blocks=(1, 1), width=8, embedding_dim=tiny_space.last_channels, num_classes=10,
                              in_channels=1, stem_stride=1, stem_pool=False)
    fit_quiet(StandaloneTraining(gallery, **OPT), data, 8)
    gallery.eval().requires_grad_(False)
    arch = tiny_space.sample(__import__("random").Random(0))
    queries = {}
    for name, w in (("bct", 1.0), ("scratch", 0.0)):
        torch.manual_seed(1)
        q = tiny_space.supernet().extract(arch)
        fit_quiet(StandaloneTraining(q, bct_weight=w, bct_head=gallery.classifier if w else None, **OPT), data, 8)
        queries[name] = q.eval()
    return data, gallery, queries


def _acc(data, query, gallery_model):
    (qx, qy), (gx, gy) = data.split("test"), data.split("train")
    return retrieval_metrics(embed(query, qx), embed(gallery_model, gx), qy, gy, "x")["x_top1"]


def test_bct_trained_query_is_compatible_with_the_gallery_and_a_scratch_one_is_not(trained):
    data, gallery, q = trained
    het_bct, het_scratch = _acc(data, q["bct"], gallery), _acc(data, q["scratch"], gallery)
    assert het_bct > 0.6  # heterogeneous retrieval works ...
    assert het_scratch < 0.35  # ... near chance (0.1) without BCT: the embedding spaces are unrelated
    # both query models are good retrieval models on their own (homogeneous accuracy)
    assert _acc(data, q["bct"], q["bct"]) > 0.6 and _acc(data, q["scratch"], q["scratch"]) > 0.6


def test_bct_gives_the_gallery_classifier_no_gradient(trained):
    _, gallery, _ = trained
    assert all(not p.requires_grad for p in gallery.classifier.parameters())


def test_retrieval_evaluator_embeds_the_gallery_with_phi_g_once_and_caches_candidates(tiny_space):
    data = DigitsDataModule(seed=0, image_size=16)
    data.setup()
    gallery = ResNetEmbedding(blocks=(1,), width=8, embedding_dim=tiny_space.last_channels, num_classes=10,
                              in_channels=1, stem_stride=1, stem_pool=False)
    calls = {"n": 0}
    original = gallery.forward_features
    gallery.forward_features = lambda x: (calls.__setitem__("n", calls["n"] + 1), original(x))[1]
    ev = RetrievalEvaluator(tiny_space.supernet(), data.calibration_batches(1, 32), data.split("val"),
                            data.split("train"), gallery, reward_k=5)
    n_gallery_calls = calls["n"]
    rng = __import__("random").Random(0)
    a, b = tiny_space.sample(rng), tiny_space.sample(rng)
    ma = ev(a)
    ev(b), ev(a)
    assert calls["n"] == n_gallery_calls  # φg never runs again during the search
    assert ev.cache[a] is ma and set(RetrievalEvaluator.metrics) <= set(ma) and ma["hom"] == ma["hom_top5"]


def test_embedding_size_mismatch_is_a_one_line_config_error(tmp_path):
    from nasx.pipeline import run

    cfg = compose(["experiment=cmp_nas_digits", "gallery.model.embedding_dim=64"], tmp_path)
    with pytest.raises(ConfigError, match=r"gallery.model.embedding_dim \(64\) must equal .* space.last_channels"):
        run(cfg)
    assert not (tmp_path / "config.yaml").exists()


def test_bct_weight_without_a_gallery_classifier_is_a_config_error():
    with pytest.raises(ConfigError, match="needs the gallery model's classifier"):
        StandaloneTraining(torch.nn.Linear(2, 2), bct_weight=1.0)


@pytest.mark.slow
def test_cmp_nas_digits_runs_every_stage_and_reports_hom_het_and_paragon(tmp_path):
    from nasx.pipeline import run

    tiny = ["space.stage_repeats=[1,1,1,1]", "space.input_size=16", "train.epochs=2", "train.warmup_epochs=1",
            "gallery.epochs=1", "retrain.epochs=1", "search.strategy.generations=2", "search.strategy.population=4",
            "search.strategy.top_k=2", "search.strategy.crossover_size=2", "search.bn_batches=1", "progress=false"]
    results = run(compose(["experiment=cmp_nas_digits", *tiny], tmp_path))
    rows = results["test"]
    assert set(rows) == {"query (retrained)", "paragon A(φg, φg)"}
    assert {"hom_top1", "het_top10"} <= set(rows["query (retrained)"]) and "hom_top1" in rows["paragon A(φg, φg)"]
    assert results["search_metrics"]["hom"] == results["search_metrics"]["hom_top1"]
    assert results["search_reward"] == pytest.approx(0.5 * (results["search_metrics"]["hom"] +
                                                            results["search_metrics"]["het"]))
    assert (tmp_path / "gallery" / "model.pt").exists() and "paragon" in (tmp_path / "report.md").read_text()
