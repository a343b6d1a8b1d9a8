"""VIM-NAS's architecture parameters α and perturbation-based selection: the α-mixed block is exactly the weighted sum
of its sliced choices (one forward, by weight entanglement), α one-hot on an arch is that arch's subnet, gradients
reach α and a few steps lower a validation loss, a removed choice has weight exactly 0 and the rest renormalise, and
perturbation selection keeps the choice whose removal costs the most accuracy — not α's argmax — deterministically."""
from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from nasx.ops.vit import attend
from nasx.search import perturbation
from nasx.search.perturbation import mixed_top1, perturbation_select
from nasx.spaces.vit import ArchParameters, ViTSpace, width_weights
from test_vit_space import _supernet

TINY = dict(name="t", embed_dims=(16, 24), depths=(1, 2), num_heads=(1, 2), mlp_ratios=(1.0, 2.0), head_dim=8,
            patch_size=4, input_size=8, in_channels=1, num_classes=3, max_frames=4)
# three choices each, widths that are not multiples of one another, a supernet wider than the largest embed dim
WIDE = {**TINY, "num_heads": (1, 2, 3), "mlp_ratios": (1.0, 1.5, 2.0), "super_embed_dim": 32}




def _x(space: ViTSpace, *lead: int) -> torch.Tensor:
    return torch.randn(*lead, space.in_channels, space.input_size, space.input_size)


def _one_hot(space: ViTSpace, arch) -> ArchParameters:
    """α fixed on ``arch``'s depth and on the heads and ratios of its layers; layers past its depth left uniform."""
    alpha = ArchParameters(space)
    alpha.fix(None, "depth", arch["depth"])
    for i in range(space.depths[arch["depth"]]):
        alpha.fix(i, "heads", arch[f"h{i}"])
        alpha.fix(i, "ratio", arch[f"r{i}"])
    return alpha


# -- the mixed block ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [None, 3])  # None: images (B, C, H, W); 3: clips (B, 3, C, H, W)
@pytest.mark.parametrize("embed", [16, 24])
def test_mixed_attention_and_mlp_equal_the_weighted_sums_of_the_sliced_choices(frames, embed):
    space = ViTSpace(**WIDE)
    supernet = _supernet(space)
    block = supernet.blocks[1]
    x = supernet._tokens(_x(space, 2) if frames is None else _x(space, 2, frames), embed)  # (B, L, D)
    hidden = [space.hidden(embed, r) for r in space.mlp_ratios]
    assert hidden == ([16, 24, 32] if embed == 16 else [24, 36, 48])
    torch.manual_seed(1)
    for wh, wr in [(torch.randn(3).softmax(0), torch.randn(3).softmax(0)),
                   (torch.tensor([0.0, 0.7, 0.3]), torch.tensor([0.5, 0.0, 0.5]))]:  # with removed choices
        with torch.no_grad():
            mixed = block.forward_mixed(x, width_weights(space.num_heads, wh), width_weights(hidden, wr))
            # explicit: x + Σ_c w_c·attn_c(x), then + Σ_c w_c·mlp_c(·), every choice its own sliced sub-op
            attn = sum(w * block.proj(attend(block.qkv(block.norm1(x), h * space.head_dim), h), embed)
                       for w, h in zip(wh, space.num_heads))
            y = x + attn
            mlp = sum(w * block.fc2(F.gelu(block.fc1(block.norm2(y), k)), embed) for w, k in zip(wr, hidden))
            torch.testing.assert_close(mixed, y + mlp, rtol=1e-5, atol=1e-5)
            # the attention mixture alone: with the MLP one-hot the MLP part is one plain sub-op
            one = torch.tensor([0.0, 0.0, 1.0])
            mixed_attn = block.forward_mixed(x, width_weights(space.num_heads, wh), width_weights(hidden, one))
            torch.testing.assert_close(mixed_attn, y + block.fc2(F.gelu(block.fc1(block.norm2(y), hidden[2])), embed),
                                       rtol=1e-5, atol=1e-5)
            # and one-hot on both is the plain block of that choice
            plain = block(x, space.num_heads[1], hidden[0])
            torch.testing.assert_close(block.forward_mixed(x, width_weights(space.num_heads, torch.tensor([0., 1, 0])),
                                                           width_weights(hidden, torch.tensor([1., 0, 0]))), plain,
                                       rtol=1e-5, atol=1e-5)


