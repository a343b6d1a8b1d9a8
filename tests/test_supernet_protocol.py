"""Every space family's supernet follows one protocol — forward(x, arch), forward_features, classifier,
extract(arch) — so BCT, the evaluators and the training systems run on any space."""
from __future__ import annotations

import random

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate

from nasx.spaces import Supernet


@pytest.mark.parametrize("preset", ["shufflenet_cpu", "nss_cpu", "mixpath_s1_cpu", "mixpath_s3_cpu",
                                    "mixpath_s4_cpu", "vit_cpu"])
def test_every_supernet_is_its_classifier_after_its_features_and_extracts_the_same(preset, tmp_path):
    space = instantiate(compose([f"space={preset}"], tmp_path).space, in_channels=1, num_classes=10)
    torch.manual_seed(0)
    supernet = space.supernet().eval()
    assert isinstance(supernet, Supernet)
    arch = space.sample(random.Random(1))
    x = torch.randn(4, 1, space.input_size, space.input_size)
    with torch.no_grad():
        logits = supernet(x, arch)
        torch.testing.assert_close(supernet.classifier(supernet.forward_features(x, arch)), logits)
        static = supernet.extract(arch).eval()
        torch.testing.assert_close(static.classifier(static.forward_features(x)), static(x))
        torch.testing.assert_close(static(x), logits, atol=1e-5, rtol=1e-4)
