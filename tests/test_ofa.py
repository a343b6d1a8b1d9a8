"""Once-for-all's MobileNetV3 space [ref; REG-NAS's space]: extract equals the supernet, the cost equals torch's FLOP
counter and the extracted model's parameter count, smaller kernels go through the kernel-transformation matrices, a
larger subnet literally contains a smaller one's weights, and progressive-shrinking phases draw only their elastic
dimensions."""
from __future__ import annotations

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasx.arch import Budget
from nasx.errors import ConfigError, InfeasibleBudgetError
from nasx.spaces.ofa import OFAMobileNetV3Space

CPU = dict(name="ofa_mbv3_cpu", stem_channels=8, first_channels=8, stage_widths=[12, 16, 24, 32, 40],
           strides=[1, 2, 2, 1, 2], final_expand=160, feature_mix=256, input_size=32, divisor=4, in_channels=3,
           num_classes=10)  # = conf/space/ofa_mbv3_cpu.yaml


@pytest.fixture(scope="module")
def space():
    return OFAMobileNetV3Space(**CPU)


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    net = space.supernet()
    with torch.no_grad():  # non-trivial BN statistics and kernel transforms, so that equality means something
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        for name, p in net.named_parameters():
            if "transforms" in name:
                p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _archs(space, n=6, seed=0):
    rng = random.Random(seed)
    return [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(n)]


def test_extract_equals_the_supernet_in_eval_mode(space, supernet):
    x = torch.randn(4, 3, 32, 32)
    for arch in _archs(space):
        static = supernet.extract(arch).eval()
        with torch.no_grad():
            assert torch.allclose(static(x), supernet(x, arch), atol=1e-5), space.describe(arch)


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_cost_equals_the_flop_counter_and_the_parameter_count(space, preset):
    sp = space if preset == "cpu" else OFAMobileNetV3Space(num_classes=1000)
    net = sp.supernet().eval()
    for arch in _archs(sp, n=3 if preset == "cpu" else 1, seed=1):
        static = net.extract(arch).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            static(torch.randn(1, sp.in_channels, sp.input_size, sp.input_size))
        cost = sp.cost(arch)
        assert counter.get_total_flops() / 2 / 1e6 == pytest.approx(cost.mflops, rel=1e-9)
        assert sum(p.numel() for p in static.parameters()) == cost.params
    if preset == "paper":  # OFA's MobileNetV3 space spans about 150-600 MFLOPs at 224 px (REG-NAS's family budgets)
        assert 100 < sp.min_cost().mflops < 160 and 550 < sp.cost(sp.largest()).mflops < 650


def test_smaller_kernels_go_through_the_transformation_matrices(space, supernet):
    dw = supernet.stages[0][0].dw
    assert set(dw.transforms) == {"7to5", "5to3"}
    assert dw.transforms["7to5"].shape == (25, 25) and dw.transforms["5to3"].shape == (9, 9)
    c = dw.max_channels
    w7 = dw.conv.weight[:c]
    w5 = (w7[..., 1:6, 1:6].reshape(c, 25) @ dw.transforms["7to5"].T).view(c, 1, 5, 5)
    w3 = (w5[..., 1:4, 1:4].reshape(c, 9) @ dw.transforms["5to3"].T).view(c, 1, 3, 3)
    assert torch.allclose(dw.weight(c, 7), w7) and torch.allclose(dw.weight(c, 5), w5)
    assert torch.allclose(dw.weight(c, 3), w3)
    assert not torch.allclose(dw.weight(c, 3), w7[..., 2:5, 2:5])  # not the plain centre once the matrices moved
    # a 3x3 loss sends gradient to both matrices and the 7x7 weight; a 7x7 loss to neither matrix
    supernet.zero_grad()
    dw.weight(c, 3).sum().backward()
    assert dw.transforms["5to3"].grad.abs().sum() > 0 and dw.transforms["7to5"].grad.abs().sum() > 0
    supernet.zero_grad(set_to_none=True)
    dw.weight(c, 7).sum().backward()
    assert dw.transforms["5to3"].grad is None and dw.transforms["7to5"].grad is None


def test_a_larger_subnet_literally_contains_a_smaller_ones_weights(space, supernet):
    small = space.from_values(kernel=7, expand=3, depth=2)
    big = space.from_values(kernel=7, expand=6, depth=4)
    assert space.contains(big, small) and not space.contains(small, big)
    a, b = supernet.extract(small), supernet.extract(big)
    # every block of the small net is the leading slice of the big net's block at the same position
    blocks_a = list(a.blocks)
    blocks_b = list(b.blocks)
    pos_a = pos_b = 1
    for s in range(space.n_stages):
        for i in range(2):
            ba, bb = blocks_a[pos_a + i], blocks_b[pos_b + i]
            for (na, pa), (nb, pb) in zip(ba.named_parameters(), bb.named_parameters()):
                assert na == nb
                box = tuple(slice(0, n) for n in pa.shape)
                assert torch.equal(pa, pb[box]), (s, i, na)
        pos_a, pos_b = pos_a + 2, pos_b + 4