def test_width_weights_put_each_choice_at_its_width_and_add_equal_widths():
    w = torch.tensor([0.2, 0.3, 0.5])
    assert width_weights([1, 3, 4], w).tolist() == pytest.approx([0.2, 0.0, 0.3, 0.5])
    assert width_weights([16, 16, 17], w)[15:].tolist() == pytest.approx([0.5, 0.5])  # int(16·1.0) = int(16·1.03)
    with pytest.raises(ValueError, match="one per width"):
        width_weights([1, 2], w)


# -- the mixed supernet ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [None, 2])
def test_forward_mixed_with_alpha_one_hot_on_an_arch_is_that_arch_s_subnet(frames):
    space = ViTSpace(**{**WIDE, "num_classes": (3, 2)})
    supernet = _supernet(space)
    x = _x(space, 3) if frames is None else _x(space, 3, frames)
    archs = [space.largest(), space.arch([0] * len(space.genes))] + [space.sample(random.Random(s)) for s in range(4)]
    shallow = space.arch({**{g: 2 for g in space.genes if g[0] in "hr"}, "embed": 1, "depth": 0})  # layer 1 unused
    for arch in archs + [shallow]:
        alpha = _one_hot(space, arch)
        d = space.embed_dims[arch["embed"]]
        with torch.no_grad():
            for head in (0, 1):
                torch.testing.assert_close(supernet.forward_mixed(x, alpha, embed=d, head=head),
                                           supernet(x, arch, head), rtol=1e-5, atol=1e-5)
    # the default embed dim is the largest
    alpha = _one_hot(space, space.largest())
    with torch.no_grad():
        torch.testing.assert_close(supernet.forward_mixed(x, alpha), supernet(x, space.largest()), rtol=1e-5,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="embed dim 20"):
        supernet.forward_mixed(x, alpha, embed=20)


def test_depth_mixes_the_logits_of_the_candidate_depths_and_layers_past_the_largest_are_not_run():
    space = ViTSpace(**WIDE)
    supernet = _supernet(space)
    arch = space.arch({**{g: 1 for g in space.genes}, "depth": 1})
    alpha = _one_hot(space, arch)
    alpha.unmask(None, "depth", 0)
    with torch.no_grad():
        alpha.depth.copy_(torch.tensor([0.3, -0.4]))
    w = alpha.weights()["depth"]
    x = _x(space, 4)
    with torch.no_grad():
        expected = w[0] * supernet(x, arch.replace(depth=0)) + w[1] * supernet(x, arch)
        torch.testing.assert_close(supernet.forward_mixed(x, alpha, embed=24), expected, rtol=1e-5, atol=1e-5)
        # depth 1 masked away: block 1 is not run (changing it changes nothing)
        alpha.fix(None, "depth", 0)
        out = supernet.forward_mixed(x, alpha, embed=24)
        for p in supernet.blocks[1].parameters():
            p.add_(1.0)
        torch.testing.assert_close(supernet.forward_mixed(x, alpha, embed=24), out)


