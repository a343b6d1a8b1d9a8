"""The ranking benchmark's helpers (experiments/mixpath/ranking.py, experiments/data/separation.py): arch sampling
that covers the space's cost range, part files of two processes merged without losing or overwriting a model, and
bootstrap intervals that separate a perfect ranker from a reversed one."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "mixpath"))
sys.path.insert(0, str(ROOT / "experiments" / "data"))

import ranking  # noqa: E402
import separation  # noqa: E402
from nasx.spaces.shufflenet import ShuffleNetSpace  # noqa: E402


@pytest.mark.parametrize("how", ["uniform", "stratified", "even"])
def test_sampled_archs_are_distinct_valid_and_reproducible(how):
    space = ShuffleNetSpace(**ranking.SHUFFLENET_CPU)
    archs = ranking.sample_archs(space, 12, seed=3, how=how)
    assert len({str(a) for a in archs}) == 12
    for a in archs:
        space.validate(a)
    assert [str(a) for a in ranking.sample_archs(space, 12, seed=3, how=how)] == [str(a) for a in archs]
    assert [str(a) for a in ranking.sample_archs(space, 12, seed=4, how=how)] != [str(a) for a in archs]


def test_even_sampling_spans_the_pool_and_climbs_in_cost():
    """'even' picks the pool's cheapest and dearest archs and targets evenly spaced costs between them, so it covers a
    wider cost range than stratified (quantile) sampling, whose draws crowd at the middle of the distribution."""
    space = ranking.s1_cluttered()
    even = ranking.sample_archs(space, 16, seed=0, how="even")
    strat = ranking.sample_archs(space, 16, seed=0, how="stratified")
    ce = np.array([space.cost(a).mflops for a in even])
    cs = np.array([space.cost(a).mflops for a in strat])
    assert np.all(np.diff(ce) >= 0)  # the targets climb and the nearest unused arch follows them
    assert ce.max() - ce.min() > cs.max() - cs.min()
    steps = np.diff(ce)
    assert steps.max() < 3 * np.median(steps)  # evenly spaced, not crowded


def _state(gt: dict) -> dict:
    return {"ground_truth": gt, "predicted": {}, "seconds": {}}


def test_part_files_merge_without_overwriting(tmp_path):
    """Two processes (one per seed) each write a part file; the merge keeps every model, and a value already in the
    main file wins over a part file's."""
    out = tmp_path / "r.json"
    out.write_text(json.dumps(_state({"k:s1": {"a": 0.5}})))
    (tmp_path / "r.part-gt0.json").write_text(json.dumps(_state({"k:s1": {"a": 0.9, "b": 0.6}})))
    (tmp_path / "r.part-gt1.json").write_text(json.dumps(_state({"k:s2": {"a": 0.7, "b": 0.8}})))
    state = ranking._load(out, None)
    assert state["ground_truth"] == {"k:s1": {"a": 0.5, "b": 0.6}, "k:s2": {"a": 0.7, "b": 0.8}}


def test_bootstrap_separates_a_perfect_ranker_from_a_reversed_one():
    rng = np.random.default_rng(0)
    gt = rng.random(20)
    preds = {"shadow,after": gt + 0.01 * rng.random(20), "plain,after": -gt,
             "shadow,before": gt, "plain,before": gt.copy()}
    boot = ranking._bootstrap(gt, preds, resamples=300, seed=0)
    lo, hi = boot["ci95"]["shadow,after"]
    assert lo > 0.5 and hi <= 1.0
    assert boot["ci95"]["plain,after"][1] < -0.5
    after = boot["paired"]["after"]
    assert after["ci95"][0] > 1.0 and after["p_one_sided_diff_le_0"] == 0.0
    before = boot["paired"]["before"]  # identical predictions: the paired difference is exactly 0
    assert before["observed"] == 0.0 and before["ci95"] == [0.0, 0.0]


def test_separation_summarises_s1_archs(tmp_path, monkeypatch):
    """separation.py reads the ground truth of either CPU space: seed-to-seed τ, spread and the per-arch costs."""
    space = ranking.s1_cluttered()
    archs = [str(a) for a in ranking.sample_archs(space, 8, seed=0, how="even")]
    seed1 = {a: 0.6 + 0.02 * i for i, a in enumerate(archs)}
    seed2 = {a: 0.61 + 0.02 * i for i, a in enumerate(archs)}
    seed2[archs[0]], seed2[archs[1]] = seed2[archs[1]], seed2[archs[0]]  # one discordant pair of 28
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_state({"5e:s1": seed1, "5e:s2": seed2})))
    monkeypatch.setattr(sys, "argv", ["separation.py", "--json", str(path), "--resamples", "200"])
    separation.main()
    summary = json.loads((tmp_path / "gt_summary.json").read_text())
    assert summary["archs"] == 8
    assert summary["seed_tau"] == pytest.approx((27 - 1) / 28)  # τ = (concordant − discordant) / pairs
    # seed means 0.605 + 0.02 i, but archs 0 and 1 both average 0.615: spread 0.745 − 0.615
    assert summary["spread_of_seed_mean"] == pytest.approx(0.13)
    mflops = [r["mflops"] for r in summary["per_arch"]]
    assert mflops == pytest.approx([space.cost(space.validate(a_)).mflops for a_ in
                                    ranking.sample_archs(space, 8, seed=0, how="even")])
    assert (tmp_path / "gt.png").stat().st_size > 0
