"""CMP-NAS (METHODS.md §1): BCT makes a query model compatible with the gallery model; retrieval rewards."""
from __future__ import annotations


import pytest
import torch
from conftest import compose

from nasx.data.digits import DigitsDataModule
from nasx.errors import ConfigError
from nasx.evaluation.compatibility import KS, CompatibilityEvaluator, RetrievalReward, retrieval_metrics
from nasx.evaluation.embedding import embed
from nasx.losses import BCT, CrossEntropy, Loss
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
        loss = Loss({"ce": CrossEntropy(), "bct": BCT(weight=w)}, reference=gallery if w else None)
        fit_quiet(StandaloneTraining(q, loss=loss, **OPT), data, 8)
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
    reward = RetrievalReward(*data.split("val"), *data.split("train"), KS, 5)
    ev = CompatibilityEvaluator(tiny_space.supernet(), data.calibration_batches(1, 32), reward, gallery)
    n_gallery_calls = calls["n"]
    rng = __import__("random").Random(0)
    a, b = tiny_space.sample(rng), tiny_space.sample(rng)
    ma = ev.evaluate(a)
    ev.evaluate_many([b, a])
    assert calls["n"] == n_gallery_calls  # φg never runs again during the search
    assert ev.cache[a] is ma and set(ev.metrics) == set(ma) and ma["hom"] == ma["hom_top5"]


def test_embedding_size_mismatch_is_a_one_line_config_error(tmp_path):
    from nasx.runner import run

    cfg = compose(["experiment=cmp_nas_digits", "gallery.model.embedding_dim=64"], tmp_path)
    with pytest.raises(ConfigError, match=r"gallery.model.embedding_dim \(64\) must equal .* space.last_channels"):
        run(cfg)
    assert not (tmp_path / "config.yaml").exists()


def test_a_bct_term_without_a_reference_model_is_a_config_error(tmp_path):
    from nasx.runner import run

    with pytest.raises(ConfigError, match="needs a reference model"):
        Loss({"ce": CrossEntropy(), "bct": BCT(weight=1.0)})
    cfg = compose(["experiment=quickstart", "+train.loss.bct={_target_: nasx.losses.BCT, weight: 1.0}"], tmp_path)
    with pytest.raises(ConfigError, match=r"train.loss.bct needs a reference model, which method spos does not"):
        run(cfg)
    assert not (tmp_path / "config.yaml").exists()


def test_bct_runs_on_any_space_of_the_supernet_protocol(tmp_path):
    """BCT needs only forward_features and classifier: a MixPath supernet trains against a gallery classifier."""
    import random

    from nasx.spaces.mixpath_ib import MixPathIBSpace
    from nasx.training.supernet import SupernetTraining

    space = MixPathIBSpace(name="mp", widths=[8, 16], strides=[1, 2], max_paths=2, stem_channels=8,
                           last_channels=32, input_size=16, in_channels=1, num_classes=10)
    gallery = ResNetEmbedding(blocks=(1,), width=8, embedding_dim=32, num_classes=10, in_channels=1, stem_stride=1,
                              stem_pool=False).eval()
    supernet = space.supernet()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    arch = space.train_sample(random.Random(0))
    system = SupernetTraining(supernet, space, loss=Loss({"ce": CrossEntropy(), "bct": BCT()}, reference=gallery))
    loss, logits = system.objective(x, y, arch)
    ce = torch.nn.functional.cross_entropy(supernet(x, arch), y)
    bct = torch.nn.functional.cross_entropy(gallery.classifier(supernet.forward_features(x, arch)), y)
    torch.testing.assert_close(logits, supernet(x, arch))
    torch.testing.assert_close(loss, ce + bct)
    loss.backward()
    assert gallery.classifier.weight.grad is None and supernet.classifier[1].weight.grad is not None


@pytest.mark.slow
def test_cmp_nas_digits_runs_every_stage_and_reports_hom_het_and_paragon(tmp_path):
    from nasx.runner import run

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


def test_the_gallery_model_is_a_function_of_the_seed_not_of_the_process(tmp_path):
    """The reference model is seeded before it is built: its weights do not depend on what the process did before
    (until this fix its initial weights came from the process's unseeded RNG, so no CMP-NAS run reproduced)."""
    from nasx.methods.cmp_nas import CMPNAS
    from nasx.runner import Run

    def gallery(seed: int, noise: int):
        torch.manual_seed(noise)  # whatever ran before in this process
        cfg = compose(["experiment=cmp_nas_digits", "space.stage_repeats=[1,1,1,1]", "space.input_size=16",
                       "gallery.epochs=0", f"seed={seed}", "progress=false"], tmp_path / f"{seed}_{noise}")
        method = CMPNAS()
        return method.reference(Run(cfg, method)).state_dict()

    a, b, c = gallery(0, 1), gallery(0, 2), gallery(1, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_reward_gallery_draws_a_seeded_subset_of_the_training_split_and_none_keeps_it_all(tmp_path):
    from nasx.methods.cmp_nas import reward_gallery
    from nasx.runner import Run, make_method

    x, y = torch.arange(50.0).view(50, 1), torch.arange(50) % 10
    assert reward_gallery((x, y), None, 0)[0] is x and reward_gallery((x, y), 80, 0)[0] is x
    gx, gy = reward_gallery((x, y), 20, 3)
    assert len(gx) == len(gy) == 20 and len(set(gx.flatten().tolist())) == 20
    assert gx.flatten().tolist() == sorted(gx.flatten().tolist()) and torch.equal(gy, y[gx.flatten().long()])
    assert torch.equal(gx, reward_gallery((x, y), 20, 3)[0]) and not torch.equal(gx, reward_gallery((x, y), 20, 4)[0])
    # through the config: the search reward's gallery has search.reward_gallery images; a bad size is a config error
    from nasx.methods.cmp_nas import reward_data

    cfg = compose(["experiment=cmp_nas_digits", "space.input_size=16", "+search.reward_gallery=100"], tmp_path)
    r = Run(cfg, make_method(cfg))
    r.data.setup("fit")
    assert len(reward_data(r).gallery) == 100 and len(reward_data(r).queries) == len(r.data.split("val")[1])
    with pytest.raises(ConfigError, match=r"search.reward_gallery \(the closed-set reward's gallery size\) must be"):
        make_method(cfg).check_config(compose(["experiment=cmp_nas_digits", "+search.reward_gallery=0"], tmp_path))
