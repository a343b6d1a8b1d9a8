"""The search loop enforces the budget, never evaluates a candidate twice, persists every record, and a run killed
mid-generation resumes to exactly the history and best arch of an uninterrupted run."""
from __future__ import annotations

import json
import random

import pytest

from nasx import artifacts
from nasx.arch import Arch, Budget
from nasx.evaluation.base import Evaluator
from nasx.rewards import WeightedSum
from nasx.search import Evolution, RandomSearch
from nasx.search.loop import run_search


class Killed(Exception):
    pass


class FakeEvaluator(Evaluator):
    """A deterministic score per arch (a hidden target's closeness); counts calls; can die after N calls."""

    def __init__(self, space, die_after: int | None = None):
        self.target = space.sample(random.Random("target")).choices()
        self.calls: list[Arch] = []
        self.die_after = die_after

    def evaluate(self, arch):
        if self.die_after is not None and len(self.calls) >= self.die_after:
            raise Killed()
        self.calls.append(arch)
        match = sum(a == t for a, t in zip(arch.choices(), self.target)) / len(self.target)
        return {"top1": match, "top5": 1.0, "loss": 1 - match}


def _strategy(space, budget, seed=0, kind=Evolution):
    if kind is RandomSearch:
        return RandomSearch(space, budget, seed, generations=4, population=8)
    return Evolution(space, budget, seed, generations=5, population=10, top_k=3, crossover_size=6)


def test_every_record_is_persisted_with_arch_metrics_reward_cost_and_generation(tiny_space, tmp_path):
    budget = Budget(mflops=tiny_space.min_cost().mflops * 1.5)
    result = run_search(_strategy(tiny_space, budget), tiny_space, FakeEvaluator(tiny_space),
                        WeightedSum({"top1": 1.0}), budget, tmp_path, progress=False)
    records = artifacts.read_jsonl(tmp_path / "history.jsonl")
    assert len(records) == 5 * 10 and records == json.loads(json.dumps(result.records))
    for r in records:
        arch = tiny_space.validate(Arch.from_dict(r["arch"]))
        assert r["mflops"] == pytest.approx(tiny_space.cost(arch).mflops) and r["mflops"] <= budget.mflops
        assert r["params"] == tiny_space.cost(arch).params
        assert r["reward"] == pytest.approx(r["metrics"]["top1"])
        assert 0 <= r["gen"] < 5
    best = artifacts.read_json(tmp_path / "best.json")
    assert best["reward"] == max(r["reward"] for r in records)
    assert (tmp_path / "state.pt").exists()


def test_a_candidate_is_never_evaluated_twice(tiny_space, tmp_path):
    budget = Budget()
    evaluator = FakeEvaluator(tiny_space)
    strategy = _strategy(tiny_space, budget)
    result = run_search(strategy, tiny_space, evaluator, WeightedSum({"top1": 1.0}), budget, tmp_path,
                        progress=False)
    assert len(evaluator.calls) == len(set(evaluator.calls)) == result.evaluations
    assert sum(not r["cached"] for r in result.records) == len(evaluator.calls)


def test_loop_refuses_an_over_budget_candidate_without_evaluating_it(tiny_space, tmp_path):
    rng = random.Random(0)
    median = sorted(tiny_space.cost(tiny_space.sample(rng)).mflops for _ in range(201))[100]
    budget = Budget(mflops=median)
    strategy = _strategy(tiny_space, Budget(), kind=RandomSearch)  # a strategy that ignores the budget
    evaluator = FakeEvaluator(tiny_space)
    result = run_search(strategy, tiny_space, evaluator, WeightedSum({"top1": 1.0}), budget, tmp_path,
                        progress=False)
    over = [r for r in result.records if r.get("status") == "over_budget"]
    assert over and all(r["reward"] is None and r["metrics"] is None for r in over)
    assert all(tiny_space.cost(a).mflops <= budget.mflops for a in evaluator.calls)
    assert result.best["mflops"] <= budget.mflops


def test_no_candidate_inside_the_budget_is_a_clear_error(tiny_space, tmp_path):
    from nasx.errors import NasxError

    budget = Budget(mflops=tiny_space.min_cost().mflops)
    strategy = _strategy(tiny_space, Budget(), kind=RandomSearch)
    with pytest.raises(NasxError, match="none of the 32 candidates fit"):
        run_search(strategy, tiny_space, FakeEvaluator(tiny_space), WeightedSum({"top1": 1.0}), budget, tmp_path,
                   progress=False)


@pytest.mark.parametrize("kind", [Evolution, RandomSearch])
@pytest.mark.parametrize("die_after", [3, 17, 26])
def test_killed_search_resumes_to_the_same_history_and_best(tiny_space, tmp_path, kind, die_after):
    budget = Budget(mflops=tiny_space.min_cost().mflops * 1.6)
    reward = WeightedSum({"top1": 1.0})
    full = run_search(_strategy(tiny_space, budget, kind=kind), tiny_space, FakeEvaluator(tiny_space), reward,
                      budget, tmp_path / "full", progress=False)

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run_search(_strategy(tiny_space, budget, kind=kind), tiny_space, FakeEvaluator(tiny_space, die_after),
                   reward, budget, out, progress=False)
    # simulate a kill during a write: a torn last line
    with open(out / "history.jsonl", "a") as f:
        f.write('{"gen": 9, "arch": {"sp')
    evaluator = FakeEvaluator(tiny_space)
    resumed = run_search(_strategy(tiny_space, budget, kind=kind), tiny_space, evaluator, reward, budget, out,
                         progress=False)

    assert artifacts.read_jsonl(out / "history.jsonl") == artifacts.read_jsonl(tmp_path / "full" / "history.jsonl")
    assert resumed.best["arch"] == full.best["arch"]
    # the interrupted generation's finished evaluations were not redone
    assert len(evaluator.calls) == len(set(r["arch_str"] for r in full.records)) - die_after


def test_rerunning_a_finished_search_evaluates_nothing(tiny_space, tmp_path):
    budget = Budget()
    run_search(_strategy(tiny_space, budget), tiny_space, FakeEvaluator(tiny_space), WeightedSum({"top1": 1.0}),
               budget, tmp_path, progress=False)
    before = artifacts.read_jsonl(tmp_path / "history.jsonl")
    evaluator = FakeEvaluator(tiny_space)
    run_search(_strategy(tiny_space, budget), tiny_space, evaluator, WeightedSum({"top1": 1.0}), budget, tmp_path,
               progress=False)
    assert evaluator.calls == [] and artifacts.read_jsonl(tmp_path / "history.jsonl") == before


def test_atomic_artifacts_get_the_permissions_a_plain_open_would_give(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); results meant to be shared must not stay private."""
    import os

    from nasx import artifacts

    artifacts.write_json(tmp_path / "r.json", {"a": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(tmp_path / "r.json").st_mode & 0o777 == os.stat(plain).st_mode & 0o777
