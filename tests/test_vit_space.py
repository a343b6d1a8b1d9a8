"""The weight-entangled ViT space (AutoFormer's, with video tokens): the extracted static ViT computes what the supernet
computes for images and clips, costs are exact against torch's FLOP counter, an SGD step touches only the sampled
slices, layers past the depth are the identity, and h heads use exactly their q/k/v rows."""
from __future__ import annotations

import random

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nasx.arch import Budget
from nasx.errors import InfeasibleBudgetError
from nasx.spaces.vit import VisionTransformer, ViTSpace
from nasx.training.optim import SlicedSGD, param_groups

CPU = dict(name="vit_test", embed_dims=(16, 24), depths=(1, 2, 3), num_heads=(1, 2, 3), mlp_ratios=(1.0, 2.0),
           head_dim=8, super_embed_dim=32, patch_size=4, input_size=8, in_channels=2, num_classes=5, max_frames=4)


@pytest.fixture(scope="module")
def space():
    return ViTSpace(**CPU)


def _supernet(space: ViTSpace, seed: int = 0):
    """A supernet whose every parameter is random (norm affines, biases and embeddings too), so that a wrong slice
    of any of them shows in the output."""
    torch.manual_seed(seed)
    supernet = space.supernet()
    with torch.no_grad():
        for p in supernet.parameters():
            p.normal_(0.0, 0.3)
    return supernet.eval()


def _archs(space: ViTSpace) -> list:
    smallest = space.arch([0] * len(space.genes))
    return [smallest, space.largest()] + [space.sample(random.Random(s)) for s in range(3)]


def _x(space: ViTSpace, *lead: int) -> torch.Tensor:
    return torch.randn(*lead, space.in_channels, space.input_size, space.input_size)


# -- the grids --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, embed, depths, ratios, heads, width", [
    ("vit_autoformer_t", [192, 216, 240], [12, 13, 14], [3.5, 4.0], [3, 4], 256),
    ("vit_autoformer_s", [320, 384, 448], [12, 13, 14], [3.0, 3.5, 4.0], [5, 6, 7], 448),
    ("vit_autoformer_b", [528, 576, 624], [14, 15, 16], [3.0, 3.5, 4.0], [9, 10], 640),
])
def test_presets_are_autoformers_grids(preset, embed, depths, ratios, heads, width, tmp_path):
    space = instantiate(compose([f"space={preset}"], tmp_path).space, in_channels=3, num_classes=1000)
    assert (list(space.embed_dims), list(space.depths), list(space.mlp_ratios), list(space.num_heads)) == \
        (embed, depths, ratios, heads)
    assert space.super_embed_dim == width and space.head_dim == 64 and space.patches == 14 * 14
    assert list(space.genes)[:4] == ["embed", "depth", "h0", "r0"] and len(space.genes) == 2 + 2 * depths[-1]
    assert space.temporal_positions == 1 and ViTSpace.video  # images only by default, but the class takes clips


def test_cpu_preset_trains_small_and_takes_eight_frame_clips(tmp_path):
    space = instantiate(compose(["space=vit_cpu"], tmp_path).space, in_channels=1, num_classes=10)
    assert space.input_size == 16 and space.patch_size == 4 and space.max_frames == 8 and space.frames == 1
    assert space.cost(space.largest()).mflops < 5 and space.cost(space.largest(), frames=8).mflops < 50
    # on video data the cost is counted per clip of the data's T
    video = instantiate(compose(["space=vit_cpu", "data=moving_digits"], tmp_path).space, in_channels=1,
                        num_classes=10)
    assert video.frames == 8 and video.cost(video.largest()) == space.cost(space.largest(), frames=8)


# -- extract equals the supernet ------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [None, 1, 4])
def test_extracted_static_vit_equals_the_supernet_on_images_and_clips(space, frames):
    supernet = _supernet(space)
    x = _x(space, 3) if frames is None else _x(space, 3, frames)  # None: images (B, C, H, W)
    for arch in _archs(space):
        static = supernet.extract(arch).eval()
        assert isinstance(static, VisionTransformer)
        assert not any("Sliced" in type(m).__name__ for m in static.modules())
        assert len(static.blocks) == space.depths[arch["depth"]]
        with torch.no_grad():
            torch.testing.assert_close(static(x), supernet(x, arch), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(static.classifier(static.forward_features(x)), static(x))


def test_extracted_weights_are_copies_not_views(space):
    supernet = _supernet(space)
    static = supernet.extract(space.largest())
    before = [p.clone() for p in supernet.parameters()]
    with torch.no_grad():
        for p in static.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, supernet.parameters()))


