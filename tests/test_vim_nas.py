"""VIM-NAS [METHODS.md §3]: the optimiser updates only the sampled slice, the schedule warms up linearly, and the
method runs end to end on the embedded joint data (train with α, perturbation selection, constrained evolution,
joint retraining, top-1 per data set)."""
from __future__ import annotations

import math

import pytest
import torch

from nasx.ops import mark_extent
from nasx.training.base import lr_factor
from nasx.training.optim import SlicedAdamW


def test_sliced_adamw_without_extents_is_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 4))
    b = torch.nn.Parameter(a.detach().clone())
    ours = SlicedAdamW([a], lr=1e-2, weight_decay=0.05)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.05)
    for step in range(5):
        g = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_sliced_adamw_moves_only_the_sampled_slice_and_keeps_its_own_step_count():
    """Algorithm 1: 'update the corresponding part of w in w_A while freezing the remaining part'. An entry used on
    its first step gets the full first Adam step (lr · sign(g)) even if other entries were used before."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 6))
    opt = SlicedAdamW([w], lr=0.1, weight_decay=0.05)
    before = w.detach().clone()
    with torch.enable_grad():
        mark_extent(w, (2, 3))
    w.grad = torch.ones(6, 6)
    opt.step()
    moved = (w.detach() != before)
    assert moved[:2, :3].all() and not moved[2:].any() and not moved[:, 3:].any()
    state = opt.state[w]
    assert state["steps"][:2, :3].eq(1).all() and state["steps"][2:].eq(0).all()
    mid = w.detach().clone()
    with torch.enable_grad():
        mark_extent(w, (4, 4))
    w.grad = torch.ones(6, 6)
    opt.step()
    fresh = mid[2:4, :4] * (1 - 0.1 * 0.05) - 0.1 * 1 / (1 + 1e-8)  # the first Adam step of those entries
    assert torch.allclose(w.detach()[2:4, :4], fresh, atol=1e-5)
    assert w.detach()[4:].eq(mid[4:]).all()


def test_learning_rate_warms_up_linearly_for_twenty_steps_then_follows_the_cosine():
    f = lr_factor("cosine", 20, 120)
    assert [round(f(s), 4) for s in (0, 9, 19)] == [0.05, 0.5, 1.0]
    assert f(20) == pytest.approx(1.0) and f(70) == pytest.approx(0.5) and f(120) == pytest.approx(0.0, abs=1e-9)
    g = lr_factor("cosine", 0, 100)  # no warm-up: exactly the schedule nasx always had
    assert all(g(s) == pytest.approx(0.5 * (1 + math.cos(math.pi * s / 100))) for s in (0, 30, 100))


def test_cutmix_pastes_one_box_on_every_frame_and_mixes_targets_by_its_area():
    from nasx.training.mix import mix_batch

    x = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 1, 8, 8).clone()  # 4 clips of 3 frames, value = index
    y = torch.tensor([0, 1, 2, 3])
    mixed, t = mix_batch(x, y, num_classes=4, mixup=0.0, cutmix=1.0, smoothing=0.0,
                         g=torch.Generator().manual_seed(3))
    pasted = (mixed[0] != x[0]).float()  # where clip 0 took clip 3's pixels
    assert pasted.sum() > 0 and (pasted == pasted[0:1]).all()  # the same box on every frame
    lam = 1 - pasted[0].mean().item()
    assert t[0, 0].item() == pytest.approx(lam) and t[0, 3].item() == pytest.approx(1 - lam)
    assert torch.allclose(t.sum(1), torch.ones(4))


def test_mixup_blends_with_the_reversed_batch_and_smooths_targets():
    from nasx.training.mix import mix_batch

    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, t = mix_batch(x, y, num_classes=3, mixup=0.8, cutmix=0.0, smoothing=0.1, g=torch.Generator().manual_seed(0))
    lam = (t[0, 0] - 0.1 / 3) / (0.9)  # y[0]=0; the reversed partner y[5]=2
    assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[5], atol=1e-5)
    assert torch.allclose(t.sum(1), torch.ones(6), atol=1e-6)
    again, _ = mix_batch(x, y, 3, 0.8, 0.0, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(mixed, again)  # a pure function of the generator's seed


def test_random_erasing_replaces_a_rectangle_of_two_to_33_percent():
    from nasx.training.mix import random_erase

    x = torch.zeros(8, 2, 1, 16, 16)  # clips of 2 frames
    out = random_erase(x, prob=1.0, g=torch.Generator().manual_seed(1))
    for i in range(8):
        changed = out[i, 0, 0] != 0
        assert (changed == (out[i, 1, 0] != 0)).all()  # the same box on both frames
        rows, cols = changed.any(1).sum().item(), changed.any(0).sum().item()
        assert 0.02 * 256 * 0.5 <= rows * cols <= 256 / 3 * 1.3 and changed.sum() == rows * cols
    assert random_erase(x, prob=0.0, g=torch.Generator()).eq(0).all()


# -- end to end ------------------------------------------------------------------------------------------------------
TINY_VIT = ["space.embed_dims=[16,24]", "space.depths=[1,2]", "space.num_heads=[1,2]", "space.mlp_ratios=[1.0,2.0]",
            "space.head_dim=8", "space.super_embed_dim=24", "space.patch_size=8", "space.input_size=16",
            "space.drop_path=0.0", "train.epochs=2", "retrain.epochs=1", "search.strategy.generations=2",
            "search.strategy.population=4", "search.strategy.top_k=2", "search.strategy.crossover_size=2",
            "search.strategy.mutation_size=2", "method.alpha_batches=1", "method.selection_batches=1",
            "progress=false"]


def _nasx(args, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nasx", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def _check_results(run_dir, datasets):
    import json

    r = json.loads((run_dir / "results.json").read_text())
    assert r["datasets"] == datasets and set(r["retrain"]["test_top1"]) == set(datasets)
    assert all(0.0 <= v <= 1.0 for v in r["retrain"]["test_top1"].values())
    assert set(r["found"]) == {"selection", "evolution"}
    for f in r["found"].values():
        assert set(f["supernet_val"]) == {"top1", *(f"top1/{n}" for n in datasets)}
    alpha = json.loads((run_dir / "train" / "alpha.json").read_text())["softmax"]
    assert alpha  # α was trained and saved
    return r


@pytest.mark.slow
def test_vim_nas_digits_runs_end_to_end_on_the_embedded_joint_data(tmp_path):
    proc = _nasx(["experiment=vim_nas_digits", *TINY_VIT, "data.datasets.moving_digits.n_train=128",
                  "data.datasets.moving_digits_motion.n_train=128", "data.datasets.moving_digits.frames=4",
                  "data.datasets.moving_digits_motion.frames=4", "space.max_frames=4", "budget=none",
                  f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _check_results(tmp_path / "run", ["digits", "moving_digits", "moving_digits_motion"])
    assert "VIM-NAS" in proc.stdout and r["method"] == "vim_nas"


REAL = {  # tiny versions of the real-data experiments, on fixture trees written in the real formats (DATASETS.md)
    "vim_nas_imagenet_k400": ["imagenet", "k400"],
    "vim_nas_k600": ["k600"],
    "vim_nas_joint": ["imagenet", "k400", "k600", "ssv2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(REAL))
def test_real_data_experiments_run_end_to_end_on_fixture_trees(experiment, tmp_path):
    from test_imagenet import make_imagenet
    from test_video import make_kinetics, make_ssv2

    data = tmp_path / "data"
    make_imagenet(data / "imagenet")
    make_kinetics(data / "kinetics400")
    make_kinetics(data / "kinetics600")
    make_ssv2(data / "ssv2")
    small = {"imagenet": ["batch_size=4", "eval_batch_size=4", "val_fraction=0.25"],
             "k400": ["frames=4", "stride=1", "batch_size=2", "eval_batch_size=2", "val_fraction=0.25",
                      "test_clips=1", "test_crops=1"],
             "ssv2": ["frames=4", "batch_size=2", "eval_batch_size=2", "val_fraction=0.25", "test_crops=1"]}
    small["k600"] = small["k400"]
    overrides = [f"data.datasets.{d}.{kv}" for d in REAL[experiment] for kv in small[d] + ["num_workers=0"]]
    proc = _nasx([f"experiment={experiment}", *TINY_VIT, *overrides, "space.max_frames=4", "data.num_workers=0",
                  "train.warmup_steps=1", "retrain.warmup_steps=1", f"paths.data_dir={data}",
                  f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_results(tmp_path / "run", REAL[experiment])


def _vim_fit(tmp_path, epochs: int, callbacks: list, ckpt: str | None = None):
    import lightning as L
    from test_joint_data import fit_with, joint

    from nasx.spaces.vit import ArchParameters, ViTSpace
    from nasx.training.vim import VIMTraining

    L.seed_everything(0, verbose=False)
    dm = joint(image_only_epochs=1)
    dm.setup()
    space = ViTSpace(name="t", embed_dims=(16, 24), depths=(1, 2), num_heads=(1, 2), mlp_ratios=(1.0, 2.0),
                     head_dim=8, patch_size=4, input_size=8, in_channels=1, num_classes=dm.num_classes, max_frames=3)
    alpha_batches = [[(dm._as_video(x), y) for x, y in m.calibration_batches(2, 16)] for m in dm.datamodules]
    system = VIMTraining(space.supernet(), space, ArchParameters(space), dm.names, seed=0, alpha_batches=alpha_batches,
                         augment={"digits": {"mixup": 0.8, "cutmix": 1.0}, "motion": {"random_erasing": 0.5}},
                         label_smoothing={"digits": 0.1}, optimizer="adamw", lr=1e-3, weight_decay=0.05,
                         warmup_steps=3)
    fit_with(system, dm, tmp_path, epochs, callbacks, ckpt)
    return system


def test_killed_vim_training_resumes_to_the_same_weights_alpha_and_optimizer_states(tmp_path):
    """Weights, α, both optimizers and the schedule: a fit killed after epoch 1 of 3 and resumed from last.ckpt ends
    bit-identical to an uninterrupted one (subnets, α's validation batches and the augmentation draws are functions
    of (seed, step))."""
    from test_joint_data import KillAfterEpoch, Killed

    whole = _vim_fit(tmp_path / "a", 3, [])
    with pytest.raises(Killed):
        _vim_fit(tmp_path / "b", 3, [KillAfterEpoch(1)])
    resumed = _vim_fit(tmp_path / "b", 3, [], ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert whole.global_step == resumed.global_step > 0
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(whole.alpha.heads, torch.zeros_like(whole.alpha.heads))  # α did move


def test_an_alpha_step_moves_alpha_only_and_a_weight_step_only_the_sampled_slice():
    """One VIM-NAS step: the weights outside the sampled subnet and the unused heads' classifiers keep their values;
    α changes and gets a gradient through the mixed forward."""
    from test_joint_data import joint

    from nasx.spaces.vit import ArchParameters, ViTSpace
    from nasx.training.optim import param_groups
    from nasx.training.vim import VIMTraining

    dm = joint(image_only_epochs=0)
    dm.setup()
    space = ViTSpace(name="t", embed_dims=(16, 24), depths=(1, 2), num_heads=(1, 2), mlp_ratios=(1.0, 2.0),
                     head_dim=8, patch_size=4, input_size=8, in_channels=1, num_classes=dm.num_classes, max_frames=3)
    net, alpha = space.supernet(), ArchParameters(space)
    batches = [[(dm._as_video(x), y) for x, y in m.calibration_batches(1, 16)] for m in dm.datamodules]
    system = VIMTraining(net, space, alpha, dm.names, seed=3, alpha_batches=batches, optimizer="adamw", lr=1e-2)
    weights = SlicedAdamW(param_groups(net, 0.05), lr=1e-2)  # what configure_optimizers builds
    alpha_opt = torch.optim.Adam(alpha.parameters(), lr=system.alpha_lr, betas=(0.5, 0.999))
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    alpha_before = alpha.heads.detach().clone()
    arch = system.sampled_arch(0)
    x, y = batches[0][0]
    loss = torch.nn.functional.cross_entropy(net(x, arch, 0), y)
    loss.backward()
    weights.step()
    d, layers = space.decode(arch)
    after = net.state_dict()
    fc1 = after["blocks.0.fc1.weight"]
    assert torch.equal(fc1[layers[0][1]:], before["blocks.0.fc1.weight"][layers[0][1]:])  # hidden units unused
    assert torch.equal(fc1[:, d:], before["blocks.0.fc1.weight"][:, d:])  # input dims beyond the embed dim
    assert torch.equal(after["classifier.heads.1.weight"], before["classifier.heads.1.weight"])  # other head
    # the α step
    val = torch.nn.functional.cross_entropy(net.forward_mixed(x, alpha, embed=d, head=0), y)
    grads = torch.autograd.grad(val, list(alpha.parameters()), allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    for p, g in zip(alpha.parameters(), grads):
        p.grad = g
    alpha_opt.step()
    assert not torch.equal(alpha.heads, alpha_before)
