"""RandAugment (VIM-NAS Tab. 10 on ImageNet; AutoFormer's rand-m9-mstd0.5-inc1): every op matches PIL's pixel
arithmetic, the policy draws follow timm's (ops, probability, magnitude noise), and the ImageNet loader applies it per
sample, deterministically for (seed, epoch, index)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from nasx.data.imagenet import ImageNetDataModule
from nasx.data.randaugment import OPS, RandAugment, apply_op, rand_augment
from nasx.errors import ConfigError
from tests.test_imagenet import make_imagenet


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    a = (rng.random((30, 40, 3)) ** 2 * 200 + 20).astype(np.uint8)
    a[5:15, 5:25] = 250  # a bright block, so that geometric ops move an edge
    return Image.fromarray(a), torch.from_numpy(a).permute(2, 0, 1).float()


def _t(pil: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()


def _m(factor: float) -> tuple[float, float]:
    """(magnitude, sign) giving an enhance factor of ``factor`` (1 ± 0.9·m/10)."""
    return abs(factor - 1) / 0.9 * 10, 1.0 if factor >= 1 else -1.0


@pytest.mark.parametrize("name,pil_op,magnitude", [
    ("auto_contrast", ImageOps.autocontrast, 0),
    ("equalize", ImageOps.equalize, 0),
    ("invert", ImageOps.invert, 0),
    ("posterize", lambda im: ImageOps.posterize(im, 2), 5),        # 4 − ⌊4·0.5⌋ = 2 bits
    ("solarize", lambda im: ImageOps.solarize(im, 256 - 128), 5),  # threshold 256 − ⌊256·0.5⌋
])
def test_pointwise_ops_equal_pil(image, name, pil_op, magnitude):
    pil, x = image
    assert (apply_op(x, name, magnitude, 1.0) - _t(pil_op(pil))).abs().max() <= 1.0


@pytest.mark.parametrize("name,enhancer", [("color", ImageEnhance.Color), ("contrast", ImageEnhance.Contrast),
                                           ("brightness", ImageEnhance.Brightness),
                                           ("sharpness", ImageEnhance.Sharpness)])
@pytest.mark.parametrize("factor", [0.19, 1.81])
def test_enhance_ops_equal_pil(image, name, enhancer, factor):
    pil, x = image
    ours = apply_op(x, name, *_m(factor))
    assert (ours - _t(enhancer(pil).enhance(factor))).abs().max() <= 1.5  # PIL rounds to uint8 on the way


@pytest.mark.parametrize("name,sign,matrix", [
    ("shear_x", 1.0, (1, 0.27, 0, 0, 1, 0)),
    ("shear_y", -1.0, (1, 0, 0, -0.27, 1, 0)),
    ("translate_x", -1.0, (1, 0, -0.405 * 40, 0, 1, 0)),
    ("translate_y", 1.0, (1, 0, 0, 0, 1, 0.405 * 30)),
])
def test_geometric_ops_equal_pil_affine(image, name, sign, matrix):
    """At magnitude 9: shear 0.27, translate 0.405 of the side; fill is the ImageNet mean pixel. PIL treats the
    half-outside border pixels a little differently, so compare all but the border."""
    pil, x = image
    ref = _t(pil.transform(pil.size, Image.AFFINE, matrix, Image.BILINEAR, fillcolor=(124, 116, 104)))
    diff = (apply_op(x, name, 9, sign) - ref).abs()
    assert float((diff > 2).float().mean()) < 0.05 and float(diff.mean()) < 1.5


def test_rotate_is_counter_clockwise_like_pil(image):
    pil, x = image
    ref = _t(pil.rotate(27, resample=Image.BILINEAR, fillcolor=(124, 116, 104)))
    ours = apply_op(x, "rotate", 9, 1.0)
    assert float((ours - ref).abs().mean()) < 1.5
    assert float((apply_op(x, "rotate", 9, -1.0) - ref).abs().mean()) > 10  # the other sign is the other way


def test_policy_draws_follow_timm():
    """2 ops per image, uniform over the 15 ops, each kept with probability 0.5, magnitude ~ N(9, 0.5) in [0, 10],
    signs ±1 equally often."""
    policy, g = RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5, prob=0.5), torch.Generator().manual_seed(0)
    draws = [policy.draws(g) for _ in range(6000)]
    applied = [d for ds in draws for d in ds]
    assert abs(len(applied) / (2 * len(draws)) - 0.5) < 0.02
    counts = Counter(op for op, _, _ in applied)
    assert set(counts) == set(OPS) and max(counts.values()) / min(counts.values()) < 1.35
    m = torch.tensor([mag for _, mag, _ in applied])
    assert float(m.min()) >= 0 and float(m.max()) <= 10
    assert abs(float(m.mean()) - 9) < 0.03 and abs(float(m.std()) - 0.5) < 0.05
    assert abs(sum(s > 0 for _, _, s in applied) / len(applied) - 0.5) < 0.03
    fixed = RandAugment(magnitude=9, magnitude_std=0, prob=1.0)
    assert all(len(fixed.draws(g)) == 2 and all(mag == 9 for _, mag, _ in fixed.draws(g)) for _ in range(50))


def test_same_generator_same_image(image):
    _, x = image
    policy = RandAugment(magnitude=9, magnitude_std=0.5, prob=1.0)
    a = policy(x, torch.Generator().manual_seed(3))
    b = policy(x, torch.Generator().manual_seed(3))
    c = policy(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 255


def test_config_values():
    timm = rand_augment("rand-m9-mstd0.5-inc1")
    assert (timm.num_ops, timm.magnitude, timm.magnitude_std, timm.prob) == (2, 9.0, 0.5, 0.5)
    assert rand_augment("rand-n3-m7-inc1").num_ops == 3 and rand_augment("rand-n3-m7-inc1").magnitude_std == 0
    assert rand_augment({"magnitude": 5}).magnitude == 5 and rand_augment(None) is None
    for bad, words in [("rand-m9", "inc1"), ("rand-m9-q3-inc1", "'q3'"), ("autoaugment", "timm policy"),
                       ({"magnitude": 11}, "magnitude must be a number in 0..10"),
                       ({"ops": 2}, "rand_augment.ops: unknown"), ({"num_ops": 0}, "num_ops must be")]:
        with pytest.raises(ConfigError, match="data.rand_augment") as e:
            rand_augment(bad)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_imagenet_loader_applies_it_per_sample(tmp_path):
    root = make_imagenet(tmp_path / "imagenet")
    kw = dict(image_size=16, batch_size=4, eval_batch_size=8, val_fraction=0.25, seed=0, augment=True)
    plain = ImageNetDataModule(str(root), **kw)
    policy = ImageNetDataModule(str(root), rand_augment="rand-m9-mstd0.5-inc1", **kw)
    again = ImageNetDataModule(str(root), rand_augment={"magnitude": 9, "magnitude_std": 0.5}, **kw)
    xp = torch.stack([plain.dataset("train", train=True)[i][0] for i in range(8)])
    xa = torch.stack([policy.dataset("train", train=True)[i][0] for i in range(8)])
    xb = torch.stack([again.dataset("train", train=True)[i][0] for i in range(8)])
    assert torch.equal(xa, xb)  # the same (seed, epoch, index): the same augmentation
    changed = [not torch.allclose(p, a) for p, a in zip(xp, xa)]
    assert 2 <= sum(changed) <= 8  # some samples drew ops, 1/4 of them on average none
    assert torch.equal(policy.dataset("val")[0][0], plain.dataset("val")[0][0])  # evaluation is untouched
    with pytest.raises(ConfigError, match="data.rand_augment.magnitude"):
        ImageNetDataModule(str(root), rand_augment={"magnitude": -1}, **kw)
