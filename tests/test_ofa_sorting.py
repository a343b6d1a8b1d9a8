"""Once-for-all's channel sorting [ref: ``re_organize_middle_weights``]: before an expand phase, every block's middle
channels are permuted so the most important come first. A permutation of middle channels leaves the full network
unchanged; the leading channels (what a small expand ratio keeps) are then the important ones; channels already trained
as a smaller ratio's prefix keep their band; the optimizer's state moves with its weights; and progressive shrinking
sorts each widening phase exactly once, also across a kill and resume."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import compose
from nasx.errors import ConfigError
from nasx.ops.elastic import ChannelPermuter, importance_order
from nasx.spaces.ofa import OFAMobileNetV3Space
from nasx.spaces.ofa_resnet import OFAResNetSpace
from test_ofa import CPU, RESNET_CPU


def _perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and affine parameters, so that a wrong permutation changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def mbv3():
    torch.manual_seed(0)
    space = OFAMobileNetV3Space(**{**CPU, "input_size": 16})
    return space, _perturbed(space.supernet())


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    space = OFAResNetSpace(**{**RESNET_CPU, "input_size": 16})
    return space, _perturbed(space.supernet())


def test_the_order_is_descending_importance_inside_each_band():
    importance = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0, 6.0])
    assert importance_order(importance).tolist() == [5, 1, 3, 2, 4, 0]
    # a band edge at 3: channels 0..2 stay in front (re-sorted among themselves), 3..5 behind
    assert importance_order(importance, [3]).tolist() == [1, 2, 0, 5, 3, 4]
    # OFA's formulation (importance − 1e5 per band behind the edge) gives the same order
    ofa = importance.clone()
    ofa[3:] -= 1e5
    assert importance_order(importance, [3]).tolist() == torch.argsort(ofa, descending=True).tolist()
    # edges at 0 or at the full width cut nothing
    assert importance_order(importance, [0, 6]).tolist() == importance_order(importance).tolist()


@pytest.mark.parametrize("which", ["mbv3", "resnet"])
def test_sorting_leaves_the_full_network_unchanged_and_puts_the_important_channels_first(which, request):
    space, net = request.getfixturevalue(which)
    net = copy.deepcopy(net)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    smaller = space.smallest()
    with torch.no_grad():
        full_before, small_before = net(x), net(x, smaller)
        net.reorganize_middle()
        full_after, small_after = net(x), net(x, smaller)
    torch.testing.assert_close(full_after, full_before, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(small_after, small_before, atol=1e-3)  # the small subnet now keeps other channels
    readers = ([b.project for blocks in net.stages for b in blocks] if which == "mbv3"
               else [c for blocks in net.stages for b in blocks for c in (b.conv3.conv, b.conv2.conv)])
    for conv in readers:
        importance = conv.weight.abs().sum(dim=(0, 2, 3))
        assert torch.all(importance[:-1] >= importance[1:]), "middle channels not in descending importance"


def test_a_band_already_trained_keeps_its_channel_set(mbv3):
    space, net = mbv3
    net = copy.deepcopy(net)
    block = net.stages[1][0]
    m4, m6 = block.mids[4.0], block.mids[6.0]
    assert m4 < m6
    tag = torch.arange(m6, dtype=torch.float32)  # a channel's identity, carried through the permutation as a BN bias
    with torch.no_grad():
        block.dw_bn.bias.copy_(tag)
        net.reorganize_middle(keep=[4])
    moved = block.dw_bn.bias.detach()
    assert set(moved[:m4].tolist()) == set(range(m4))          # the e=4 prefix: same channels, re-sorted
    assert moved.tolist() != tag.tolist()
    importance = block.project.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:m4 - 1] >= importance[1:m4])
    assert torch.all(importance[m4:-1] >= importance[m4 + 1:])


def test_the_optimizers_state_is_permuted_with_the_weights(mbv3):
    space, net = mbv3
    net = copy.deepcopy(net).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    block = net.stages[2][1]
    w, buf = block.expand_conv.weight, opt.state[block.expand_conv.weight]["momentum_buffer"]
    w0, buf0 = w.detach().clone(), buf.clone()
    idx = importance_order(block.project.weight.abs().sum(dim=(0, 2, 3)))
    net.reorganize_middle(permute=ChannelPermuter([opt]))
    torch.testing.assert_close(w.detach(), w0[idx])
    torch.testing.assert_close(buf, buf0[idx])


PHASES = ("train.phases=[{name:full,epochs:1},{name:kernel,epochs:1,kernel:[3,5,7]},"
          "{name:expand,epochs:1,kernel:[3,5,7],expand:[4,6]},{name:expand2,epochs:1,kernel:[3,5,7],expand:[3,4,6]}]")
TINY_RUN = ["experiment=reg_nas_digits", "data=digits", "~data.scale", "~data.distractors", "~data.texture",
            "~data.rotation", "space.input_size=8", "train.epochs=4", PHASES, "train.sort_channels=true",
            "stages=[train]", "progress=false"]  # (reg_nas_digits itself keeps the sort off)


def test_the_phases_that_widen_expand_sort_and_keep_the_ratios_already_trained(mbv3):
    """OFA's schedule: the full network, kernel and depth phases do not sort; expand {4, 6} sorts everything (stage 0);
    expand {3, 4, 6} keeps the e=4 prefix (stage 1); a phase that adds no smaller ratio does not sort."""
    from nasx.training.ofa import ProgressiveShrinking, parse_phases

    space, net = mbv3
    phases = parse_phases([{"name": "full", "epochs": 1}, {"name": "kernel", "epochs": 1, "kernel": [3, 5, 7]},
                           {"name": "depth", "epochs": 1, "kernel": [3, 5, 7], "depth": [2, 3, 4]},
                           {"name": "expand", "epochs": 1, "expand": [4, 6]},
                           {"name": "expand2", "epochs": 1, "expand": [3, 4, 6]},
                           {"name": "again", "epochs": 1, "expand": [3, 6]},
                           {"name": "max_only", "epochs": 1, "expand": [6]}], space)
    system = ProgressiveShrinking(net, space, phases)
    assert [system.sort_keep(i) for i in range(len(phases))] == [None, None, None, [], [4.0], None, None]
    with pytest.raises(ConfigError, match="train.sort_channels must be true or false"):
        ProgressiveShrinking(net, space, phases, sort_channels="yes")


@pytest.mark.slow
def test_progressive_shrinking_sorts_once_and_a_kill_with_its_teacher_resumes_bit_identical(monkeypatch, tmp_path):
    """Phases 2 (a full sort) and 3 (the e=4 band kept) sort, once each. Killed at the end of the kernel phase (the
    teacher exists, the next phase sorts) and at the end of the first expand phase (already sorted), the resumed fits
    sort nothing twice and end with the uninterrupted run's weights and teacher. ``train.sort_channels=false`` sorts
    nothing."""
    from nasx.runner import run
    from nasx.spaces.ofa import OFAMobileNetV3Supernet
    from test_resume import _bit_identical, _run_killed_then_resumed

    calls = []
    original = OFAMobileNetV3Supernet.reorganize_middle

    def spy(self, keep=(), permute=None):
        calls.append(list(keep))
        return original(self, keep, permute)

    monkeypatch.setattr(OFAMobileNetV3Supernet, "reorganize_middle", spy)

    def cfg(d):
        return compose(TINY_RUN, d)

    run(cfg(tmp_path / "whole"))
    assert calls == [[], [4.0]]
    whole = torch.load(tmp_path / "whole" / "train" / "last.ckpt", weights_only=False)
    assert whole["nasx_ofa_sorted_phases"] == [2, 3] and "nasx_ofa_teacher" in whole
    for epoch in (1, 2):
        calls.clear()
        d = tmp_path / f"killed{epoch}"
        _run_killed_then_resumed(cfg, d, monkeypatch, epoch=epoch)
        assert calls == [[], [4.0]], f"killed after epoch {epoch}: sorted {calls}"
        killed = torch.load(d / "train" / "last.ckpt", weights_only=False)
        assert killed["nasx_ofa_sorted_phases"] == [2, 3]
        assert _bit_identical(whole["state_dict"], killed["state_dict"]), f"killed after epoch {epoch}"
        assert _bit_identical(whole["nasx_ofa_teacher"], killed["nasx_ofa_teacher"]), f"killed after epoch {epoch}"
    calls.clear()
    run(compose([*TINY_RUN, "train.sort_channels=false"], tmp_path / "off"))
    assert calls == []