def test_gradients_reach_every_choice_of_alpha_and_adam_steps_on_alpha_lower_the_validation_loss():
    space = ViTSpace(**TINY)
    supernet = _supernet(space, seed=3)
    alpha = ArchParameters(space)
    x, y = _x(space, 16), torch.randint(0, 3, (16,))
    loss = F.cross_entropy(supernet.forward_mixed(x, alpha, embed=16), y)
    loss.backward()
    for name in ("heads", "ratios", "depth"):
        grad = getattr(alpha, name).grad
        assert grad is not None and (grad != 0).all(), f"{name}: a choice without gradient: {grad}"
    opt = torch.optim.Adam(alpha.parameters(), lr=0.1)
    weights = [p.detach().clone() for p in supernet.parameters()]
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(supernet.forward_mixed(x, alpha, embed=16), y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 1e-3
    assert all(torch.equal(a, b) for a, b in zip(weights, supernet.parameters()))  # only α moved


# -- masks and the argmax arch -----------------------------------------------------------------------------------------
def test_a_removed_choice_has_weight_zero_and_the_others_renormalise():
    space = ViTSpace(**WIDE)
    alpha = ArchParameters(space)
    with torch.no_grad():
        for p in alpha.parameters():
            p.normal_()
    before = alpha.weights()
    alpha.mask(1, "heads", 0)
    alpha.mask(0, "ratio", 2)
    alpha.mask(None, "depth", 1)
    w = alpha.weights()
    assert w["heads"][1, 0] == 0.0 and w["ratios"][0, 2] == 0.0 and w["depth"].tolist() == [1.0, 0.0]
    for t in w.values():
        torch.testing.assert_close(t.sum(-1), torch.ones(t.shape[:-1]))
    rest = before["heads"][1, 1:] / before["heads"][1, 1:].sum()
    torch.testing.assert_close(w["heads"][1, 1:], rest)  # the remaining choices keep their ratios
    torch.testing.assert_close(w["heads"][0], before["heads"][0])  # other rows untouched
    assert alpha.remaining(1, "heads") == [1, 2] and alpha.masked(1, "heads", 0)
    # with_mask removes temporarily and restores
    with alpha.with_mask(1, "heads", 1):
        assert alpha.weights()["heads"][1].tolist() == [0.0, 0.0, 1.0]
    assert alpha.remaining(1, "heads") == [1, 2]
    with pytest.raises(ValueError, match="last one left"):
        alpha.mask(None, "depth", 0)
    with pytest.raises(ValueError, match="unknown kind"):
        alpha.mask(0, "width", 0)


def test_a_fully_one_hot_alpha_gives_its_arch_and_the_state_dict_round_trips_masks():
    space = ViTSpace(**WIDE)
    arch = space.arch({"embed": 1, "depth": 1, "h0": 2, "r0": 0, "h1": 1, "r1": 2})
    alpha = _one_hot(space, arch)
    with torch.no_grad():
        alpha.heads.normal_(), alpha.ratios.normal_()  # logits do not matter once a row is fixed
    w = alpha.weights()
    assert set(w["heads"].flatten().tolist()) == {0.0, 1.0} and set(w["ratios"].flatten().tolist()) == {0.0, 1.0}
    assert alpha.arch(space, 1) == arch
    # unfixed rows: the argmax of the logits, the first on ties
    free = ArchParameters(space)
    with torch.no_grad():
        free.ratios[1, 2] = 1.0
        free.depth[1] = 0.5
    assert free.arch(space, 0) == space.arch({"embed": 0, "depth": 1, "h0": 0, "r0": 0, "h1": 0, "r1": 2})
    loaded = ArchParameters(space)
    loaded.load_state_dict(copy.deepcopy(alpha.state_dict()))
    assert set(alpha.state_dict()) == {"heads", "ratios", "depth", "heads_mask", "ratios_mask", "depth_mask"}
    for k, v in alpha.weights().items():
        torch.testing.assert_close(loaded.weights()[k], v)
    assert loaded.arch(space, 1) == arch
    with pytest.raises(ValueError, match="do not fit space"):
        ArchParameters(ViTSpace(**TINY)).arch(space, 0)


# -- perturbation-based selection --------------------------------------------------------------------------------------
def _input_sensitive(space: ViTSpace, seed: int):
    """A random supernet whose predictions depend on the input: layer norms near the identity, no class token and no
    classifier bias (with every parameter N(0, 0.3) the class token's logits hardly depend on the image)."""
    supernet = _supernet(space, seed)
    with torch.no_grad():
        for name, p in supernet.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1) if name.endswith("weight") else p.zero_()
        supernet.classifier.bias.zero_()
        supernet.cls_token.zero_()
    return supernet


def _labelled_by(supernet, arch, x: torch.Tensor) -> list:
    with torch.no_grad():
        return [(x, supernet(x, arch).argmax(-1))]


def test_selection_keeps_the_choice_whose_removal_drops_accuracy_most_not_the_argmax():
    """Labels are what arch T predicts; every row but one is fixed on T's choice, and α's logits in that row favour
    the other choice (two choices a row). Removing T's choice leaves the other subnet (accuracy < 1), removing the
    other leaves T (accuracy 1): the selection keeps T's choice while α's argmax points elsewhere."""
    space = ViTSpace(**TINY)
    supernet = _input_sensitive(space, seed=5)
    target = space.arch({"embed": 1, "depth": 1, "h0": 1, "r0": 0, "h1": 0, "r1": 1})
    batches = _labelled_by(supernet, target, _x(space, 48))
    for kind, layer in [("depth", None), ("heads", 0), ("ratio", 0), ("heads", 1), ("ratio", 1)]:
        alpha = _one_hot(space, target)
        gene = "depth" if kind == "depth" else f"{kind[0]}{layer}"
        for c in range(space.genes[gene]):
            alpha.unmask(layer, kind, c)
        logits = {"depth": alpha.depth, "heads": alpha.heads, "ratio": alpha.ratios}[kind]
        with torch.no_grad():
            (logits if layer is None else logits[layer])[1 - target[gene]] = 3.0
        assert alpha.arch(space, 1)[gene] != target[gene]  # the argmax disagrees
        arch, [record] = perturbation_select(supernet, alpha, space, batches, 1, order=[(kind, layer)])
        assert arch == target and record["kept"] == target[gene]
        without = record["accuracy_without"]
        assert without[target[gene]] < 1.0 and without[1 - target[gene]] == 1.0


