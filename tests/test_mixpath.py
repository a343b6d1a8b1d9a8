"""MixPath (METHODS.md §5): multi-path layers with shadow BN, the spaces S1–S4, and the training sampler."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasx.arch import Arch
from nasx.errors import ArchError, ConfigError
from nasx.ops.multipath import ShadowBN, path_subsets
from nasx.spaces.mixpath import MixPathSpace
from nasx.spaces.mixpath_cell import MixPathCellSpace
from nasx.spaces.mixpath_ib import MixPathIBSpace
from nasx.spaces.mixpath_mixconv import MixPathMixConvSpace
from nasx.training.optim import SlicedSGD, param_groups

CPU = {  # family, geometry
    "s1": (MixPathIBSpace, dict(widths=[8, 12, 12, 16, 16, 16, 24, 24, 24, 32, 32, 40],
                                strides=[1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1], stem_channels=8, last_channels=64,
                                max_paths=4)),
    "s2": (MixPathIBSpace, dict(widths=[8, 12, 16, 16], strides=[2, 1, 2, 1], expansions=[6], max_paths=2,
                                stem_channels=8, last_channels=32, stem_stride=2)),
    "s3": (MixPathMixConvSpace, dict(widths=[8, 12, 16, 16], strides=[2, 1, 2, 1], expansions=[6],
                                     stem_channels=8, last_channels=32, stem_stride=2)),
    "s4": (MixPathCellSpace, dict(widths=[8, 16, 32], stem_channels=8)),
}


def make(name: str, **kw) -> MixPathSpace:
    family, preset = CPU[name]
    return family(name=name, input_size=16, in_channels=3, num_classes=10, **{**preset, **kw})


@pytest.mark.parametrize("m, per_layer", [(1, 8), (2, 36), (3, 92), (4, 162)])
def test_s1_has_the_seeds_choice_count_per_layer_for_each_m(m, per_layer):
    """Tab. 1: S1 with m = 1..4 has 8^12, 36^12, 92^12, 162^12 architectures."""
    space = make("s1", max_paths=m)
    assert list(space.genes.values()) == [per_layer] * 12


def test_s2_s3_s4_have_the_seeds_sizes():
    """Tab. 1: S2 10 choices per layer (m = 2 of 4 kernels), S3 256 per layer (4 groups × 4 kernels), S4 255."""
    assert set(make("s2").genes.values()) == {10}
    s3 = make("s3")
    assert len(s3.genes) == 4 * 4 and set(s3.genes.values()) == {4}  # 4^4 = 256 per layer
    s4 = make("s4")
    assert sum(1 for c in __import__("itertools").product(range(4), repeat=4) if any(c)) == 255
    assert len(s4._cells) == 255


def test_path_subsets_are_the_distinct_non_empty_subsets_up_to_m():
    subsets = path_subsets(4, 2)
    assert len(subsets) == len(set(subsets)) == 10 and all(1 <= len(s) <= 2 for s in subsets)


def test_shadow_bn_picks_its_bn_by_the_number_of_active_paths():
    sbn = ShadowBN(4, 3, shadow=True).train()
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    sbn(x, 2)
    moved = [not torch.equal(bn.running_mean, torch.zeros(4)) for bn in sbn.bns]
    assert moved == [False, True, False]
    assert sbn.pick(3) is sbn.bns[2]
    plain = ShadowBN(4, 3, shadow=False)
    assert len(plain.bns) == 1 and plain.pick(1) is plain.pick(3)
    with pytest.raises(ValueError, match="allows 1..3"):
        sbn.pick(4)


def test_a_layer_uses_its_count_bn_so_sums_of_k_paths_keep_separate_statistics():
    """Lemma 3.1: the sum of k paths has ~k× the mean; the shadow BNs learn these different statistics."""
    space = make("s1", max_paths=4)
    net = space.supernet().train()
    layer = net.layers[0]
    x = torch.randn(16, 8, 16, 16)
    with torch.no_grad():
        for paths in [(0,), (0, 1), (0, 1, 2)]:
            for _ in range(20):
                layer(x, paths)
    var = [bn.running_var.mean().item() for bn in layer.sbn.bns[:3]]
    assert var[0] < var[1] < var[2]
    assert torch.equal(layer.sbn.bns[3].running_var, torch.ones_like(layer.sbn.bns[3].running_var))


@pytest.mark.parametrize("name", ["s1", "s2", "s3", "s4"])
@pytest.mark.parametrize("seed", [0, 1])
def test_extracted_model_equals_the_supernet_in_eval_mode_and_costs_what_the_space_says(name, seed):
    space = make(name)
    net = space.supernet()
    rng = random.Random(seed)
    x = torch.randn(4, 3, 16, 16)
    net.train()
    for _ in range(3):  # move BN statistics away from their initial values
        net(x, space.train_sample(rng))
    net.eval()
    for arch in (space.train_sample(rng), space.sample(rng)):
        static = net.extract(arch).eval()
        with torch.no_grad():
            assert torch.equal(net(x, arch), static(x))
            with FlopCounterMode(display=False) as counter:
                static(x[:1])
        cost = space.cost(arch)
        assert cost.mflops == pytest.approx(counter.get_total_flops() / 2 / 1e6, rel=1e-9)
        assert cost.params == sum(p.numel() for p in static.parameters())


def test_training_sampler_draws_m_uniformly_then_distinct_paths():
    """[ref] per layer m′ ~ U{1..m}, then m′ distinct paths."""
    space = make("s1", max_paths=4)
    rng = random.Random(0)
    counts = Counter()
    for _ in range(500):
        for paths in space.layer_choices(space.train_sample(rng)):
            assert len(set(paths)) == len(paths)
            counts[len(paths)] += 1
    total = sum(counts.values())
    assert set(counts) == {1, 2, 3, 4}
    assert all(abs(counts[k] / total - 0.25) < 0.03 for k in counts)  # uniform over m′, not over subsets (70/162 at 4)


def test_unsampled_paths_get_no_update_not_even_from_momentum_or_weight_decay():
    space = make("s1", max_paths=2)
    net = space.supernet().train()
    opt = SlicedSGD(param_groups(net, 1e-2), lr=0.1, momentum=0.9, nesterov=True)
    idx = {s: i for i, s in enumerate(space.subsets)}
    a = space.arch([idx[(0,)]] * 12)  # expansion 3, kernel 3 everywhere
    b = space.arch([idx[(7,)]] * 12)  # expansion 6, kernel 9 everywhere
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for arch in (a, b):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x, arch), y).backward()
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        opt.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("layers.0.dw.1.3") for n in changed)  # b's path trained
    assert not any(n.startswith(("layers.0.dw.0.", "layers.0.pw.0", "layers.0.proj.0")) for n in changed)


def test_the_cell_space_rejects_all_nodes_off_and_never_proposes_it():
    space = make("s4")
    bad = Arch(space.name, tuple((g, 0) for g in space.genes))
    with pytest.raises(ArchError, match="node0..node3 are all 'off'"):
        space.validate(bad)
    rng = random.Random(0)
    for _ in range(300):
        a = space.sample(rng)
        assert any(space.mutate(a, rng, 0.9).choices()) and any(space.crossover(a, bad, rng).choices())


def test_s4_shares_one_cell_across_its_nine_cells():
    space = make("s4")
    arch = space.sample(random.Random(3))
    choices = space.layer_choices(arch)
    assert len(choices) == 9 and len(set(choices)) == 1


def test_paper_presets_hold_the_seeds_geometry():
    from conftest import compose

    s1 = compose(["space=mixpath_s1"], "/tmp/unused").space
    assert list(s1.widths) == [48, 48, 96, 96, 96, 192, 192, 192, 256, 256, 320, 320]
    assert [i for i, s in enumerate(s1.strides) if s == 2] == [2, 5]
    assert (s1.stem_channels, s1.last_channels, list(s1.kernels), list(s1.expansions)) == (32, 1280, [3, 5, 7, 9],
                                                                                           [3, 6])
    s2 = compose(["space=mixpath_s2"], "/tmp/unused").space
    assert len(s2.widths) == 18 and s2.max_paths == 2 and len(s2.expansions) == 1
    s3 = compose(["space=mixpath_s3"], "/tmp/unused").space
    assert len(s3.widths) == 18 and s3.groups == 4
    assert s3._target_ == "nasx.spaces.mixpath_mixconv.MixPathMixConvSpace"
    s4 = compose(["space=mixpath_s4"], "/tmp/unused").space
    assert s4._target_ == "nasx.spaces.mixpath_cell.MixPathCellSpace" and list(s4.pool_after) == [2, 5]


MP_TINY = ["train.epochs=1", "search.strategy.generations=2", "search.strategy.population=4", "search.k=2",
           "retrain.epochs=1", "search.bn_batches=1", "progress=false"]


@pytest.mark.slow
def test_mixpath_digits_runs_every_stage_and_writes_front_plot_and_table(tmp_path):
    import json

    from conftest import compose

    from nasx.runner import run

    results = run(compose(["experiment=mixpath_digits", *MP_TINY], tmp_path))
    front = json.loads((tmp_path / "search" / "front.json").read_text())
    curve = json.loads((tmp_path / "search" / "hypervolume.json").read_text())
    assert front["evaluations"] == 4 * 2 + 4 and len(front["chosen"]) == 2
    assert [p["gen"] for p in curve] == [0, 1] and all(p["nsga2"] > 0 for p in curve)
    # random search saw as many archs as NSGA-II
    random_records = [json.loads(line) for line in (tmp_path / "search" / "random" / "history.jsonl").open()]
    assert len({r["arch_str"] for r in random_records}) >= front["evaluations"]
    assert (tmp_path / "search" / "pareto.png").stat().st_size > 10_000
    assert len(results["models"]) == 2 and all(0 <= m["test_top1"] <= 1 for m in results["models"])
    assert results["models"][0]["mflops"] <= results["models"][1]["mflops"]
    assert "hypervolume NSGA-II" in (tmp_path / "report.md").read_text()
    again = run(compose(["experiment=mixpath_digits", *MP_TINY], tmp_path))  # every stage finished: reused
    assert again["models"] == results["models"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["mixpath_s1_cifar10", "mixpath_s2_imagenet", "mixpath_s3_imagenet",
                                        "mixpath_s4_cifar10"])
def test_paper_presets_run_end_to_end_on_real_format_fixtures(tmp_path, experiment):
    """The paper's spaces at full width (at 16×16 / 32×32 input for CPU time) on fixture files written in the real
    CIFAR-10 pickle and ImageNet folder formats."""
    from conftest import compose

    from nasx.runner import run

    data = tmp_path / "data"
    extra = ["data.batch_size=32", "space.input_size=16"]
    if "cifar10" in experiment:
        from test_nss import _write_cifar

        _write_cifar(data / "cifar10", "cifar10", n=24)
    else:
        from test_imagenet import make_imagenet

        make_imagenet(data / "imagenet", layout="devkit")
        extra = ["data.batch_size=4", "data.eval_batch_size=6", "data.val_fraction=0.25", "data.num_workers=0",
                 "space.input_size=32", "budget=none"]
    cfg = compose([f"experiment={experiment}", f"paths.data_dir={data}", *MP_TINY, *extra], tmp_path / "run")
    assert cfg.method._target_ == "nasx.methods.mixpath.MixPath" and cfg.search.strategy._target_.endswith("NSGA2")
    results = run(cfg)
    assert results["space"] == experiment.split("_")[0] + "_" + experiment.split("_")[1]
    assert len(results["models"]) == 2


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
    space = make("s1", zero_init_residual=True)
    net = space.supernet().train()
    residual = [i for i, layer in enumerate(net.layers) if layer.residual]
    assert residual, "the CPU S1 has residual layers"
    layer = net.layers[residual[0]]
    h = torch.randn(2, layer.sbn.bns[0].num_features, 16, 16)
    assert torch.equal(layer(h, (0, 3)), h)
    assert not make("s1").supernet().layers[residual[0]].sbn.bns[0].weight.eq(0).any()  # off by default


@pytest.mark.parametrize("name", ["s1", "s3", "s4"])
def test_last_channels_is_the_width_of_the_embedding_the_classifier_reads(name):
    """BCT sizes the gallery's embedding by ``space.last_channels``; S4 has no last conv, so it is the last cell's."""
    space = make(name)
    net = space.supernet().eval()
    with torch.no_grad():
        features = net.forward_features(torch.randn(2, 3, 16, 16), space.sample(random.Random(0)))
    assert features.shape == (2, space.last_channels) == (2, net.classifier[-1].in_features)


def test_the_mixed_kernel_space_refuses_more_than_one_active_path():
    with pytest.raises(ConfigError, match="m = 1"):
        make("s3", max_paths=2)