def test_containment_repair(space):
    rng = random.Random(3)
    for _ in range(200):
        ref, cand = space.sample(rng), space.sample(rng)
        fixed = space.contain(cand, ref)
        assert space.contains(fixed, ref)
        assert all(fixed[g] == max(cand[g], ref[g]) if g in space.live_genes(ref) else fixed[g] == cand[g]
                   for g in space.genes)


@pytest.mark.parametrize("phase,allowed", [
    ("full", {}),
    ("kernel", {"kernel": [3, 5, 7]}),
    ("depth", {"kernel": [3, 5, 7], "depth": [3, 4]}),
    ("expand", {"kernel": [3, 5, 7], "depth": [2, 3, 4], "expand": [4, 6]}),
])
def test_progressive_shrinking_phases_draw_exactly_their_elastic_dimensions(space, phase, allowed):
    rng = random.Random(0)
    seen = {"k": set(), "e": set(), "d": set()}
    for _ in range(300):
        arch = space.sample_elastic(rng, **allowed)
        for g in space.genes:
            seen[g[0]].add(arch[g])
    values = {"k": space.kernels, "e": space.expands, "d": space.depths}
    for key, name in (("k", "kernel"), ("e", "expand"), ("d", "depth")):
        want = allowed.get(name, [values[key][-1]])
        assert sorted(values[key][i] for i in seen[key]) == sorted(want), (phase, name)
    with pytest.raises(ConfigError, match="kernel 9 is not a choice"):
        space.sample_elastic(rng, kernel=[9])


def test_repair_fits_a_budget_and_an_infeasible_one_fails_in_one_line(space):
    rng = random.Random(0)
    budget = Budget(mflops=(space.min_cost().mflops + space.cost(space.largest()).mflops) / 2)
    for _ in range(20):
        arch = space.repair(space.largest(), budget, rng)
        assert budget.admits(space.cost(arch))
    ref = space.from_values(kernel=5, expand=4, depth=3)
    floor_budget = Budget(mflops=space.cost(ref).mflops * 1.2)
    arch = space.repair(space.largest(), floor_budget, rng, floor=ref)
    assert space.contains(arch, ref) and floor_budget.admits(space.cost(arch))
    with pytest.raises(InfeasibleBudgetError, match="infeasible") as e:
        space.repair(space.largest(), Budget(mflops=space.min_cost().mflops / 2), rng)
    assert "\n" not in str(e.value)


# -- ResNet50D ---------------------------------------------------------------------------------------------------------
RESNET_CPU = dict(name="ofa_resnet50d_cpu", stage_widths=[32, 64, 128, 256], stem_width=16, input_size=32, divisor=4,
                  in_channels=3, num_classes=10)  # = conf/space/ofa_resnet50d_cpu.yaml


@pytest.fixture(scope="module")
def resnet():
    from nasx.spaces.ofa_resnet import OFAResNetSpace

    space = OFAResNetSpace(**RESNET_CPU)
    torch.manual_seed(0)
    net = space.supernet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return space, net.eval()


def test_resnet_extract_cost_and_the_paper_range(resnet):
    from nasx.spaces.ofa_resnet import OFAResNetSpace

    space, net = resnet
    x = torch.randn(3, 3, 32, 32)
    for arch in _archs(space, n=4, seed=2):
        static = net.extract(arch).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad():
            assert torch.allclose(static(x), net(x, arch), atol=1e-5), space.describe(arch)
            with counter:
                static(x[:1])
        assert counter.get_total_flops() / 2 / 1e6 == pytest.approx(space.cost(arch).mflops, rel=1e-9)
        assert sum(p.numel() for p in static.parameters()) == space.cost(arch).params
    paper = OFAResNetSpace(num_classes=1000)  # REG-NAS's ResNet family sits at 2000-5000 MFLOPs inside this range
    assert paper.min_cost().mflops < 2000 and paper.cost(paper.largest()).mflops > 5000
    assert paper.genes["e2_5"] == 3 and "e2_6" not in paper.genes  # stage 3: base 4 + up to 2 extra blocks


def test_resnet_containment_widths_and_phases(resnet):
    space, net = resnet
    small = space.smallest()
    big = space.largest()
    assert space.contains(big, small)
    a, b = net.extract(small), net.extract(big)
    # the smallest net's first bottleneck is the leading slice of the largest's
    for (na, pa), (nb, pb) in zip(a.blocks[0].named_parameters(), b.blocks[0].named_parameters()):
        assert na == nb and torch.equal(pa, pb[tuple(slice(0, n) for n in pa.shape)])
    rng = random.Random(0)
    for _ in range(100):
        arch = space.sample_elastic(rng, depth=[0, 1, 2], expand=[0.25, 0.35])
        assert all(space.expands[arch[g]] in (0.25, 0.35) for g in space.genes if g.startswith("e"))
        assert all(space.width_mults[arch[g]] == 1.0 for g in space.genes if g.startswith(("w", "stem_m", "stem_o")))
    with pytest.raises(ConfigError, match="kernel is not elastic"):
        space.sample_elastic(rng, kernel=[3, 5])
