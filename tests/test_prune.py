"""Gallery filter pruning (supplementary Tab. 4) and the KD / BCT losses."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from nasx.errors import ConfigError
from nasx.losses import bct_loss, kd_loss
from nasx.models.resnet import ResNetEmbedding
from nasx.prune import prune_block, prune_gallery, select_channels


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: intra-op threads only contend for the shared cores (10× slower with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gallery() -> ResNetEmbedding:
    torch.manual_seed(0)
    model = ResNetEmbedding(blocks=(1, 1), width=8, embedding_dim=16, num_classes=5, in_channels=3,
                            stem_stride=1, stem_pool=False)
    for m in model.modules():  # non-trivial BN statistics, so that eval mode differs from identity
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.forward_features(x), model(x)


@pytest.mark.parametrize("method", ["l1", "channel"])
@pytest.mark.parametrize("amount", [0.3, 0.5, 0.7, 0.9])
def test_pruned_widths_and_shapes_and_original_untouched(gallery, images, amount, method):
    before = copy.deepcopy(gallery.state_dict())
    pruned = prune_gallery(gallery, amount, method, calibration=images)
    assert type(pruned) is ResNetEmbedding and not pruned.training
    for b, orig in zip(pruned.blocks, gallery.blocks):
        mid = orig.conv1.out_channels
        kept = max(1, round((1 - amount) * mid))
        assert (b.conv1.out_channels, b.bn1.num_features) == (kept, kept)
        assert b.conv2.weight.shape[:2] == (kept, kept) and b.bn2.num_features == kept
        assert b.conv3.weight.shape[:2] == (mid * 4, kept)
        assert torch.equal(b.bn3.weight, orig.bn3.weight)
    feats, logits = _outputs(pruned, images)
    assert feats.shape == (8, 16) and logits.shape == (8, 5)
    assert all(torch.equal(v, gallery.state_dict()[k]) for k, v in before.items())
    assert [b.conv1.out_channels for b in gallery.blocks] == [8, 16]


def test_amount_zero_computes_the_same_outputs(gallery, images):
    ref = _outputs(gallery, images)
    for out, want in zip(_outputs(prune_gallery(gallery, 0.0), images), ref):
        assert torch.equal(out, want)
    for out, want in zip(_outputs(prune_gallery(gallery, 0.0, "channel", images), images), ref):
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


def test_l1_keeps_the_filters_of_largest_l1_norm(gallery):
    pruned = prune_gallery(gallery, 0.5, "l1")
    for b, orig in zip(pruned.blocks, gallery.blocks):
        w1, w2, w3 = (c.weight.detach().numpy() for c in (orig.conv1, orig.conv2, orig.conv3))
        keep1 = np.sort(np.argsort(-np.abs(w1).sum(axis=(1, 2, 3)))[: len(w1) // 2])
        keep2 = np.sort(np.argsort(-np.abs(w2).sum(axis=(1, 2, 3)))[: len(w2) // 2])
        np.testing.assert_array_equal(b.conv1.weight.detach().numpy(), w1[keep1])
        np.testing.assert_array_equal(b.conv2.weight.detach().numpy(), w2[keep2][:, keep1])
        np.testing.assert_array_equal(b.conv3.weight.detach().numpy(), w3[:, keep2])
        np.testing.assert_array_equal(b.bn1.running_mean.numpy(), orig.bn1.running_mean.numpy()[keep1])
        np.testing.assert_array_equal(b.bn2.bias.detach().numpy(), orig.bn2.bias.detach().numpy()[keep2])


@pytest.mark.parametrize("method", ["l1", "channel"])
def test_pruning_all_zero_filters_leaves_the_output_unchanged(gallery, images, method):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for b in gallery.blocks:
            for conv, bn in ((b.conv1, b.bn1), (b.conv2, b.bn2)):
                dead = torch.randperm(conv.out_channels, generator=g)[: conv.out_channels // 2]
                conv.weight[dead] = 0
                bn.weight[dead] = 0
                bn.bias[dead] = 0
    pruned = prune_gallery(gallery, 0.5, method, calibration=images)
    for out, want in zip(_outputs(pruned, images), _outputs(gallery, images)):
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


def _conv3_output(model: ResNetEmbedding, x: torch.Tensor) -> torch.Tensor:
    seen = []
    hook = model.blocks[0].conv3.register_forward_hook(lambda m, i, o: seen.append(o))
    _outputs(model, x)
    hook.remove()
    return seen[0]


def test_channel_pruning_reconstructs_conv3_better_than_random_channels(gallery, images):
    target = _conv3_output(gallery, images)
    err = float((_conv3_output(prune_gallery(gallery, 0.5, "channel", images), images) - target).square().sum())
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        rand = copy.deepcopy(gallery)
        prune_block(rand.blocks[0], torch.randperm(8, generator=g)[:4].sort().values,
                    torch.randperm(8, generator=g)[:4].sort().values)
        assert err < float((_conv3_output(rand, images) - target).square().sum())

    # the selection step alone, its error computed directly: ||Y − conv3(x masked to S)||²
    block = gallery.blocks[0]
    with torch.no_grad():
        x = block.conv2(torch.relu(block.bn1(block.conv1(gallery.stem(images)))))
        x = torch.relu(block.bn2(x))
        y = block.conv3(x)

        def error(idx: torch.Tensor) -> float:
            mask = torch.zeros(1, 8, 1, 1)
            mask[:, idx] = 1
            return float((y - block.conv3(x * mask)).square().sum())

        # greedy elimination is not optimal in general; on this example it finds the best of all 56 subsets
        errors = sorted(error(torch.tensor(s)) for s in itertools.combinations(range(8), 3))
        assert error(select_channels(block.conv3, x, y, 3)) == pytest.approx(errors[0])
        assert errors[0] < errors[1]


def test_kd_loss():
    s = torch.randn(4, 5, generator=torch.Generator().manual_seed(4))
    assert float(kd_loss(s, s.clone())) == 0.0
    assert float(kd_loss(s, s.flip(1))) > 0
    assert float(kd_loss(s, 2 * s, T=1.0)) > 0


def test_bct_loss_trains_the_embedding_not_the_gallery_classifier():
    classifier = nn.Linear(16, 5, bias=True)
    emb = torch.randn(4, 16, requires_grad=True)
    loss = bct_loss(emb, torch.tensor([0, 1, 2, 3]), classifier)
    loss.backward()
    assert classifier.weight.grad is None and classifier.bias.grad is None
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    expected = nn.functional.cross_entropy(classifier(emb), torch.tensor([0, 1, 2, 3]))
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("kwargs, key", [
    (dict(amount=1.0), "prune.amount"), (dict(amount=-0.1), "prune.amount"), (dict(amount=float("nan")), "prune.amount"),
    (dict(amount=0.5, method="random"), "prune.method"), (dict(amount=0.5, method="channel"), "prune.calibration"),
])
def test_bad_settings_are_config_errors_naming_the_key(gallery, kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        prune_gallery(gallery, **kwargs)
