"""REG-NAS's metrics [seed Eq. 1; ref PCT]: a negative flip is a sample the reference gets right and the new model
wrong; NFR counts them over all N samples; C is the relative change; intervals are paired bootstraps. And PCT's focal
distillation loss, whose per-sample weights are α + β·1[reference right]."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasx.losses import Batch, FocalDistillation, focal_distillation, kd_loss
from nasx.errors import ConfigError
from nasx.metrics.flips import (bootstrap_means, flip_report, negative_flip_rate, nfr_matrix, paired_difference,
                                positive_flip_rate, relative_change)


def _brute_nfr(ref, new, y):
    return sum(1 for r, n, t in zip(ref, new, y) if r == t and n != t) / len(y)


@pytest.mark.parametrize("seed", range(5))
def test_nfr_counts_only_reference_correct_samples_against_a_brute_force_count(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 500)
    ref = np.where(rng.random(500) < 0.7, y, rng.integers(0, 4, 500))
    new = np.where(rng.random(500) < 0.8, y, rng.integers(0, 4, 500))
    assert negative_flip_rate(ref, new, y) == pytest.approx(_brute_nfr(ref, new, y))
    assert positive_flip_rate(ref, new, y) == pytest.approx(_brute_nfr(new, ref, y))
    # top-1(new) − top-1(ref) = PFR − NFR
    gain = (new == y).mean() - (ref == y).mean()
    assert gain == pytest.approx(positive_flip_rate(ref, new, y) - negative_flip_rate(ref, new, y))


def test_a_sample_both_models_get_wrong_is_not_a_flip():
    y = torch.tensor([0, 1, 2, 3])
    ref = torch.tensor([0, 1, 0, 0])   # right, right, wrong, wrong
    new = torch.tensor([1, 1, 1, 3])   # wrong, right, wrong (another wrong class), right
    assert negative_flip_rate(ref, new, y) == 0.25  # only sample 0
    assert positive_flip_rate(ref, new, y) == 0.25  # only sample 3
    assert negative_flip_rate(new, new, y) == 0.0


def test_relative_change_is_eq_1_and_nan_when_undefined():
    assert relative_change(0.02, 0.01) == pytest.approx(1.0)
    assert relative_change(0.75, 0.8) == pytest.approx(-0.0625)
    assert math.isnan(relative_change(0.1, 0.0))


def test_nfr_matrix_is_upper_triangular_from_the_older_member():
    y = torch.arange(6) % 3
    preds = [y.clone(), torch.tensor([0, 1, 2, 1, 1, 2]), torch.tensor([1, 1, 2, 0, 1, 2])]
    m = nfr_matrix(preds, y)
    assert m[0][0] is None and m[1][0] is None and m[2][1] is None
    assert m[0][1] == pytest.approx(1 / 6) and m[0][2] == pytest.approx(1 / 6) and m[1][2] == pytest.approx(1 / 6)


def test_paired_bootstrap_covers_the_truth_and_pairing_narrows_a_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 4000)
    ref = np.where(rng.random(4000) < 0.8, y, (y + 1) % 10)
    noise = rng.random(4000)
    a = np.where(noise < 0.85, y, (y + 2) % 10)
    b = np.where(noise < 0.84, y, (y + 2) % 10)  # b = a except on 1 % of samples: strongly correlated
    rep = flip_report(ref, {"a": a, "b": b}, y, resamples=1000, seed=1)
    for name, p in (("a", a), ("b", b)):
        nfr = rep[name]["nfr"]
        assert nfr["lo"] <= _brute_nfr(ref, p, y) <= nfr["hi"] and nfr["hi"] - nfr["lo"] < 0.03
    assert rep["reference"]["top1"]["value"] == pytest.approx((ref == y).mean())
    fa = torch.as_tensor((ref == y) & (a != y))
    fb = torch.as_tensor((ref == y) & (b != y))
    diff = paired_difference(fb, fa, resamples=1000, seed=1)
    assert diff["lo"] > 0  # b flips strictly more samples; the paired interval excludes 0
    unpaired = bootstrap_means(fb, 1000, seed=2)[:, 0] - bootstrap_means(fa, 1000, seed=3)[:, 0]
    assert (diff["hi"] - diff["lo"]) < 0.5 * float(unpaired.quantile(0.975) - unpaired.quantile(0.025))


def test_focal_distillation_weights_follow_the_formula():
    torch.manual_seed(0)
    new, old = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    y = old.argmax(1).clone()
    y[3:] = (y[3:] + 1) % 5  # the reference is right on samples 0-2, wrong on 3-5
    t = 4.0
    per_sample = torch.stack([kd_loss(new[i:i + 1], old[i:i + 1], t) for i in range(6)])
    weights = torch.tensor([1 + 5.0] * 3 + [1.0] * 3)
    expected = (weights * per_sample).mean()
    got = focal_distillation(new, old, y, alpha=1.0, beta=5.0, temperature=t)
    assert torch.allclose(got, expected, atol=1e-6)
    # α = 1, β = 0 is plain distillation (PCT's remark), and the reference gets no gradient
    assert torch.allclose(focal_distillation(new, old, y, 1.0, 0.0, t), kd_loss(new, old, t), atol=1e-6)
    got.backward()
    assert new.grad is not None and new.grad.abs().sum() > 0
    # a reference-correct sample pulls 6x as hard as a reference-wrong one with the same logits
    same_new, same_old = torch.randn(1, 5).repeat(2, 1), torch.randn(1, 5).repeat(2, 1)
    yy = torch.tensor([int(same_old.argmax()), (int(same_old.argmax()) + 1) % 5])
    x = same_new.clone().requires_grad_(True)
    focal_distillation(x, same_old, yy, 1.0, 5.0, 2.0).backward()
    assert torch.allclose(x.grad[0], 6 * x.grad[1], atol=1e-7)


def test_focal_distillation_term_uses_the_reference_model_and_checks_its_config():
    ref = torch.nn.Linear(3, 4)
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    logits = torch.randn(8, 4)
    term = FocalDistillation(alpha=1, beta=5, temperature=2)
    assert term.needs_reference
    value = term(Batch(x, y, None, logits, ref))
    assert torch.allclose(value, focal_distillation(logits, ref(x), y, 1, 5, 2))
    with pytest.raises(ConfigError, match="loss.fd.temperature"):
        FocalDistillation(temperature=0)
    with pytest.raises(ConfigError, match="loss.fd.beta"):
        FocalDistillation(beta=-1)