def test_an_image_is_a_one_frame_clip_and_the_class_token_sees_every_frame(space):
    supernet = _supernet(space)
    arch = space.sample(random.Random(0))
    x = _x(space, 2, 4)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x[:, 0], arch), supernet(x[:, :1], arch))
        out = supernet(x, arch)
        last_changed = x.clone()
        last_changed[:, -1] += 1.0
        assert not torch.allclose(supernet(last_changed, arch), out)  # the last frame reaches the class token
        # the temporal embedding tells frames apart: the same frames in another order give another output
        assert not torch.allclose(supernet(x.flip(1), arch), out)


def test_tubelet_embedding_equals_its_static_net_and_embeds_an_image_as_a_repeated_frame():
    space = ViTSpace(**{**CPU, "tubelet": 2})
    supernet = _supernet(space)
    arch = space.sample(random.Random(1))
    static = supernet.extract(arch).eval()
    assert isinstance(static.patch_embed.proj, torch.nn.Conv3d)
    clip, image = _x(space, 2, 4), _x(space, 2)
    with torch.no_grad():
        torch.testing.assert_close(static(clip), supernet(clip, arch), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(static(image), supernet(image, arch), rtol=1e-5, atol=1e-5)
        # an image's tokens are those of a 2-frame tubelet of two copies of it, with temporal position 0
        twice = image.unsqueeze(1).expand(-1, 2, -1, -1, -1)
        torch.testing.assert_close(supernet(image, arch), supernet(twice, arch), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tubelets of 2"):
        supernet(_x(space, 1, 3), arch)


def test_drop_path_is_random_in_training_and_the_identity_in_evaluation():
    space = ViTSpace(**{**CPU, "drop_path": 0.5})
    supernet = _supernet(space)
    arch = space.largest()
    static = supernet.extract(arch).eval()
    assert static.blocks[-1].drop_path == 0.5 and static.blocks[0].drop_path == 0.0  # linear in depth
    x = _x(space, 8)
    with torch.no_grad():
        torch.testing.assert_close(static(x), supernet(x, arch), rtol=1e-5, atol=1e-5)
        supernet.train()
        torch.manual_seed(0)
        assert not torch.allclose(supernet(x, arch), supernet(x, arch))


def test_one_head_per_data_set_in_the_supernet_and_the_extracted_net():
    space = ViTSpace(**{**CPU, "num_classes": (5, 3)})
    supernet = _supernet(space)
    arch = space.sample(random.Random(2))
    static = supernet.extract(arch).eval()
    x = _x(space, 2, 2)
    with torch.no_grad():
        for head, classes in enumerate((5, 3)):
            assert supernet(x, arch, head).shape == (2, classes)
            torch.testing.assert_close(static(x, head), supernet(x, arch, head), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(static(x), static(x, 0))  # head 0 by default
    # a step on data set 1 leaves head 0 without a gradient (so SlicedSGD does not touch it)
    supernet.train()
    supernet(x, arch, 1).sum().backward()
    assert supernet.classifier.heads[0].weight.grad is None and supernet.classifier.heads[1].weight.grad is not None
    with pytest.raises(ValueError, match="head 2"):
        supernet(x, arch, 2)


# -- cost -----------------------------------------------------------------------------------------------------------
def _counted_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates torch counts, in millions. The math attention kernel is forced because the CPU's fused
    kernel has no FLOP formula; torch counts 2 FLOPs per multiply-add."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2 / 1e6


@pytest.mark.parametrize("tubelet", [1, 2])
def test_cost_equals_the_flop_counter_and_the_parameter_count_for_images_and_clips(tubelet):
    space = ViTSpace(**{**CPU, "tubelet": tubelet})
    supernet = space.supernet()
    for arch in _archs(space):
        static = supernet.extract(arch).eval()
        assert space.cost(arch).params == sum(p.numel() for p in static.parameters())
        for frames in (1, 2, 4):
            x = _x(space, 1, frames)
            assert _counted_macs(static, x) == pytest.approx(space.cost(arch, frames=frames).mflops, rel=1e-12)
        assert _counted_macs(static, _x(space, 1)) == pytest.approx(space.cost(arch).mflops, rel=1e-12)


def test_cost_counts_attention_quadratic_in_tokens(space):
    """QKᵀ and AV are 2·h·d·L² multiply-adds a layer: the counted difference between two clip lengths has them."""
    arch = space.largest()
    n, a = space.patches, space.num_heads[-1] * space.head_dim
    d, layers = space.decode(arch)
    linear = lambda L: L * sum(4 * a * d + 2 * d * hidden for _, hidden in layers)  # noqa: E731
    attention = lambda L: len(layers) * 2 * a * L * L  # noqa: E731
    for t in (2, 4):
        L = 1 + t * n
        expected = (t * n * space.in_channels * space.patch_size ** 2 * d + linear(L) + attention(L)
                    + d * space.head_classes[0]) / 1e6
        assert space.cost(arch, frames=t).mflops == pytest.approx(expected, rel=1e-12)


def test_multi_head_cost_counts_every_head_s_parameters_and_the_chosen_head_s_macs():
    space = ViTSpace(**{**CPU, "num_classes": (5, 3)})
    arch = space.sample(random.Random(3))
    static = space.supernet().extract(arch).eval()
    assert space.cost(arch).params == sum(p.numel() for p in static.parameters())
    x = _x(space, 1)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        static(x, 1)
    assert counter.get_total_flops() / 2e6 == pytest.approx(space.cost(arch, head=1).mflops, rel=1e-12)


def test_autoformer_t_cost_is_exact_at_imagenet_size(tmp_path):
    space = instantiate(compose(["space=vit_autoformer_t"], tmp_path).space, in_channels=3, num_classes=1000)
    arch = space.sample(random.Random(0))
    static = space.supernet().extract(arch).eval()
    assert _counted_macs(static, torch.randn(1, 3, 224, 224)) == pytest.approx(space.cost(arch).mflops, rel=1e-12)
    assert space.cost(arch).params == sum(p.numel() for p in static.parameters())


# -- weight sharing ---------------------------------------------------------------------------------------------------
def test_sliced_sgd_leaves_everything_outside_the_sampled_slices_unchanged(space):
    """A step on the largest arch fills every momentum buffer; the next step, on a small arch, must change neither
    the weights nor the momentum outside the small arch's slices (no momentum drift, no weight decay)."""
    supernet = _supernet(space).train()
    opt = SlicedSGD(param_groups(supernet, 0.1), lr=0.1, momentum=0.9)
    x, y = _x(space, 4, 2), torch.randint(0, 5, (4,))
    loss = lambda arch: torch.nn.functional.cross_entropy(supernet(x, arch), y)  # noqa: E731
    loss(space.largest()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    small = space.arch({**{g: 0 for g in space.genes}, "depth": 1, "h0": 1, "r1": 1})  # D 16, 2 layers
    d, (l0, l1) = space.decode(small)
    assert (d, l0, l1) == (16, (2, 16), (1, 32))
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    momentum = {n: opt.state[p]["momentum_buffer"].clone() for n, p in supernet.named_parameters()}
    loss(small).backward()
    opt.step()
    after = dict(supernet.named_parameters())
    state = {n: opt.state[p]["momentum_buffer"] for n, p in supernet.named_parameters()}

    def outside_unchanged(name: str, inside: tuple[slice, ...]):
        mask = torch.ones_like(before[name], dtype=torch.bool)
        mask[inside] = False
        for old, new in ((before[name], after[name].detach()), (momentum[name], state[name])):
            assert torch.equal(old[mask], new[mask]), name
        assert not torch.equal(before[name][inside], after[name].detach()[inside]), name  # and inside it moved

    s = slice
    outside_unchanged("patch_embed.weight", (s(0, 16),))
    outside_unchanged("cls_token", (s(None), s(None), s(0, 16)))
    outside_unchanged("pos_embed", (s(None), s(None), s(0, 16)))
    outside_unchanged("temporal_embed", (s(None), s(0, 2), s(0, 16)))  # a 2-frame clip: rows 0, 1
    outside_unchanged("blocks.0.qkv.weight", (s(None), s(0, 16), s(0, 16)))  # 2 heads of 8, per q/k/v block
    outside_unchanged("blocks.1.qkv.weight", (s(None), s(0, 8), s(0, 16)))
    outside_unchanged("blocks.0.qkv.bias", (s(None), s(0, 16)))
    outside_unchanged("blocks.0.proj.weight", (s(0, 16), s(0, 16)))
    outside_unchanged("blocks.1.fc1.weight", (s(0, 32), s(0, 16)))
    outside_unchanged("blocks.1.fc2.weight", (s(0, 16), s(0, 32)))
    outside_unchanged("blocks.0.norm1.weight", (s(0, 16),))
    outside_unchanged("norm.bias", (s(0, 16),))
    outside_unchanged("classifier.weight", (s(None), s(0, 16)))
    for name in before:  # the third layer is past the depth: untouched, momentum included
        if name.startswith("blocks.2."):
            assert torch.equal(before[name], after[name]) and torch.equal(momentum[name], state[name]), name


def test_layers_past_the_depth_are_the_identity(space):
    supernet = _supernet(space)
    arch = space.arch({**{g: 1 for g in space.genes}, "depth": 0})  # one layer
    x = _x(space, 2, 3)
    with torch.no_grad():
        out = supernet(x, arch)
        for block in supernet.blocks[1:]:
            for p in block.parameters():
                p.add_(torch.randn_like(p))
        torch.testing.assert_close(supernet(x, arch), out)
        # and the output is the first block's, normed and classified: nothing else happens in between
        d, [(heads, hidden)] = space.decode(arch)
        tokens = supernet.blocks[0](supernet._tokens(x, d), heads, hidden)
        torch.testing.assert_close(supernet.classifier(supernet.norm(tokens[:, 0])), out)
    # genes of layers past the depth do not change the network
    other = arch.replace(h2=0, r2=0, h1=2)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, other), out)
    assert space.cost(other) == space.cost(arch)


def test_h_heads_use_exactly_rows_up_to_h_times_head_dim_of_each_qkv_block(space):
    supernet = _supernet(space)
    arch = space.arch({**{g: 0 for g in space.genes}, "embed": 1, "h0": 1})  # D 24, one layer of 2 heads of 8
    a, d = 2 * space.head_dim, 24
    qkv = supernet.blocks[0].qkv
    static = supernet.extract(arch)
    expected = torch.cat([qkv.weight[i, :a, :d] for i in range(3)])  # [q rows | k rows | v rows]
    torch.testing.assert_close(static.blocks[0].attn.qkv.weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(static.blocks[0].attn.qkv.bias, qkv.bias[:, :a].reshape(-1), rtol=0, atol=0)
    x = _x(space, 2, 2)
    with torch.no_grad():
        out = supernet(x, arch)
        qkv.weight[:, a:] += 1.0  # the third head's rows of q, k and v
        qkv.bias[:, a:] += 1.0
        qkv.weight[:, :, d:] += 1.0  # columns past the embed dim
        torch.testing.assert_close(supernet(x, arch), out)
        for block in range(3):  # the last row each of q, k and v belongs to the second head, and is used
            qkv.weight[block, a - 1, :d] += 1.0
            assert not torch.allclose(supernet(x, arch), out)
            qkv.weight[block, a - 1, :d] -= 1.0


# -- the space's search operations -----------------------------------------------------------------------------------
def test_min_cost_is_the_smallest_and_repair_fits_any_feasible_budget(space):
    low = space.min_cost()
    costs = [space.cost(space.sample(random.Random(s))) for s in range(50)]
    assert all(c.mflops >= low.mflops and c.params >= low.params for c in costs)
    budget = Budget(mflops=sorted(c.mflops for c in costs)[10])
    for s in range(20):
        fixed = space.repair(space.largest(), budget, random.Random(s))
        assert budget.admits(space.cost(fixed))
    with pytest.raises(InfeasibleBudgetError, match="infeasible"):
        space.repair(space.largest(), Budget(mflops=low.mflops / 2), random.Random(0))


def test_bad_geometry_and_inputs_are_one_clear_error(space):
    with pytest.raises(ValueError, match="embed_dims must be a non-empty strictly increasing"):
        ViTSpace(**{**CPU, "embed_dims": (24, 16)})
    with pytest.raises(ValueError, match="input_size 10 is not a multiple of patch_size 4"):
        ViTSpace(**{**CPU, "input_size": 10})
    with pytest.raises(ValueError, match="super_embed_dim 8 is below"):
        ViTSpace(**{**CPU, "super_embed_dim": 8})
    supernet = space.supernet()
    arch = space.largest()
    with pytest.raises(ValueError, match="exceed max_frames 4"):
        supernet(_x(space, 1, 5), arch)
    with pytest.raises(ValueError, match=r"takes frames of \(2, 8, 8\)"):
        supernet(torch.randn(1, 3, 8, 8), arch)


# -- the pipeline ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_spos_pipeline_trains_searches_retrains_and_evaluates_the_vit_space(tmp_path):
    from nasx import artifacts
    from nasx.runner import run

    tiny = ["space=vit_cpu", "data=digits", "train.epochs=2", "train.warmup_epochs=1", "retrain.epochs=1",
            "search.strategy.generations=2", "search.strategy.population=4", "search.strategy.top_k=2",
            "search.strategy.crossover_size=2", "search.bn_batches=2", "budget.mflops=2.0", "progress=false"]
    results = run(compose(tiny, tmp_path))
    assert results["space"] == "vit_cpu" and results["mflops"] <= 2.0
    assert 0.0 <= results["retrain"]["test_top1"] <= 1.0 and 0.0 <= results["supernet_test_top1"] <= 1.0
    assert len(artifacts.read_jsonl(tmp_path / "search" / "history.jsonl")) == 2 * 4
    assert "D=" in (tmp_path / "report.md").read_text()  # the layers, described
