"""Architectures are values: hashable, printable, JSON round-trip, and rejected with the gene named when malformed."""
from __future__ import annotations

import random

import pytest

from nasx.arch import Arch, Budget, step_rng
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
