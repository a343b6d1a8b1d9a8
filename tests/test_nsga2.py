"""NSGA-II on pymoo (MixPath Algorithm 1): recovers a known front, resumes exactly, respects its constraints."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

from nasx.evaluation.base import FunctionEvaluator
from nasx.arch import Budget, Cost
from nasx.spaces.additive import AdditiveSearchSpace
from nasx.errors import ConfigError, InfeasibleBudgetError, NasxError
from nasx.rewards import Objectives
from nasx.search.loop import run_search
from nasx.search.nsga2 import NSGA2, equispaced, hypervolume, non_dominated, weighted_crowding

REF = (1.1, 11.0)


class Grid(AdditiveSearchSpace):
    """Six genes of 10 values; gene x0's value doubles as its cost in MFLOPs."""

    def __init__(self):
        self.name = "grid"
        self.genes = {f"x{i}": 10 for i in range(6)}
        self._set_cost_tables(Cost(0.0, 0), [(("x0",), {(c,): (float(c), 0) for c in range(10)})] +
                              [((g,), {(c,): (0.0, 0) for c in range(10)}) for g in list(self.genes)[1:]])


def zdt1(arch):
    """A discrete ZDT1: the front is x1..x5 = 0 with any x0, where f2 = 1 − sqrt(f1)."""
    x = np.array(arch.choices()) / 9.0
    g = 1 + 9 * x[1:].mean()
    return {"f1": x[0], "f2": g * (1 - math.sqrt(x[0] / g)), "top1": 1 - x[1:].mean()}


OBJ = Objectives([{"metric": "f1", "sense": "min", "ref": REF[0]}, {"metric": "f2", "sense": "min", "ref": REF[1]}])
TRUE_FRONT = np.array([[c / 9, 1 - math.sqrt(c / 9)] for c in range(10)])


def _search(tmp_path, evaluate=zdt1, reward=OBJ, budget=Budget(), **kw):
    space = Grid()
    kw = {"generations": 25, "population": 20, **kw}
    strategy = NSGA2(space, budget, seed=0, **kw)
    result = run_search(strategy, space, FunctionEvaluator(evaluate), reward, budget, tmp_path, progress=False)
    return strategy, result


def test_recovers_the_known_front_of_a_toy_problem(tmp_path):
    strategy, result = _search(tmp_path)
    F = np.array([f for _, f in strategy.population_front()])
    assert hypervolume(F, REF) == pytest.approx(hypervolume(TRUE_FRONT, REF), rel=0.01)
    assert result.evaluations < 10 ** 6 / 100  # it searched, it did not enumerate the 10^6 archs


def test_random_sampling_at_the_same_budget_does_not_reach_the_front(tmp_path):
    from nasx.search.random_search import RandomSearch

    space = Grid()
    n = _search(tmp_path / "nsga")[1].evaluations
    rs = RandomSearch(space, Budget(), seed=0, generations=math.ceil(n / 20), population=20)
    records = run_search(rs, space, FunctionEvaluator(zdt1), OBJ, Budget(), tmp_path / "random", progress=False).records[:n]
    F = np.array([r["objectives"] for r in records])
    assert hypervolume(F[non_dominated(F)], REF) < 0.97 * hypervolume(TRUE_FRONT, REF)


def test_generation_zero_is_2n_and_later_generations_n_children(tmp_path):
    strategy, result = _search(tmp_path, generations=3, population=10)
    per_gen = [sum(1 for r in result.records if r["gen"] == g) for g in range(3)]
    assert per_gen == [20, 10, 10]
    assert len(strategy.algorithm.pop) == 10


