"""Search strategies: budget-feasible, distinct, resumable bit-for-bit, and evolution beats random search."""
from __future__ import annotations

import ast
import inspect
import io
import math
import random

import pytest
import torch

import nasx.search.evolution
import nasx.search.random_search
import nasx.search.strategy
from nasx.arch import Arch, Budget, Cost
from nasx.spaces.additive import AdditiveSearchSpace
from nasx.errors import ConfigError, InfeasibleBudgetError
from nasx.search import Evolution, RandomSearch, Strategy
from nasx.search.strategy import Outcome
from nasx.spaces.shufflenet import ShuffleNetSpace


def told(arch: Arch, reward: float) -> tuple[Arch, Outcome]:
    """What the search loop tells for a single-objective reward: a length-1 vector in minimisation form."""
    return arch, Outcome((-reward,))


class LineSpace(AdditiveSearchSpace):
    """``n`` genes of ``k`` choices each; choice c of any gene costs c MFLOPs (plus 1 fixed)."""

    def __init__(self, n: int = 12, k: int = 6, name: str = "line"):
        self.name = name
        self.genes = {f"g{i}": k for i in range(n)}
        self._set_cost_tables(Cost(1.0, 100), [((g,), {(c,): (float(c), 10 * c) for c in range(k)})
                                               for g in self.genes])


@pytest.fixture(scope="module")
def shufflenet() -> ShuffleNetSpace:
    return ShuffleNetSpace(stage_channels=(16, 32, 64, 128), stem_channels=8, last_channels=128, input_size=32,
                           stem_stride=1, in_channels=1, num_classes=10)


def target_reward(space, seed: int = 0):
    """Synthetic reward: minus the squared distance to a hidden target arch (0 at the target)."""
    target = space.sample(random.Random(f"target{seed}")).choices()
    return lambda a: -float(sum((c - t) ** 2 for c, t in zip(a.choices(), target)))


def make(kind: str, space, budget: Budget, seed: int, **kw) -> Strategy:
    if kind == "random":
        return RandomSearch(space, budget, seed, generations=kw.get("generations", 4),
                            population=kw.get("population", 8))
    kw = {"generations": 4, "population": 8, "top_k": 3, "crossover_size": 6, **kw}
    return Evolution(space, budget, seed, **kw)


def run(strategy: Strategy, reward) -> list[list[Arch]]:
    asked = []
    while not strategy.done:
        cands = strategy.ask()
        asked.append(cands)
        strategy.tell([told(a, reward(a)) for a in cands])
    return asked


@pytest.mark.parametrize("kind", ["random", "evolution"])
@pytest.mark.parametrize("slack", [1.002, 1.3])
def test_every_candidate_is_valid_and_inside_the_budget(shufflenet, kind, slack):
    lo = shufflenet.min_cost().mflops
    budget = Budget(mflops=lo * slack)  # 1.002: only archs next to the cheapest one fit
    strategy = make(kind, shufflenet, budget, seed=1)
    asked = run(strategy, target_reward(shufflenet))
    assert len(asked) == 4 and all(len(g) == 8 for g in asked)
    for arch in (a for g in asked for a in g):
        assert shufflenet.validate(arch) == arch
        assert shufflenet.cost(arch).mflops <= budget.mflops
    assert strategy.best()[0][0] in {a for g in asked for a in g}


@pytest.mark.parametrize("kind", ["random", "evolution"])
def test_ask_twice_without_tell_is_the_same_list(kind):
    space = LineSpace()
    strategy = make(kind, space, Budget(mflops=30), seed=2)
    first = strategy.ask()
    assert strategy.ask() == first
    strategy.tell([told(a, 0.0) for a in first])
    assert strategy.ask() != first


@pytest.mark.parametrize("kind,kw", [("random", {}), ("evolution", {}),
                                     ("evolution", {"mutate_prob": 0.0, "random_prob": 0.0})])
