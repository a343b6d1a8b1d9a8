"""Architectures are values: hashable, printable, JSON round-trip, and rejected with the gene named when malformed."""
from __future__ import annotations

import itertools
import random

import pytest

from nasx.arch import Arch, Budget, Cost, step_rng
from nasx.spaces.additive import AdditiveSearchSpace
from nasx.errors import ArchError, InfeasibleBudgetError


def test_arch_round_trips_through_json_and_is_hashable(tiny_space):
    a = tiny_space.sample(random.Random(0))
    b = Arch.from_json(a.to_json())
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert str(a).startswith("tiny:b0=") and "w0=" in str(a)
    assert tiny_space.validate(b) == a


@pytest.mark.parametrize("mutation, message", [
    (lambda d: d["genes"].update(b99=1), "unknown gene 'b99'"),
    (lambda d: d["genes"].update(w1=10), "gene 'w1' has choice 10, expected 0..9"),
    (lambda d: d["genes"].update(b0=-1), "gene 'b0' has choice -1, expected 0..3"),
    (lambda d: d["genes"].pop("w3"), "gene 'w3' is missing"),
    (lambda d: d["genes"].update(b2="x"), "gene 'b2' must be an integer"),
    (lambda d: d.update(space="other"), "belongs to space 'other'"),
])
def test_malformed_arch_is_rejected_naming_the_gene(tiny_space, mutation, message):
    d = tiny_space.sample(random.Random(1)).to_dict()
    mutation(d)
    with pytest.raises(ArchError, match=message):
        tiny_space.validate(Arch.from_dict(d, where="x.json"), where="x.json")


def test_invalid_json_names_the_file():
    with pytest.raises(ArchError, match=r"best\.json: not valid JSON"):
        Arch.from_json("{nope", where="best.json")


def test_sampled_arch_is_a_pure_function_of_seed_and_step(tiny_space):
    assert tiny_space.sample(step_rng(3, 17)) == tiny_space.sample(step_rng(3, 17))
    draws = {tiny_space.sample(step_rng(3, s)) for s in range(20)}
    assert len(draws) == 20
    assert tiny_space.sample(step_rng(4, 17)) != tiny_space.sample(step_rng(3, 17))


def test_budget_sampling_stays_inside_even_when_tight(tiny_space):
    lo = tiny_space.min_cost().mflops
    for budget in (Budget(mflops=lo * 1.001), Budget(mflops=lo * 1.2)):
        rng = random.Random(0)
        for _ in range(200):
            assert budget.admits(tiny_space.cost(tiny_space.sample_within(budget, rng)))


def test_infeasible_budget_fails_at_once_with_the_space_minimum(tiny_space):
    lo = tiny_space.min_cost().mflops
    with pytest.raises(InfeasibleBudgetError, match=f"smallest architecture of space 'tiny' costs {lo:.3f}"):
        tiny_space.check_feasible(Budget(mflops=lo * 0.99))
    with pytest.raises(InfeasibleBudgetError):
        tiny_space.sample_within(Budget(mflops=lo * 0.5), random.Random(0))


def test_min_cost_is_the_cost_of_the_cheapest_arch(tiny_space):
    cheapest = min((tiny_space.cost(tiny_space.sample(random.Random(i))).mflops for i in range(3000)))
    assert tiny_space.min_cost().mflops <= cheapest
    repaired = tiny_space.repair(tiny_space.sample(random.Random(0)),
                                 Budget(mflops=tiny_space.min_cost().mflops), random.Random(0))
    assert tiny_space.cost(repaired).mflops == pytest.approx(tiny_space.min_cost().mflops)


class TableSpace(AdditiveSearchSpace):
    """A space given by its cost tables: ``units`` lists, per unit, its gene names and {choice tuple: (MFLOPs,
    params)}."""

    def __init__(self, units: list[tuple[tuple[str, ...], dict]], fixed: Cost = Cost(0.0, 0), name: str = "table"):
        self.name = name
        self.genes = {}
        for names, table in units:
            for k, g in enumerate(names):
                self.genes[g] = 1 + max(c[k] for c in table)
        self._set_cost_tables(fixed, units)


def _tradeoff_space() -> TableSpace:
    # per unit: 0 is dear on FLOPs, 1 the FLOPs-cheapest with the most params, 2 cheap on params
    table = {(0,): (5.0, 3_000_000), (1,): (1.0, 5_000_000), (2,): (2.0, 1_000_000)}
    return TableSpace([((f"u{i}",), table) for i in range(3)], name="tradeoff")


