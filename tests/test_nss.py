"""NSS search: Θ gets gradients through the Gumbel-weighted masks, schedules follow the config, the FLOPs penalty
pushes the expected cost under the target, and the Table-1 protocol is bounded."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import compose
from nasx import artifacts
from nasx.errors import ConfigError
from nasx.search.elite import elite_space, sample_until_within


@pytest.fixture(scope="module")
def space():
    from nasx.spaces.nss_resnet import NSSSpace

    return NSSSpace(name="nss_cpu", max_depth=4, max_width=32, depth_step=2, width_step=8, stem_channels=8,
                    input_size=16, in_channels=1, num_classes=10)


class _Trainer:  # the few trainer attributes the schedules read
    max_epochs, num_training_batches, estimated_stepping_batches = 10, 20, 200


def _system(space, **kw):
    from nasx.training.nss import NSSTraining

    s = NSSTraining(space.supernet(), space, target_mflops=kw.pop("target", 1.0), seed=0, **kw)
    s._trainer = _Trainer()
    return s


def test_temperature_anneals_linearly_from_5_to_0001(space):
    s = _system(space, tau_start=5.0, tau_end=0.001)
    assert s.temperature(0.0) == pytest.approx(5.0)
    assert s.temperature(0.5) == pytest.approx((5.0 + 0.001) / 2)
    assert s.temperature(1.0) == pytest.approx(0.001)
    assert s.temperature(1.7) == pytest.approx(0.001)


def test_warmup_enable_probability_anneals_to_zero_then_stays_off(space):
    s = _system(space, warmup_epochs=4)
    assert s.warmup_enable_prob(0, 0, 20) == pytest.approx(1.0)
    assert s.warmup_enable_prob(2, 0, 20) == pytest.approx(0.5)
    assert s.warmup_enable_prob(3, 19, 20) == pytest.approx(1 - (3 + 19 / 20) / 4)
    assert s.warmup_enable_prob(4, 0, 20) == 0.0 and s.warmup_enable_prob(9, 5, 20) == 0.0


def test_warmup_masks_enable_extra_channels_and_blocks_with_probability_p(space):
    s = _system(space)
    full = [s.warmup_masks(k, 1.0) for k in range(5)]
    assert all(bool((w == 1).all()) for widths, _ in full for w in widths)  # p = 1: every channel on
    assert all(int(d.argmax()) == space.max_depth - 1 for _, depths in full for d in depths)  # and every block
    rng_free = [s.warmup_masks(k, 0.0) for k in range(20)]
    assert any(float(w.sum()) < space.max_width for widths, _ in rng_free for w in widths)  # p = 0: the arch alone


def test_gradients_reach_theta_through_the_masks(space):
    s = _system(space)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    g = s.gumbel_weights(0, tau=1.0)
    widths, depths = s.soft_masks(g, s.candidate_masks(0))
    F.cross_entropy(s.model.forward_soft(x, widths, depths), y).backward()
    assert s.theta.grad is not None and s.theta.grad.abs().sum() > 0
    assert all(s.theta.grad[i].abs().sum() > 0 for i in range(3))  # every stage's logits


def _path_candidates(space, width: int, depth: int):
    """Candidate masks in which every candidate space of every stage is the same (width, depth) path."""
    widths = torch.zeros(3, space.n_spaces, space.max_width)
    depths = torch.zeros(3, space.n_spaces, space.max_depth)
    widths[..., :width] = 1.0
    depths[..., depth - 1] = 1.0
    return widths, depths


def test_theta_step_leaves_no_extents_for_the_next_weight_step(space):
    """Weights outside the next weight step's own path get no momentum and no weight decay from the Θ step's
    forward on the previous (wider, deeper) path."""
    s = _system(space, warmup_epochs=0, weight_decay=0.1, momentum=0.9, lr=0.1)
    s._trainer.current_epoch = 0
    [opt_w, opt_t], _ = s.configure_optimizers()
    s.optimizers = lambda: (opt_w, opt_t)
    s.lr_schedulers = lambda: None
    s.manual_backward = lambda loss: loss.backward()
    s.log_dict = lambda *a, **k: None
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(8, 1, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    s._val_batches = iter([(torch.randn(8, 1, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))] * 2)
    narrow = 8  # == stem_channels: every max_width dimension at index >= 8 is off the narrow path
    paths = {0: _path_candidates(space, space.max_width, space.max_depth), 1: _path_candidates(space, narrow, 1)}
    s.candidate_masks = lambda step: paths[step]
    s.training_step(batch, 0)  # weights and Θ on the full path: momentum everywhere, extents of the Θ forward
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    bufs = {n: opt_w.state[p]["momentum_buffer"].clone() for n, p in s.model.named_parameters()}
    assert all(float(b.abs().sum()) > 0 for n, b in bufs.items() if n.startswith("stages.0.0.conv"))
    s.training_step(batch, 1)  # weights and Θ on width 8, depth 1 in every stage

    def outside(t: torch.Tensor) -> torch.Tensor:
        """Entries with an index >= ``narrow`` along a leading max-width dimension."""
        mask = torch.zeros(t.shape, dtype=torch.bool)
        for dim in range(min(2, t.ndim)):
            if t.shape[dim] == space.max_width:
                mask |= (torch.arange(t.shape[dim]) >= narrow).view([-1 if d == dim else 1 for d in range(t.ndim)])
        return mask

    checked = 0
    for n, p in s.model.named_parameters():
        off = outside(p) if not n.startswith("stages.") or n.split(".")[2] == "0" else torch.ones_like(p, dtype=bool)
        if off.any():
            checked += 1
            assert torch.equal(p.detach()[off], before[n][off]), f"{n} moved off the path"
            assert torch.equal(opt_w.state[p]["momentum_buffer"][off], bufs[n][off]), f"{n}'s momentum moved"
    assert checked >= 3 * 4 * 3  # every stage's blocks and the classifier were checked
    on = s.model.stages[1][0].conv1.weight.detach()[:narrow, :narrow]
    assert not torch.equal(on, before["stages.1.0.conv1.weight"][:narrow, :narrow])  # the path itself trained


def test_flops_penalty_is_zero_under_target_and_pushes_expected_cost_down_above_it(space):
    big = _system(space, target=space.min_cost().mflops * 1.0001, penalty=1.0)
    small = _system(space, target=1e6, penalty=1.0)
    assert float(small.flops_penalty().detach()) == 0.0
    p = big.flops_penalty()
    assert float(p.detach()) > 0
    p.backward()
    before = float(big.expected_mflops().detach())
    with torch.no_grad():
        big.theta -= 10.0 * big.theta.grad
    assert float(big.expected_mflops().detach()) < before


def test_target_below_the_smallest_network_fails_fast(space):
    from nasx.training.nss import NSSTraining

    lo = space.min_cost().mflops
    with pytest.raises(ConfigError, match=f"below the smallest network of space 'nss_cpu' \\({lo:.3f} MFLOPs\\)"):
        NSSTraining(space.supernet(), space, target_mflops=lo / 2)


def test_elite_space_is_the_argmax_per_stage():
    assert elite_space([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]) == (1, 0, 2)


def test_protocol_counts_samples_and_is_bounded(space):
    target = 1.0
    found = sample_until_within(space, target, 0.1, random.Random(0))
    assert found["found"] and abs(found["mflops"] - target) <= 0.1 * target
    assert found["delta_pct"] == pytest.approx(100 * abs(found["mflops"] - target) / target)
    # an elite space whose networks all cost more than the target never gets there: bounded, reported as not found
    heavy = tuple(space.n_spaces - 1 for _ in range(3))
    miss = sample_until_within(space, space.min_cost().mflops * 1.01, 0.01, random.Random(0), spaces=heavy,
                               max_samples=50)
    assert not miss["found"] and miss["samples"] == 50


# -- end to end -------------------------------------------------------------------------------------------------------
NSS_TINY = ["train.epochs=2", "train.warmup_epochs=1", "retrain.epochs=1", "search.plot_samples=3",
            "search.bn_batches=1", "progress=false"]


@pytest.mark.slow
def test_nss_digits_runs_every_stage_and_writes_the_table(tmp_path):
    from nasx.runner import run

    results = run(compose(["experiment=nss_digits", *NSS_TINY], tmp_path))
    assert [r["target_mflops"] for r in results["rows"]] == [0.5, 1.0, 2.0]
    for row in results["rows"]:
        for source in ("elite", "expanded"):
            assert row[source]["samples"] >= 1 and row[source]["test_error_pct"] is not None
    for rel in ("search/elite_spaces.json", "search/protocol.json", "search/elite.png", "results.json", "report.md",
                "train/target_0.5/space_probs.json", "search/protocol/target_1/elite/history.jsonl",
                "search/protocol/target_1/expanded/state.pt"):
        assert (tmp_path / rel).is_file(), rel
    protocol = artifacts.read_json(tmp_path / "search" / "protocol.json")["target_1"]["expanded"]
    draws = artifacts.read_jsonl(tmp_path / "search" / "protocol" / "target_1" / "expanded" / "history.jsonl")
    assert sum(1 for r in draws if r["gen"] == 0) == protocol["samples"]  # every draw of the first run is logged
    probs = artifacts.read_json(tmp_path / "train" / "target_1" / "space_probs.json")["probs"]
    assert len(probs) == 3 and all(abs(sum(p) - 1) < 1e-5 for p in probs)
    assert "| average |" in (tmp_path / "report.md").read_text()


def test_bootstrap_errors_resamples_images_shared_by_cells_and_networks_within_a_cell():
    from nasx.methods.nss import bootstrap_errors

    n = 200
    g = torch.Generator().manual_seed(0)
    half = torch.rand(3, n, generator=g) < 0.5
    cells = [torch.ones(2, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool), half, half.clone()]
    reps = bootstrap_errors(cells, 300, seed=1, chunk=64)  # 300 is not a multiple of the chunk
    assert reps.shape == (300, 4)
    assert bool((reps[:, 0] == 1).all()) and bool((reps[:, 1] == 0).all())
    assert torch.equal(reps, bootstrap_errors(cells, 300, seed=1))  # a function of the seed
    assert reps[:, 2].mean().item() == pytest.approx(half.float().mean().item(), abs=0.02)
    # the networks of a cell are resampled: one that is always wrong beside one never wrong spreads the replicates
    mixed = torch.stack([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    spread = bootstrap_errors([mixed], 400, seed=0)[:, 0]
    assert set(spread.unique().tolist()) == {0.0, 0.5, 1.0}
    with pytest.raises(ValueError, match="same N test images"):
        bootstrap_errors([half, torch.zeros(1, n + 1, dtype=torch.bool)], 10, seed=0)


@pytest.mark.parametrize("override, message", [
    ("search.trained_networks=0", r"search.trained_networks .* must be a positive integer, got 0"),
    ("search.trained_networks=21", r"search.trained_networks \(21\) cannot exceed search.strategy.repeats \(20\)"),
    ("search.bootstrap=-1", r"search.bootstrap .* must be an integer >= 0, got -1"),
])
def test_trained_networks_and_bootstrap_are_checked_before_any_work(tmp_path, override, message):
    from nasx.runner import run

    with pytest.raises(ConfigError, match=message):
        run(compose(["experiment=nss_digits", override, *NSS_TINY], tmp_path))
    assert not (tmp_path / "config.yaml").exists()


def test_nss_protocol_defaults_keep_one_network_per_cell_and_no_intervals(tmp_path):
    cfg = compose(["experiment=nss_digits"], tmp_path)
    assert cfg.search.trained_networks == 1 and cfg.search.bootstrap == 0


@pytest.mark.slow
def test_several_networks_per_cell_are_trained_averaged_and_bootstrapped(tmp_path):
    from nasx.runner import run

    results = run(compose(["experiment=nss_digits", *NSS_TINY, "train.targets=[1.0]", "search.strategy.repeats=3",
                           "search.trained_networks=2", "search.bootstrap=200"], tmp_path))
    protocol = artifacts.read_json(tmp_path / "search" / "protocol.json")["target_1"]
    row = results["rows"][0]
    for source in ("elite", "expanded"):
        cell, first, second = row[source], tmp_path / "retrain" / f"target_1_{source}", \
            tmp_path / "retrain" / f"target_1_{source}_1"
        runs = protocol[source]["runs"]
        assert len(runs) == 3 and runs[0]["arch"] == protocol[source]["arch"]
        done = [artifacts.read_json(d / "result.json") for d in (first, second)]
        assert [d["arch"] for d in done] == [runs[0]["arch"], runs[1]["arch"]]
        assert all(len(d["wrong"]) == round(d["test_error"] * d["n_test"]) for d in done)
        assert cell["test_errors_pct"] == pytest.approx([100 * d["test_error"] for d in done])
        assert cell["test_error_pct"] == pytest.approx(sum(cell["test_errors_pct"]) / 2)
        lo, hi = cell["test_error_ci"]
        assert 0 <= lo <= hi <= 100 and lo <= cell["test_error_pct"] + 1e-9 and cell["test_error_pct"] <= hi + 1e-9
    assert row["error_diff_pct"] == pytest.approx(row["elite"]["test_error_pct"] - row["expanded"]["test_error_pct"])
    assert results["bootstrap"]["resamples"] == 200 and results["trained_networks"] == 2
    assert "elite − expanded error" in (tmp_path / "report.md").read_text()


def _write_cifar(root, variant: str, n: int = 40):
    rng = np.random.default_rng(0)
    if variant == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(d / name, "wb") as f:
                pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                             b"labels": rng.integers(0, 10, n).tolist()}, f)
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        for name in ("train", "test"):
            with open(d / name, "wb") as f:
                pickle.dump({b"data": rng.integers(0, 256, (n * 5, 3072), dtype=np.uint8),
                             b"fine_labels": rng.integers(0, 100, n * 5).tolist(),
                             b"coarse_labels": rng.integers(0, 20, n * 5).tolist()}, f)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_nss_paper_presets_run_end_to_end_on_cifar_fixtures(tmp_path, variant):
    """The paper's setting (expanded space d ≤ 16, w ≤ 512), shrunk only in epochs and targets, on real-format
    fixture pickles."""
    from nasx.runner import run

    _write_cifar(tmp_path / "data" / variant, variant)
    cfg = compose([f"experiment=nss_{variant}", f"paths.data_dir={tmp_path / 'data'}", *NSS_TINY,
                   "train.targets=[200]", "space.max_depth=4", "space.max_width=64", "space.depth_step=2",
                   "space.width_step=32", "data.batch_size=32", "search.plot_samples=2"], tmp_path / "run")
    assert cfg.space.name == "nss_expanded" and cfg.train.tau_start == 5.0 and cfg.train.tau_end == 0.001
    results = run(cfg)
    assert results["rows"][0]["target_mflops"] == 200
    assert (tmp_path / "run" / "report.md").exists()


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_nss_paper_presets_hold_the_papers_settings(tmp_path, variant):
    cfg = compose([f"experiment=nss_{variant}"], tmp_path)
    assert (cfg.space.max_depth, cfg.space.max_width, cfg.space.stem_channels) == (16, 512, 16)
    assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.tau_start, cfg.train.tau_end) == (50, 15, 5.0, 0.001)
    assert cfg.data.batch_size == 64 and cfg.method._target_ == "nasx.methods.nss.NSS" and cfg.data.variant == variant


def test_cli_refuses_a_target_below_the_smallest_network_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "nasx", "experiment=nss_digits", "train.targets=[0.001,1]",
                           f"paths.output_dir={tmp_path}/out"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "offline"})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "train.targets: 0.001 MFLOPs is below the smallest network of space 'nss_cpu'" in lines[0]
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


@pytest.mark.slow
def test_killed_nss_training_resumes_with_only_the_unfinished_target(tmp_path):
    from nasx.runner import run

    cfg = compose(["experiment=nss_digits", *NSS_TINY, "stages=[train]"], tmp_path)
    run(cfg)
    first = tmp_path / "train" / "target_0.5" / "last.ckpt"
    mtime = first.stat().st_mtime_ns
    probs = artifacts.read_json(tmp_path / "train" / "target_2" / "space_probs.json")
    (tmp_path / "train" / "target_2" / "space_probs.json").unlink()  # killed before the last target finished
    run(cfg)
    assert first.stat().st_mtime_ns == mtime  # finished targets are not searched again
    again = artifacts.read_json(tmp_path / "train" / "target_2" / "space_probs.json")
    assert again["elite"] == probs["elite"]