def test_candidates_are_distinct_and_never_evaluated_before(kind, kw):
    # with mutate_prob = 0 every mutation slot first yields a copy of a parent, which must be replaced
    space = LineSpace()
    strategy = make(kind, space, Budget(mflops=35), seed=3, generations=6, **kw)
    seen: set[Arch] = set()
    for generation in run(strategy, target_reward(space)):
        assert len(set(generation)) == len(generation)
        assert not seen & set(generation)
        seen |= set(generation)
    assert len(strategy.best(10 ** 9)) == 6 * 8


def save_and_load(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("kind", ["random", "evolution"])
@pytest.mark.parametrize("save_pending", [False, True])
def test_resumed_search_asks_exactly_what_an_uninterrupted_one_asks(shufflenet, kind, save_pending):
    budget = Budget(mflops=shufflenet.min_cost().mflops * 1.3)
    reward = target_reward(shufflenet)
    a = make(kind, shufflenet, budget, seed=4, generations=6)
    asked_a = run(a, reward)

    b = make(kind, shufflenet, budget, seed=4, generations=6)
    asked_b = []
    for _ in range(3):
        asked_b.append(b.ask())
        b.tell([told(x, reward(x)) for x in asked_b[-1]])
    if save_pending:  # the loop may checkpoint between ask and tell
        b.ask()
    state = save_and_load(b.state_dict())
    resumed = make(kind, shufflenet, budget, seed=999, generations=6)  # the seed is superseded by the state
    resumed.load_state_dict(state)
    assert resumed.generation == 3
    asked_b += run(resumed, reward)

    assert asked_a == asked_b
    assert a.best(5) == resumed.best(5)


def test_state_dict_holds_only_primitives():
    strategy = make("evolution", LineSpace(), Budget(mflops=30), seed=5)
    cands = strategy.ask()
    strategy.tell([told(x, -math.inf if i == 0 else float(i)) for i, x in enumerate(cands)])
    strategy.ask()

    def check(value):
        if isinstance(value, dict):
            for k, v in value.items():
                assert isinstance(k, str)
                check(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                check(v)
        else:
            assert value is None or isinstance(value, (int, float, str, bool)), type(value)

    check(strategy.state_dict())


def test_loading_another_strategys_state_is_a_config_error():
    space = LineSpace()
    state = make("random", space, Budget(), seed=0).state_dict()
    with pytest.raises(ConfigError, match="RandomSearch"):
        make("evolution", space, Budget(), seed=0).load_state_dict(state)


@pytest.mark.parametrize("kind", ["random", "evolution"])
def test_different_seeds_ask_different_candidates(kind):
    space = LineSpace()
    assert make(kind, space, Budget(), seed=0).ask() != make(kind, space, Budget(), seed=1).ask()
    assert make(kind, space, Budget(), seed=7).ask() == make(kind, space, Budget(), seed=7).ask()


def test_evolution_beats_random_search_with_equal_evaluations():
    space = LineSpace(n=16, k=8)
    budget = Budget(mflops=80)
    best = {"random": [], "evolution": []}
    for seed in range(4):
        reward = target_reward(space, seed)
        rs = RandomSearch(space, budget, seed, generations=10, population=20)
        ev = Evolution(space, budget, seed, generations=10, population=20, top_k=5, crossover_size=16)
        for name, strategy in (("random", rs), ("evolution", ev)):
            run(strategy, reward)
            assert len(strategy.best(10 ** 9)) == 200
            best[name].append(strategy.best()[0][1])
    mean = {k: sum(v) / len(v) for k, v in best.items()}
    # the target is ~80 squared units away from a random arch; evolution must close most of the gap
    assert mean["evolution"] > mean["random"] / 2, mean


def test_crossover_children_take_every_gene_from_two_top_k_parents():
    space = LineSpace()
    strategy = make("evolution", space, Budget(), seed=6, population=20, top_k=5, crossover_size=15,
                    mutate_prob=0.0, random_prob=0.0)
    reward = target_reward(space)
    first = strategy.ask()
    strategy.tell([told(a, reward(a)) for a in first])
    parents = strategy.parents()
    assert parents == [a for a, _ in strategy.best(5)]
    children = strategy.ask()
    for child in children[:15]:
        assert any(all(c in (x, y) for c, x, y in zip(child.choices(), a.choices(), b.choices()))
                   for a in parents for b in parents if a != b), child


def test_with_a_single_parent_crossover_degenerates_to_mutation():
    space = LineSpace(n=20)
    strategy = make("evolution", space, Budget(), seed=8, population=10, top_k=1, crossover_size=10,
                    mutate_prob=0.1, random_prob=0.0)
    first = strategy.ask()
    strategy.tell([told(a, float(i)) for i, a in enumerate(first)])
    (parent,) = strategy.parents()
    assert parent == first[-1]
    distances = [sum(c != p for c, p in zip(child.choices(), parent.choices())) for child in strategy.ask()]
    # a gene re-drawn with probability 0.1 changes ~1.7 of 20 genes; a random arch would differ in ~17
    assert 1 <= sum(distances) / len(distances) <= 5, distances


def test_failed_candidates_never_become_parents():
    space = LineSpace()
    strategy = make("evolution", space, Budget(), seed=9)
    first = strategy.ask()
    strategy.tell([told(a, -math.inf) for a in first])
    assert strategy.parents() == []
    second = strategy.ask()  # nothing to breed from: drawn at random, still new
    assert len(set(second)) == 8 and not set(second) & set(first)
    strategy.tell([told(a, float("nan") if i < 7 else 1.0) for i, a in enumerate(second)])
    assert strategy.parents() == [second[7]]
    assert strategy.best()[0] == (second[7], 1.0)


def test_best_breaks_ties_by_first_seen_order():
    space = LineSpace()
    strategy = make("random", space, Budget(), seed=10)
    first = strategy.ask()
    strategy.tell([told(a, 1.0) for a in first])
    second = strategy.ask()
    strategy.tell([told(a, 2.0 if i == 5 else 1.0) for i, a in enumerate(second)])
    assert [a for a, _ in strategy.best(4)] == [second[5]] + first[:3]


def test_tell_rejects_rewards_for_other_archs():
    strategy = make("random", LineSpace(), Budget(), seed=11)
    with pytest.raises(ValueError):
        strategy.tell([])
    cands = strategy.ask()
    with pytest.raises(ValueError):
        strategy.tell([told(a, 0.0) for a in reversed(cands)])
    assert strategy.generation == 0


@pytest.mark.parametrize("kw,key", [
    ({"population": 0}, "search.strategy.population"),
    ({"generations": -1}, "search.strategy.generations"),
    ({"generations": 2.5}, "search.strategy.generations"),
    ({"top_k": 0}, "search.strategy.top_k"),
    ({"top_k": 9}, "search.strategy.top_k"),
    ({"crossover_size": 9}, "search.strategy.crossover_size"),
    ({"mutate_prob": 1.5}, "search.strategy.mutate_prob"),
    ({"random_prob": -0.1}, "search.strategy.random_prob"),
])
def test_bad_hyper_parameters_raise_a_config_error_naming_the_key(kw, key):
    with pytest.raises(ConfigError) as err:
        make("evolution", LineSpace(), Budget(), seed=0, **kw)
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


def test_random_search_rejects_a_bad_population():
    with pytest.raises(ConfigError, match=r"^search\.strategy\.population must be a positive integer, got 0$"):
        RandomSearch(LineSpace(), Budget(), seed=0, generations=2, population=0)


@pytest.mark.parametrize("kind", ["random", "evolution"])
def test_infeasible_budget_fails_at_once_with_the_minimum_cost(shufflenet, kind):
    lo = shufflenet.min_cost().mflops
    with pytest.raises(InfeasibleBudgetError, match=f"{lo:.3f} MFLOPs"):
        make(kind, shufflenet, Budget(mflops=lo * 0.9), seed=0)


def test_strategies_are_pure_python():
    for module in (nasx.search.strategy, nasx.search.random_search, nasx.search.evolution):
        tree = ast.parse(inspect.getsource(module))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"torch", "numpy", "time", "os", "io", "pathlib"}, (module.__name__, imported)