def _brute_force_fits(space, budget: Budget) -> list[Arch]:
    return [a for a in (space.arch(c) for c in itertools.product(*(range(k) for k in space.genes.values())))
            if budget.admits(space.cost(a))]


def test_combined_budget_repair_uses_params_cheap_choices_when_flops_cheap_ones_break_the_params_bound():
    space = _tradeoff_space()
    budget = Budget(mflops=7.0, params=4.0)
    # the FLOPs-cheapest arch has 15 M params; the params-cheapest one (6 MFLOPs, 3 M params) fits both
    assert not budget.admits(space.cost(space.arch([1, 1, 1])))
    assert _brute_force_fits(space, budget)
    for seed in range(10):
        repaired = space.repair(space.arch([0, 0, 0]), budget, random.Random(seed))
        assert budget.admits(space.cost(repaired)), (seed, repaired, space.cost(repaired))


def test_combined_budget_that_no_arch_meets_is_infeasible_though_each_bound_alone_is_met():
    space = _tradeoff_space()
    budget = Budget(mflops=4.0, params=4.0)
    lo = space.min_cost()
    assert lo.mflops <= budget.mflops and lo.params <= budget.params * 1e6  # each bound alone is feasible
    assert not _brute_force_fits(space, budget)
    with pytest.raises(InfeasibleBudgetError, match="no architecture of space 'tradeoff' fits 4 MFLOPs and 4 M"):
        space.repair(space.arch([0, 0, 0]), budget, random.Random(0))


def _random_space(rng: random.Random) -> TableSpace:
    units, g = [], 0
    for _ in range(rng.randint(1, 4)):
        shape = [rng.randint(1, 4)] + ([rng.randint(2, 3)] if rng.random() < 0.3 else [])
        names = tuple(f"g{g + k}" for k in range(len(shape)))
        g += len(shape)
        anti = rng.random() < 0.5  # FLOPs and params anti-correlated: cheap on one metric, dear on the other
        table = {}
        for c in itertools.product(*(range(k) for k in shape)):
            m = rng.uniform(0.0, 10.0)
            p = (10.0 - m if anti else m) * 1e5 + rng.randint(0, 200_000)
            table[c] = (round(m, rng.choice([1, 6])), int(p))
        units.append((names, table))
    return TableSpace(units, Cost(rng.uniform(0, 2), rng.randint(0, 100_000)), name="fuzz")


@pytest.mark.parametrize("seed", range(8))
def test_repair_finds_an_arch_whenever_brute_force_says_one_fits(seed):
    _check_repair_against_brute_force(random.Random(seed))


@pytest.mark.parametrize("seed", range(4))
def test_exact_search_alone_agrees_with_brute_force(monkeypatch, seed):
    """Without the cheap candidates every combined budget goes through the exact search (and its pruning)."""
    monkeypatch.setattr(AdditiveSearchSpace, "_weighted_fit", lambda self, budget: None)
    monkeypatch.setattr(AdditiveSearchSpace, "_exchange_fit", lambda self, budget, first: None)
    _check_repair_against_brute_force(random.Random(100 + seed))


def _check_repair_against_brute_force(rng: random.Random) -> None:
    checked = infeasible = 0
    for _ in range(60):
        space = _random_space(rng)
        everything = _brute_force_fits(space, Budget())
        costs = [space.cost(a) for a in everything]
        # bounds drawn between the cheapest and the dearest arch on each metric, sometimes exactly at a cost
        m = rng.choice([rng.uniform(min(c.mflops for c in costs), max(c.mflops for c in costs)),
                        rng.choice(costs).mflops, None])
        p = rng.choice([rng.uniform(min(c.params for c in costs), max(c.params for c in costs)) / 1e6,
                        rng.choice(costs).params / 1e6])
        budget = Budget(mflops=m, params=p)
        fits = _brute_force_fits(space, budget)
        for _ in range(3):
            start = rng.choice(everything)
            try:
                repaired = space.repair(start, budget, rng)
            except InfeasibleBudgetError:
                assert not fits, f"{budget} declared infeasible, but {fits[0]} costs {space.cost(fits[0])}"
                infeasible += 1
                continue
            assert fits and space.validate(repaired) == repaired and budget.admits(space.cost(repaired)), \
                (budget, repaired)
            if budget.admits(space.cost(start)):
                assert repaired == start  # an arch that fits is left alone
            checked += 1
    assert checked > 60 and infeasible > 0  # both outcomes were exercised