def test_resume_after_a_killed_generation_gives_the_same_front(tmp_path):
    ref_strategy, ref = _search(tmp_path / "ref", generations=6, population=10)

    calls = {"n": 0}

    def dies(arch):
        calls["n"] += 1
        if calls["n"] == 45:  # in the middle of generation 2
            raise KeyboardInterrupt
        return zdt1(arch)

    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path / "run", evaluate=dies, generations=6, population=10)
    strategy, result = _search(tmp_path / "run", generations=6, population=10)
    assert [r["arch_str"] for r in result.records] == [r["arch_str"] for r in ref.records]
    assert sorted(str(a) for a, _ in strategy.population_front()) == \
        sorted(str(a) for a, _ in ref_strategy.population_front())


def test_children_over_the_flops_ceiling_are_skipped_not_evaluated(tmp_path):
    _, result = _search(tmp_path, budget=Budget(mflops=4), generations=5, population=10)
    assert all(r["mflops"] <= 4 for r in result.records) and all(r.get("status") != "over_budget"
                                                                  for r in result.records)


def test_an_accuracy_floor_drops_candidates_and_tops_up_the_generation(tmp_path):
    floor = Objectives([{"metric": "top1", "sense": "max", "ref": 0.0, "floor": 0.5},
                        {"metric": "mflops", "sense": "min", "ref": 10.0}])
    strategy, result = _search(tmp_path, reward=floor, generations=4, population=10)
    kept = [r for r in result.records if r["feasible"]]
    assert any(not r["feasible"] for r in result.records)  # some were dropped ...
    assert all(-f[0] >= 0.5 for _, f in strategy.population_front())  # ... and none of them survives
    assert max(r["round"] for r in result.records) >= 4  # generations were topped up with extra rounds
    assert len(kept) >= 20 + 3 * 10


def test_an_unreachable_accuracy_floor_fails_fast_with_the_constraint_named(tmp_path):
    floor = Objectives([{"metric": "top1", "sense": "max", "ref": 0.0, "floor": 1.5},
                        {"metric": "mflops", "sense": "min", "ref": 10.0}])
    with pytest.raises(NasxError, match="after 3 rounds .* loosen the floor/ceiling in reward.objectives"):
        _search(tmp_path, reward=floor, generations=4, population=10, max_rounds=3)


def test_an_infeasible_flops_ceiling_fails_before_any_evaluation(tmp_path):
    class Costly(Grid):
        def __init__(self):
            super().__init__()
            self._fixed = Cost(100.0, 0)

    with pytest.raises(InfeasibleBudgetError, match="budget of 5 MFLOPs is infeasible"):
        NSGA2(Costly(), Budget(mflops=5), seed=0)


def test_bad_objective_weights_are_a_config_error():
    with pytest.raises(ConfigError, match="objective_weights must be 2 non-negative numbers"):
        NSGA2(Grid(), Budget(), seed=0, objective_weights=[1.0])


def test_weighted_crowding_is_pymoos_with_equal_weights_and_ignores_a_zero_weighted_objective():
    rng = np.random.default_rng(0)
    F = rng.random((12, 2))
    assert np.allclose(weighted_crowding([1, 1])(F), calc_crowding_distance(F))
    only_first = weighted_crowding([1, 0])(F)
    assert np.allclose(only_first, calc_crowding_distance(F[:, [0]]))


def test_equispaced_picks_k_distinct_points_spread_over_the_cost_axis():
    F = np.array([[-0.9, 10.0], [-0.5, 1.0], [-0.7, 4.0], [-0.8, 6.0], [-0.6, 2.0]])
    picks = equispaced(F, 3)
    assert [F[i, 1] for i in picks] == [1.0, 6.0, 10.0] or [F[i, 1] for i in picks] == [1.0, 4.0, 10.0]
    assert equispaced(F, 9) == [1, 4, 2, 3, 0]


def test_hypervolume_matches_a_hand_computation():
    F = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    # staircase up to (2, 2): 2*1 + 1.5*0.5 + 1*0.5 ... computed as the union of the dominated boxes
    assert hypervolume(F, (2.0, 2.0)) == pytest.approx(2 * 1 + 1.5 * 0.5 + 1.0 * 0.5)
    assert hypervolume(np.array([[3.0, 3.0]]), (2.0, 2.0)) == 0.0
