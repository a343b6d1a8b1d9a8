"""Strategies pinned by golden values, pymoo-style: a fixed seed gives a stored sequence of asks.

``tests/golden/strategies.json`` was written by the strategies as they were before the one-runner refactor (they
were told plain floats, and NSGA-II ``(objectives, feasible)`` pairs); today's strategies, told
:class:`~nasx.search.strategy.Outcome` vectors, must ask exactly the same archs.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nasx.arch import Budget
from nasx.evaluation.base import FunctionEvaluator
from nasx.rewards import WeightedSum
from nasx.search import Evolution, RandomSearch
from nasx.search.elite import EliteSampling, sample_until_within
from nasx.search.loop import run_search
from nasx.search.nsga2 import NSGA2
from nasx.search.strategy import Outcome
from nasx.spaces.mixpath_ib import MixPathIBSpace
from nasx.spaces.nss_resnet import NSSSpace
from nasx.spaces.shufflenet import ShuffleNetSpace

GOLDEN = json.loads((Path(__file__).parent / "golden" / "strategies.json").read_text())


def score(arch) -> float:
    """A deterministic fake accuracy in [0, 1)."""
    return (sum((i + 1) * v for i, v in enumerate(arch.choices())) % 97) / 97.0


def _space():
    return ShuffleNetSpace(name="golden", stage_repeats=(1, 1, 2, 1), stage_channels=(16, 32, 64, 128),
                           stem_channels=8, last_channels=64, input_size=16, stem_stride=1, in_channels=1,
                           num_classes=10)


def _asks(strategy, outcome) -> list[list[str]]:
    asks = []
    while not strategy.done:
        a = strategy.ask()
        asks.append([str(x) for x in a])
        strategy.tell([(x, outcome(x)) for x in a])
    return asks


@pytest.mark.parametrize("name", ["random", "evolution"])
def test_single_objective_strategies_ask_the_golden_sequence(name):
    space = _space()
    budget = Budget(mflops=space.min_cost().mflops * 3)
    strategy = RandomSearch(space, budget, seed=3, generations=3, population=6) if name == "random" else \
        Evolution(space, budget, seed=3, generations=4, population=8, top_k=3, crossover_size=5)
    assert _asks(strategy, lambda x: Outcome((-score(x),))) == GOLDEN[name]


def test_nsga2_asks_the_golden_sequence_with_top_up_rounds_and_keeps_its_front():
    mp = MixPathIBSpace(name="golden_mp", widths=[16, 16, 24, 24], strides=[1, 1, 2, 1], max_paths=2,
                        stem_channels=8, last_channels=64, input_size=16, in_channels=1, num_classes=10)
    budget = Budget(mflops=(mp.min_cost().mflops + mp.max_cost().mflops) / 2)
    strategy = NSGA2(mp, budget, seed=5, generations=3, population=6)
    asks = _asks(strategy, lambda x: Outcome((-score(x), mp.cost(x).mflops), score(x) > 0.1))
    assert len(asks) > 3  # the accuracy floor made it top generations up
    assert asks == GOLDEN["nsga2"]
    assert [[str(a), list(f)] for a, f in strategy.population_front(at_least=3)] == GOLDEN["nsga2_front"]


@pytest.mark.parametrize("elite", [True, False])
def test_elite_sampling_through_the_loop_reproduces_the_protocol_and_logs_every_draw(elite, tmp_path):
    """NSS's protocol run as a strategy of the search loop gives, run by run, exactly what the plain protocol
    function gives, and history.jsonl holds every draw."""
    space = NSSSpace(name="nss_golden", max_depth=4, max_width=64, depth_step=2, width_step=32, in_channels=1,
                     num_classes=10)
    spaces = (1, 0, 2) if elite else None
    lo, hi = space.corner_archs(spaces)
    target = (space.cost(lo).mflops + space.cost(hi).mflops) / 2  # reachable: inside the spaces' cost range
    strategy = EliteSampling(space, Budget(), seed="7:x", target_mflops=target, tolerance=0.05, repeats=4,
                             max_samples=300, population=16, spaces=spaces)
    dev = lambda a: {"delta_pct": 100 * abs(space.cost(a).mflops - target) / target}  # noqa: E731
    result = run_search(strategy, space, FunctionEvaluator(dev), WeightedSum({"delta_pct": -1.0}), Budget(),
                        tmp_path, progress=False)
    expected = [sample_until_within(space, target, 0.05, random.Random(f"7:x:{k}"), spaces=spaces, max_samples=300)
                for k in range(4)]
    assert strategy.runs == expected
    assert [sum(1 for r in result.records if r["gen"] == k) for k in range(4)] == [e["samples"] for e in expected]


def test_elite_sampling_killed_mid_run_resumes_to_the_same_runs(tmp_path):
    space = NSSSpace(name="nss_golden", max_depth=4, max_width=64, depth_step=2, width_step=32, in_channels=1,
                     num_classes=10)
    target = 3 * space.min_cost().mflops
    make = lambda: EliteSampling(space, Budget(), seed="1:y", target_mflops=target, tolerance=0.02,  # noqa: E731
                                 repeats=3, max_samples=200, population=8)

    class Killed(Exception):
        pass

    calls = {"n": 0}

    def dying(a):
        calls["n"] += 1
        if calls["n"] == 30:
            raise Killed
        return {"delta_pct": 100 * abs(space.cost(a).mflops - target) / target}

    with pytest.raises(Killed):
        run_search(make(), space, FunctionEvaluator(dying), WeightedSum({"delta_pct": -1.0}), Budget(), tmp_path,
                   progress=False)
    resumed = make()
    run_search(resumed, space, FunctionEvaluator(dying), WeightedSum({"delta_pct": -1.0}), Budget(), tmp_path,
               progress=False)
    whole = make()
    run_search(whole, space, FunctionEvaluator(dying), WeightedSum({"delta_pct": -1.0}), Budget(),
               tmp_path / "whole", progress=False)
    assert resumed.runs == whole.runs and len(whole.runs) == 3
    assert (tmp_path / "history.jsonl").read_text() == (tmp_path / "whole" / "history.jsonl").read_text()


def test_elite_sampling_closes_an_unreachable_space_without_drawing(tmp_path):
    """An elite space whose every network costs more than the target's window is reported as the bound says —
    not found after max_samples — at once, with its cheapest network; a reachable one still draws."""
    space = NSSSpace(name="nss_golden", max_depth=4, max_width=64, depth_step=2, width_step=32, in_channels=1,
                     num_classes=10)
    heavy = (space.n_spaces - 1,) * 3
    cheapest, _ = space.corner_archs(heavy)
    target = space.cost(cheapest).mflops / 2
    strategy = EliteSampling(space, Budget(), seed="3", target_mflops=target, tolerance=0.1, repeats=2,
                             max_samples=500, spaces=heavy)
    dev = lambda a: {"delta_pct": 100 * abs(space.cost(a).mflops - target) / target}  # noqa: E731
    result = run_search(strategy, space, FunctionEvaluator(dev), WeightedSum({"delta_pct": -1.0}), Budget(),
                        tmp_path, progress=False)
    assert len(result.records) == 0
    assert [r["found"] for r in strategy.runs] == [False, False]
    assert strategy.runs[0]["samples"] == 500 and strategy.runs[0]["arch"] == cheapest.to_dict()
    assert strategy.runs[0]["delta_pct"] == pytest.approx(100.0)
    # what the plain protocol finds after drawing all 500: not found, and no closer network than the cheapest
    drawn = sample_until_within(space, target, 0.1, random.Random("3:0"), spaces=heavy, max_samples=500)
    assert not drawn["found"] and drawn["delta_pct"] >= strategy.runs[0]["delta_pct"]
