"""The NSS space: the closed-form expected FLOPs is the exact mean over network spaces, channel masking computes
what a sliced network computes (train and eval mode), and costs are exact."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasx.arch import Budget
from nasx.errors import InfeasibleBudgetError
from nasx.spaces.nss_resnet import NSSResNet, NSSSpace


@pytest.fixture(scope="module")
def space():
    return NSSSpace(name="nss_cpu", max_depth=4, max_width=32, depth_step=2, width_step=8, stem_channels=8,
                    input_size=16, in_channels=1, num_classes=10)


def _trained_supernet(space, seed):
    """A supernet whose BN layers have non-trivial affine parameters and running statistics (a zero beta would
    hide a mask placed before BN)."""
    torch.manual_seed(seed)
    supernet = space.supernet().train()
    with torch.no_grad():
        for m in supernet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
        for s in range(4):
            supernet(torch.randn(8, 1, 16, 16), space.sample(random.Random(100 + s)))
    return supernet


def test_expanded_space_has_32_candidate_spaces_per_stage_and_cpu_preset_8():
    full = NSSSpace()
    assert list(full.genes) == ["d0", "w0", "d1", "w1", "d2", "w2"]
    assert full.genes["d1"] == 16 and full.genes["w2"] == 512
    assert full.n_spaces == 32
    assert full.space_bounds(0) == (1, 4, 1, 64)
    assert full.space_bounds(9) == (5, 8, 65, 128)  # depth-major: depth range 1, width range 1
    assert full.space_bounds(31) == (13, 16, 449, 512)
    assert NSSSpace(max_depth=4, max_width=32, depth_step=2, width_step=8).n_spaces == 8


@pytest.mark.parametrize("kind", ["uniform", "concentrated", "random"])
def test_expected_mflops_is_the_exact_mean_over_enumerated_archs(kind):
    tiny = NSSSpace(name="enum", max_depth=4, max_width=6, depth_step=2, width_step=3, stem_channels=4,
                    input_size=8, in_channels=2, num_classes=5)
    n = tiny.n_spaces
    assert n == 4
    if kind == "uniform":
        probs = torch.full((3, n), 1 / n, dtype=torch.float64)
    elif kind == "concentrated":
        probs = torch.tensor([[1, 0, 0, 0], [0, 0.3, 0.7, 0], [0, 0, 0, 1]], dtype=torch.float64)
    else:
        probs = torch.distributions.Dirichlet(torch.ones(n, dtype=torch.float64)).sample((3,))
    # each candidate space's archs, enumerated
    members = {}
    for j in range(n):
        d_lo, d_hi, w_lo, w_hi = tiny.space_bounds(j)
        members[j] = [(d - 1, w - 1) for d in range(d_lo, d_hi + 1) for w in range(w_lo, w_hi + 1)]
    reference = 0.0
    for triple in itertools.product(range(n), repeat=3):
        p = float(probs[0, triple[0]] * probs[1, triple[1]] * probs[2, triple[2]])
        if p == 0:
            continue
        costs = [tiny.cost(tiny.arch([g for stage in combo for g in stage])).mflops
                 for combo in itertools.product(*(members[j] for j in triple))]
        reference += p * sum(costs) / len(costs)
    assert tiny.expected_mflops(probs).item() == pytest.approx(reference, rel=1e-6)


def test_expected_mflops_is_differentiable_in_the_probabilities(space):
    probs = torch.softmax(torch.randn(3, space.n_spaces, dtype=torch.float64), 1).requires_grad_()
    space.expected_mflops(probs).backward()
    assert probs.grad is not None and (probs.grad.abs() > 0).all()
    # and the gradient is the true one
    assert torch.autograd.gradcheck(space.expected_mflops, (probs.detach().clone().requires_grad_(),))


def test_forward_soft_gradient_reaches_probs_through_masks(space):
    supernet = _trained_supernet(space, 0)
    widths, depths = space.candidate_masks(random.Random(0))
    assert widths.shape == (3, space.n_spaces, space.max_width) and depths.shape == (3, space.n_spaces, 4)
    probs = torch.softmax(torch.randn(3, space.n_spaces), 1).requires_grad_()
    logits = supernet.forward_soft(torch.randn(4, 1, 16, 16), [probs[i] @ widths[i] for i in range(3)],
                                   [probs[i] @ depths[i] for i in range(3)])
    logits.sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0 and torch.isfinite(probs.grad).all()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("seed", range(3))
def test_masking_width_w_equals_a_sliced_network_of_width_w(space, mode, seed):
    supernet = _trained_supernet(space, seed)
    arch = space.sample(random.Random(seed))
    static = supernet.extract(arch)
    assert isinstance(static, NSSResNet)
    assert all(type(m) in (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear) for m in static.modules()
               if not list(m.children()) and not isinstance(m, torch.nn.ReLU))
    supernet.train(mode == "train")
    static.train(mode == "train")
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(static(x), supernet(x, arch), rtol=1e-5, atol=1e-5)
    assert static.forward_features(x).shape == (8, space.width(arch, 2))


def test_weights_outside_the_arch_do_not_change_its_output(space):
    supernet = _trained_supernet(space, 0).train()
    arch = space.arch([1, 9, 0, 20, 2, 5])  # depths 2/1/3, widths 10/21/6
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        before = supernet(x, arch)
        for i, blocks in enumerate(supernet.stages):
            w = space.width(arch, i)
            for k, block in enumerate(blocks):
                for name, p in block.named_parameters():
                    if k >= space.depth(arch, i):
                        p.add_(torch.randn_like(p))  # a block past the stage's depth
                    else:
                        p[w:].add_(torch.randn_like(p[w:]))  # output channels past the width
                        if p.ndim == 4:  # input channels past the previous width
                            first = k == 0 and name in ("conv1.weight", "shortcut.0.weight")
                            w_in = (space.width(arch, i - 1) if i else space.stem_channels) if first else w
                            p[:, w_in:].add_(torch.randn_like(p[:, w_in:]))
        supernet.classifier.weight[:, space.width(arch, 2):] += 1.0
        torch.testing.assert_close(supernet(x, arch), before)


@pytest.mark.parametrize("seed", range(3))
def test_cost_is_exact_against_torch_flop_counter(space, seed):
    arch = space.sample(random.Random(seed))
    static = space.supernet().extract(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        static(torch.randn(1, 1, 16, 16))
    cost = space.cost(arch)
    # torch counts a multiply-add as 2 FLOPs; nasx reports multiply-accumulates
    assert counter.get_total_flops() / 2 / 1e6 == pytest.approx(cost.mflops, rel=1e-12)
    assert cost.params == sum(p.numel() for p in static.parameters())


@pytest.mark.parametrize("seed", range(3))
def test_forward_soft_with_one_hot_masks_equals_forward(space, seed):
    supernet = _trained_supernet(space, seed).eval()
    arch = space.sample(random.Random(seed))
    masks = [space.width_mask(space.width(arch, i)) for i in range(3)]
    depths = [torch.nn.functional.one_hot(torch.tensor(space.depth(arch, i) - 1), 4).float() for i in range(3)]
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(supernet.forward_soft(x, masks, depths), supernet(x, arch))
        # a soft depth mix is not any single depth
        mixed = [torch.full((4,), 0.25) for _ in range(3)]
        assert not torch.allclose(supernet.forward_soft(x, masks, mixed), supernet(x, arch))


def test_sample_in_stays_inside_the_candidate_spaces(space):
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        spaces = tuple(rng.randrange(space.n_spaces) for _ in range(3))
        arch = space.sample_in(spaces, rng)
        for i, j in enumerate(spaces):
            d_lo, d_hi, w_lo, w_hi = space.space_bounds(j)
            assert d_lo <= space.depth(arch, i) <= d_hi and w_lo <= space.width(arch, i) <= w_hi
            seen.add((j, space.depth(arch, i), space.width(arch, i)))
    # the whole range of a space is reached, not just its corners
    assert {w for j, _, w in seen if j == 5} == set(range(9, 17))


def test_min_cost_is_the_smallest_and_infeasible_budgets_fail_fast(space):
    low = space.min_cost()
    assert low == space.cost(space.arch([0] * 6))
    costs = [space.cost(space.sample(random.Random(s))) for s in range(50)]
    assert all(c.mflops >= low.mflops and c.params >= low.params for c in costs)
    with pytest.raises(InfeasibleBudgetError, match=f"{low.mflops:.3f}"):
        space.check_feasible(Budget(mflops=low.mflops * 0.9))
    space.check_feasible(Budget(mflops=low.mflops))


def test_repair_shrinks_genes_into_the_budget(space):
    budget = Budget(mflops=space.cost(space.arch([1, 15, 1, 15, 1, 15])).mflops)
    for s in range(20):
        rng = random.Random(s)
        arch = space.arch([3, 31, 3, 31, 3, 31])
        fixed = space.repair(arch, budget, rng)
        assert budget.admits(space.cost(fixed))
        assert all(a <= b for a, b in zip(fixed.choices(), arch.choices()))
    with pytest.raises(InfeasibleBudgetError):
        space.repair(arch, Budget(mflops=space.min_cost().mflops / 2), random.Random(0))


def test_constructor_rejects_a_granularity_that_does_not_divide_the_space():
    with pytest.raises(ValueError, match="depth_step"):
        NSSSpace(max_depth=16, depth_step=5)
    with pytest.raises(ValueError, match="width_step"):
        NSSSpace(max_width=512, width_step=100)


def test_sliced_sgd_leaves_weights_outside_the_sampled_arch_untouched(space):
    from nasx.training.optim import SlicedSGD

    supernet = _trained_supernet(space, 0).train()
    arch = space.arch([1, 9, 0, 20, 2, 5])  # depths 2/1/3, widths 10/21/6
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    opt = SlicedSGD(supernet.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    supernet(torch.randn(6, 1, 16, 16), arch).logsumexp(1).mean().backward()
    opt.step()
    after = dict(supernet.named_parameters())
    conv1 = "stages.1.0.conv1.weight"  # (21, 10) box of a (32, 32) super kernel
    assert not torch.equal(after[conv1][:21, :10], before[conv1][:21, :10])
    assert torch.equal(after[conv1][21:], before[conv1][21:])
    assert torch.equal(after[conv1][:, 10:], before[conv1][:, 10:])
    assert torch.equal(after["stages.2.0.bn1.weight"][6:], before["stages.2.0.bn1.weight"][6:])
    assert torch.equal(after["stages.0.2.conv1.weight"], before["stages.0.2.conv1.weight"])  # past depth 2
    assert torch.equal(after["classifier.weight"][:, 6:], before["classifier.weight"][:, 6:])
