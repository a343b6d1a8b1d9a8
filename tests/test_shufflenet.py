"""The SPOS ShuffleNet space: the supernet computes what the extracted static net computes, costs are exact."""
from __future__ import annotations

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasx.arch import Budget
from nasx.spaces.shufflenet import BLOCKS, MID_SCALES, ShuffleNet, ShuffleNetSpace


def test_space_has_20_layers_of_4_blocks_and_10_widths():
    space = ShuffleNetSpace()
    assert len(space.layers) == 20 and [s for s in space.stage_repeats] == [4, 4, 8, 4]
    assert len(space.genes) == 40
    assert all(space.genes[f"b{i}"] == 4 and space.genes[f"w{i}"] == 10 for i in range(20))
    assert BLOCKS == ("shuffle3", "shuffle5", "shuffle7", "xception")
    # widths scale SPOS's middle channels (half the layer's outputs) by 0.2 .. 2.0
    assert space.mids[0] == [round(32 * s) for s in MID_SCALES]


@pytest.mark.parametrize("seed", range(4))
def test_extracted_static_net_equals_supernet_in_eval_mode(tiny_space, seed):
    torch.manual_seed(seed)
    supernet = tiny_space.supernet()
    # give BN non-trivial statistics so the comparison is not between two identity norms
    supernet.train()
    with torch.no_grad():
        for s in range(5):
            supernet(torch.randn(8, 1, 16, 16), tiny_space.sample(random.Random(100 + s)))
    supernet.eval()
    arch = tiny_space.sample(random.Random(seed))
    static = supernet.extract(arch).eval()
    assert isinstance(static, ShuffleNet)
    assert not any("Sliced" in type(m).__name__ for m in static.modules())
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(static(x), supernet(x, arch), rtol=1e-5, atol=1e-5)


def test_extracted_weights_are_copies_not_views(tiny_space):
    supernet = tiny_space.supernet()
    arch = tiny_space.sample(random.Random(0))
    static = supernet.extract(arch)
    before = [p.clone() for p in supernet.parameters()]
    with torch.no_grad():
        for p in static.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, supernet.parameters()))


@pytest.mark.parametrize("seed", range(3))
def test_cost_is_exact_against_torch_flop_counter(tiny_space, seed):
    arch = tiny_space.sample(random.Random(seed))
    static = tiny_space.supernet().extract(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        static(torch.randn(1, 1, 16, 16))
    cost = tiny_space.cost(arch)
    # torch counts a multiply-add as 2 FLOPs; nasx reports multiply-accumulates, like the seeds' tables
    assert counter.get_total_flops() / 2 / 1e6 == pytest.approx(cost.mflops, rel=1e-9)
    assert cost.params == sum(p.numel() for p in static.parameters())


def test_tier_presets_scale_every_layer_and_bracket_their_budget():
    tiers = {1.0: 330, 0.75: 230, 0.5: 100}
    spaces = {s: ShuffleNetSpace(width_scale=s, input_size=224) for s in tiers}
    assert spaces[0.75].stage_channels == [48, 120, 240, 480] and spaces[0.5].stage_channels == [32, 80, 160, 320]
    for scale, mflops in tiers.items():
        space = spaces[scale]
        rng = random.Random(0)
        costs = sorted(space.cost(space.sample(rng)).mflops for _ in range(500))
        # the tier's budget cuts through the bulk of the space: a real constraint, and feasible
        assert costs[25] < mflops < costs[-25], (scale, costs[25], costs[-25])
        space.check_feasible(Budget(mflops=mflops))
    # and the 330 tier costs what torch counts at ImageNet size
    arch = spaces[1.0].sample(random.Random(0))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        spaces[1.0].supernet().extract(arch).eval()(torch.randn(1, 3, 224, 224))
    assert counter.get_total_flops() / 2e6 == pytest.approx(spaces[1.0].cost(arch).mflops, rel=1e-9)


def test_warm_up_forward_is_the_mean_of_the_four_blocks_at_full_width(tiny_space):
    torch.manual_seed(0)
    supernet = tiny_space.supernet().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        h = supernet.stem(x)
        layer = supernet.layers[0]
        expected = torch.stack([blk(h, tiny_space.mids[0][-1]) for blk in layer]).mean(0)
        for i, blocks in enumerate(supernet.layers[1:], start=1):
            expected = torch.stack([b(expected, tiny_space.mids[i][-1]) for b in blocks]).mean(0)
        expected = supernet.classifier(supernet.last(expected).mean((2, 3)))
        torch.testing.assert_close(supernet(x, None), expected)
        # and it differs from any single path
        assert not torch.allclose(supernet(x, None), supernet(x, tiny_space.sample(random.Random(0))))