def test_default_order_decides_depth_first_then_the_layers_below_it(monkeypatch):
    """With the accuracy a known function of α (the weight on a target's choices), the default order decides the
    depth, then heads and ratio of each layer below it, and keeps the target; deeper layers' genes are 0."""
    space = ViTSpace(**WIDE)
    target = {"depth": 0, "h0": 1, "r0": 2}  # one layer: layer 1 is past the depth

    def accuracy(supernet, alpha, groups, embed):
        w = alpha.weights()
        return float(w["depth"][target["depth"]] * w["heads"][0, target["h0"]] * w["ratios"][0, target["r0"]])

    monkeypatch.setattr(perturbation, "mixed_top1", accuracy)
    alpha = ArchParameters(space)
    with torch.no_grad():
        alpha.depth[1] = alpha.heads[1, 2] = alpha.ratios[1, 1] = 5.0  # α's argmax: two layers, layer 1 large
    supernet = _supernet(space)
    arch, records = perturbation_select(supernet, alpha, space, [], 0)
    assert arch == space.arch({"embed": 0, "depth": 0, "h0": 1, "r0": 2, "h1": 0, "r1": 0})
    assert [(r["kind"], r["layer"]) for r in records] == [("depth", None), ("heads", 0), ("ratio", 0)]
    assert [r["kept"] for r in records] == [0, 1, 2] and [r["kept_value"] for r in records] == [1, 2, 2.0]
    for r in records:
        assert set(r) == {"kind", "layer", "accuracy", "accuracy_without", "kept", "kept_value"}
        assert r["accuracy_without"][r["kept"]] == min(r["accuracy_without"].values()) == 0.0
    assert set(records[0]["accuracy_without"]) == {0, 1} and set(records[1]["accuracy_without"]) == {0, 1, 2}
    assert records[-1]["accuracy_without"] == {0: pytest.approx(1 / 2), 1: pytest.approx(1 / 2), 2: 0.0}
    assert not any(m.any() for m in (alpha.heads_mask, alpha.ratios_mask, alpha.depth_mask))  # α unchanged
    assert alpha.depth[1] == 5.0


def test_ties_go_to_the_lower_index_and_selection_is_deterministic(monkeypatch):
    space = ViTSpace(**TINY)
    supernet = _supernet(space, seed=2)
    alpha = ArchParameters(space)
    x = _x(space, 32)
    batches = [(x, torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(0)))]
    seen = []
    first = perturbation_select(supernet, alpha, space, batches, 1, progress=seen.append)
    second = perturbation_select(supernet, alpha, space, batches, 1)
    assert first == second and seen == first[1]
    for r in first[1]:
        acc = r["accuracy_without"]
        assert r["kept"] == min(acc, key=lambda c: (acc[c], c))
    with pytest.raises(ValueError, match="no validation samples"):
        perturbation_select(supernet, alpha, space, [(x[:0], torch.zeros(0, dtype=torch.long))], 0)
    # all choices equally good (constant accuracy): every decision keeps choice 0
    monkeypatch.setattr(perturbation, "mixed_top1", lambda *args: 0.5)
    supernet.train()
    arch, records = perturbation_select(supernet, alpha, space, batches, 0)
    assert arch == space.arch([0] * len(space.genes)) and [r["kept"] for r in records] == [0, 0, 0]
    assert supernet.training  # the mode is restored


def test_several_data_sets_score_the_mean_top1_each_through_its_head():
    space = ViTSpace(**{**TINY, "num_classes": (3, 2)})
    supernet = _supernet(space)
    alpha = ArchParameters(space)
    xa, xb = _x(space, 8), _x(space, 8, 2)  # images and clips
    ya, yb = torch.randint(0, 3, (8,)), torch.randint(0, 2, (8,))
    with torch.no_grad():
        top = [(supernet.forward_mixed(x, alpha, head=h).argmax(-1) == y).float().mean().item()
               for h, (x, y) in enumerate([(xa, ya), (xb, yb)])]
    groups = perturbation._groups({"b": [(xb, yb)], "a": [(xa, ya)]}, 0, ["a", "b"])
    assert [h for h, _ in groups] == [0, 1]
    assert mixed_top1(supernet, alpha, groups, 24) == pytest.approx(sum(top) / 2)
    arch, records = perturbation_select(supernet, alpha, space, {"a": [(xa, ya)], "b": [(xb, yb)]}, 1)
    assert records[0]["kind"] == "depth" and arch["embed"] == 1
    with pytest.raises(ValueError, match="no validation batches for data set 'c'"):
        perturbation_select(supernet, alpha, space, {"a": [(xa, ya)]}, 1, names=["a", "c"])
