"""BN recalibration computes exact averages over fixed batches; the evaluator scores through extract and caches."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from nasx.evaluation import ClassificationEvaluator, bn_recalibrate, classification_metrics
from nasx.rewards import WeightedSum
from nasx.errors import ConfigError


def test_bn_recalibration_is_the_exact_average_over_the_batches():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.1)
    model = nn.Sequential(bn)
    bn.running_mean.fill_(42.0)
    batches = [(torch.randn(8, 3, 4, 4) * (i + 1) + i, None) for i in range(5)]
    bn_recalibrate(model, batches)
    expected_mean = torch.stack([x.mean((0, 2, 3)) for x, _ in batches]).mean(0)
    expected_var = torch.stack([x.var((0, 2, 3), unbiased=True) for x, _ in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.1 and not model.training


def test_recalibrated_candidate_scores_better_than_stale_statistics(tiny_space):
    """Without recalibration, the supernet's shared running statistics do not fit a particular subnet."""
    torch.manual_seed(0)
    supernet = tiny_space.supernet().train()
    x = torch.randn(64, 1, 16, 16)
    with torch.no_grad():
        supernet(x * 5 + 3, None)  # running stats from differently scaled data
    arch = tiny_space.sample(random.Random(0))
    stale = supernet.extract(arch).eval()
    fresh = bn_recalibrate(supernet.extract(arch), [(x, None)])
    with torch.no_grad():
        ref = bn_recalibrate(supernet.extract(arch), [(x, None)])(x)
        assert (fresh(x) - ref).abs().max() < 1e-5
        assert (stale(x) - ref).abs().max() > 1e-2


def test_evaluator_caches_per_arch_and_uses_the_same_batches(tiny_space):
    torch.manual_seed(0)
    supernet = tiny_space.supernet()
    cal = [(torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))) for _ in range(2)]
    val = [(torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,)))]
    ev = ClassificationEvaluator(supernet, cal, val)
    calls = []
    score = ev.score
    ev.score = lambda arch, model: calls.append(arch) or score(arch, model)
    a, b = tiny_space.sample(random.Random(0)), tiny_space.sample(random.Random(1))
    ma = ev.evaluate(a)
    assert ev.evaluate(a) is ma and calls == [a]
    assert ev.evaluate_many([b, a]) == [ev.evaluate(b), ma] and calls == [a, b]
    assert ClassificationEvaluator(supernet, cal, val).evaluate(a) == ma  # deterministic
    assert set(ma) == set(ClassificationEvaluator.metrics) and 0 <= ma["top1"] <= ma["top5"] <= 1


def test_evaluator_keeps_per_sample_predictions_that_match_its_top1(tiny_space):
    """REG-NAS's negative flip rate compares two models sample by sample: the predictions behind a score."""
    torch.manual_seed(0)
    supernet = tiny_space.supernet()
    cal = [(torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,)))]
    val = [(torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))) for _ in range(2)]
    ev = ClassificationEvaluator(supernet, cal, val)
    arch = tiny_space.sample(random.Random(3))
    pred = ev.predictions(arch)
    assert pred.shape == (64,)
    with torch.no_grad():
        direct = torch.cat([ev.model(arch)(x).argmax(1) for x, _ in val])
    assert torch.equal(pred, direct)
    assert (pred == ev.labels()).float().mean().item() == pytest.approx(ev.evaluate(arch)["top1"])


def test_classification_metrics_count_top1_and_top5():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 0], [0, 9.0, 1, 2, 3, 4, 5], [9.0, 8, 7, 6, 5, 4, 3]])
    y = torch.tensor([0, 6, 6])  # right; second place (top-5 hit); last place (miss)
    model = nn.Identity()
    m = classification_metrics(model, [(logits, y)])
    assert m["top1"] == pytest.approx(1 / 3) and m["top5"] == pytest.approx(2 / 3)


def test_reward_is_a_weighted_sum_and_names_a_missing_metric():
    r = WeightedSum({"top1": 0.5, "top5": 0.5})
    assert r({"top1": 0.6, "top5": 1.0, "loss": 3}) == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="reward.weights names metric 'het_top1'"):
        WeightedSum({"het_top1": 1.0}).check(["top1", "top5", "loss"])
