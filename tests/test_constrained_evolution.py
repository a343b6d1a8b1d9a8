"""VIM-NAS's constrained evolution: every candidate meets the budget and is new, crossover moves whole layer blocks
between equal-depth parents, mutation rates match P_d and P_m, it beats random search, and a killed search resumes
to the same history."""
from __future__ import annotations

import ast
import inspect
import math
import random

import pytest

import nasx.search.constrained_evolution
from nasx import artifacts
from nasx.arch import Arch, Budget
from nasx.errors import ConfigError, InfeasibleBudgetError
from nasx.evaluation.base import FunctionEvaluator
from nasx.rewards import WeightedSum
from nasx.search import ConstrainedEvolution, RandomSearch
from nasx.search.constrained_evolution import layer_index
from nasx.search.loop import run_search
from nasx.spaces.vit import ViTSpace
from test_strategies import run, told


def vit(name: str = "t", depths=(2, 3, 4), num_heads=(1, 2), mlp_ratios=(1.0, 2.0)) -> ViTSpace:
    return ViTSpace(name=name, embed_dims=(16, 24, 32), depths=depths, num_heads=num_heads, mlp_ratios=mlp_ratios,
                    head_dim=8, patch_size=4, input_size=8, in_channels=1, num_classes=3)


def median_params(space, n: int = 401) -> float:
    """The median sampled arch's parameters, in millions (a budget about half the space meets)."""
    rng = random.Random(0)
    return sorted(space.cost(space.sample(rng)).params for _ in range(n))[n // 2] / 1e6


def make(space, budget: Budget, seed: int = 0, **kw) -> ConstrainedEvolution:
    kw = {"generations": 5, "population": 12, "top_k": 4, "mutation_size": 6, "crossover_size": 6, **kw}
    return ConstrainedEvolution(space, budget, seed, **kw)


def target_reward(space: ViTSpace, seed: int):
    """Minus the mismatches to a hidden target network (embed, depth, and the heads/ratio of each layer, a missing
    or extra layer counting as two mismatches)."""
    rng = random.Random(f"target{seed}")
    budget = Budget(params=median_params(space))
    target = space.sample_within(budget, rng)
    _, t_layers = space.decode(target)

    def reward(a: Arch) -> float:
        d, layers = space.decode(a)
        miss = (a["embed"] != target["embed"]) + 2 * abs(len(layers) - len(t_layers))
        miss += sum((h != th) + (r != tr) for (h, r), (th, tr) in zip(layers, t_layers))
        return -float(miss)

    return reward, budget


# -- budget and novelty --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [1.0, 0.75])  # 381 and 201 distinct networks fit
def test_every_asked_arch_meets_the_params_budget_and_none_is_asked_twice(fraction):
    space = vit()
    budget = Budget(params=median_params(space) * fraction)
    strategy = make(space, budget, seed=1, generations=6)
    reward, _ = target_reward(space, 1)
    asked = run(strategy, reward)
    flat = [a for g in asked for a in g]
    assert len(asked) == 6 and all(len(g) == 12 for g in asked)
    assert len(set(flat)) == len(flat)
    # nor the same network twice under another name: genes of layers past the depth are written as 0
    assert len({space.describe(a) for a in flat}) == len(flat)
    for a in flat:
        assert space.validate(a) == a and budget.admits(space.cost(a))
        assert all(a[f"{g}{i}"] == 0 for i in range(space.depths[a["depth"]], space.max_depth) for g in "hr")


def test_ask_twice_without_tell_is_the_same_list_and_seeds_differ():
    space = vit()
    budget = Budget(params=median_params(space))
    s = make(space, budget, seed=2)
    first = s.ask()
    assert s.ask() == first
    assert make(space, budget, seed=3).ask() != first
    assert make(space, budget, seed=2).ask() == first


def test_a_nearly_exhausted_space_ends_every_generation():
    space = vit()
    budget = Budget(params=space.min_cost().params * 1.001 / 1e6)  # only the very smallest networks fit
    strategy = make(space, budget, seed=4, generations=3)
    for generation in run(strategy, lambda a: 0.0):
        assert len(generation) == 12 and all(budget.admits(space.cost(a)) for a in generation)


def test_an_infeasible_budget_is_the_spaces_error_at_once():
    space = vit()
    with pytest.raises(InfeasibleBudgetError, match="M params is infeasible"):
        make(space, Budget(params=space.min_cost().params * 0.9 / 1e6))


# -- crossover -----------------------------------------------------------------------------------------------------
def blocks(space: ViTSpace, a: Arch) -> list[tuple[int, int]]:
    return [(a[f"h{i}"], a[f"r{i}"]) for i in range(space.depths[a["depth"]])]


def test_crossover_takes_each_layer_block_whole_from_one_parent():
    space = vit(num_heads=(1, 2, 3), mlp_ratios=(1.0, 2.0, 3.0))
    strategy = make(space, Budget())
    a = space.arch({"embed": 0, "depth": 2, **{f"h{i}": 0 for i in range(4)}, **{f"r{i}": 1 for i in range(4)}})
    b = space.arch({"embed": 2, "depth": 2, **{f"h{i}": 2 for i in range(4)}, **{f"r{i}": 0 for i in range(4)}})
    sources = set()
    for _ in range(200):
        child = strategy.crossover(a, b)
        assert child["depth"] == 2 and child["embed"] in (0, 2)
        for i, block in enumerate(blocks(space, child)):
            assert block in ((0, 1), (2, 0)), (i, block)  # never heads of one parent with the ratio of the other
            sources.add((i, block))
    assert len(sources) == 8  # every layer came from each parent at some point


def test_crossover_of_unequal_depths_takes_the_deeper_parents_extra_layers():
    space = vit()
    strategy = make(space, Budget())
    short = space.arch({"embed": 0, "depth": 0, **{f"h{i}": 0 for i in range(4)}, **{f"r{i}": 0 for i in range(4)}})
    deep = space.arch({"embed": 1, "depth": 2, **{f"h{i}": 1 for i in range(4)}, **{f"r{i}": 1 for i in range(4)}})
    for _ in range(50):
        child = strategy.crossover(short, deep)
        assert all(block == (1, 1) for block in blocks(space, child)[2:])


def test_with_same_depth_crossover_only_parents_of_equal_depth_are_crossed():
    space = vit()
    budget = Budget()
    strategy = make(space, budget, seed=5, population=16, mutation_size=0, crossover_size=16, top_k=3)
    first = strategy.ask()
    # the parents: the two archs of one depth that differ in most layer blocks (a, b), and one of another depth (c);
    # everything else failed
    def units(x: Arch) -> list:
        return [x["embed"]] + blocks(space, x)

    same = [(x, y) for i, x in enumerate(first) for y in first[i + 1:] if x["depth"] == y["depth"]]
    a, b = max(same, key=lambda p: sum(u != v for u, v in zip(units(p[0]), units(p[1]))))
    c = next(x for x in first if x["depth"] != a["depth"])
    rewards = {a: 3.0, b: 1.0, c: 2.0}
    strategy.tell([told(x, rewards.get(x, -math.inf)) for x in first])
    assert strategy.parents() == [a, c, b]
    assert strategy.crossover_pairs(strategy.parents()) == [(a, b)]
    possible = 2 ** sum(u != v for u, v in zip(units(a), units(b))) - 2  # a × b's children other than a and b
    assert possible >= 14
    crossed = sum(child["depth"] == a["depth"] and all(u in (ua, ub) for u, ua, ub in
                                                       zip(units(child), units(a), units(b)))
                  for child in strategy.ask())
    # every slot is a × b's child until they run out (then random archs top the generation up)
    assert crossed >= min(possible, 16) - 2, (crossed, possible)

    free = make(space, budget, seed=5, population=16, mutation_size=0, crossover_size=16, top_k=3,
                same_depth_crossover=False)
    assert len(free.crossover_pairs([a, c, b])) == 3
    # no two parents of equal depth: any pair (documented fallback)
    assert strategy.crossover_pairs([a, c]) == [(a, c)]


# -- mutation ------------------------------------------------------------------------------------------------------
def test_mutation_rates_match_p_d_and_p_m():
    space = vit(num_heads=(1, 2, 3), mlp_ratios=(1.0, 2.0))
    p_m, p_d, p_e = 0.2, 0.4, 0.3
    strategy = make(space, Budget(), seed=6, mutate_prob=p_m, depth_prob=p_d, embed_prob=p_e)
    rng = random.Random(7)
    n = 4000
    depth_changed = embed_changed = 0
    changed = {"h": [0, 0], "r": [0, 0]}  # changes, genes looked at
    for _ in range(n):
        parent = strategy.canonical(space.sample(rng))
        child = strategy.mutate(parent)
        depth_changed += child["depth"] != parent["depth"]
        embed_changed += child["embed"] != parent["embed"]
        kept = min(space.depths[parent["depth"]], space.depths[child["depth"]])
        for i in range(kept):  # layers both have: only P_m touches them
            for g in "hr":
                changed[g][0] += child[f"{g}{i}"] != parent[f"{g}{i}"]
                changed[g][1] += 1
        for i in range(space.depths[parent["depth"]], space.depths[child["depth"]]):
            assert child[f"h{i}"] in range(3)  # a layer added by a deeper depth: a random block
    # a re-draw is uniform over all k choices: the gene changes with probability P·(1 − 1/k)
    assert depth_changed / n == pytest.approx(p_d * 2 / 3, abs=0.03)
    assert embed_changed / n == pytest.approx(p_e * 2 / 3, abs=0.03)
    assert changed["h"][0] / changed["h"][1] == pytest.approx(p_m * 2 / 3, abs=0.015)
    assert changed["r"][0] / changed["r"][1] == pytest.approx(p_m / 2, abs=0.015)


def test_a_deeper_depth_draws_the_new_layers_at_random():
    space = vit(depths=(1, 8), num_heads=(1, 2, 3, 4))
    strategy = make(space, Budget(), seed=8, mutate_prob=0.0, depth_prob=1.0, embed_prob=0.0)
    parent = strategy.canonical(space.arch([0] * len(space.genes)))
    grown = [c for c in (strategy.mutate(parent) for _ in range(100)) if c["depth"] == 1]
    heads = [c[f"h{i}"] for c in grown for i in range(1, 8)]
    assert grown and all(c["h0"] == 0 and c["r0"] == 0 for c in grown)
    assert {0, 1, 2, 3} <= set(heads)


# -- search quality ------------------------------------------------------------------------------------------------
def test_best_reward_improves_and_beats_random_search_on_average():
    space = vit(name="t8", depths=(4, 6, 8), num_heads=(1, 2, 3), mlp_ratios=(1.0, 2.0, 3.0))
    best = {"random": [], "evolution": []}
    for seed in range(4):
        reward, budget = target_reward(space, seed)
        ev = ConstrainedEvolution(space, budget, seed, generations=10, population=20, top_k=5, mutation_size=10,
                                  crossover_size=10)
        rs = RandomSearch(space, budget, seed, generations=10, population=20)
        asked = run(ev, reward)
        run(rs, reward)
        per_gen = [max(reward(a) for a in g) for g in asked]
        running = [max(per_gen[:i + 1]) for i in range(len(per_gen))]
        assert running[-1] > running[0], running
        best["evolution"].append(ev.best()[0][1])
        best["random"].append(rs.best()[0][1])
    mean = {k: sum(v) / len(v) for k, v in best.items()}
    assert mean["evolution"] > mean["random"] + 1.0, mean


# -- other spaces --------------------------------------------------------------------------------------------------
def test_layer_genes_are_grouped_by_their_index():
    assert [layer_index(g) for g in ("h3", "r12", "l2_g1", "embed", "depth")] == [3, 12, 2, None, None]
    s = make(vit(), Budget())
    assert s.global_genes == ["embed"] and s.depth_gene == "depth" and s.depths == (2, 3, 4)
    assert s.layer_genes == [[f"h{i}", f"r{i}"] for i in range(4)]


def test_a_space_without_a_depth_gene_evolves_whole_layer_blocks(tiny_space):
    budget = Budget(mflops=tiny_space.min_cost().mflops * 1.3)
    strategy = make(tiny_space, budget, seed=9, generations=4)
    n = len(tiny_space.genes) // 2
    assert strategy.depth_gene is None and strategy.global_genes == []
    assert strategy.layer_genes == [[f"b{i}", f"w{i}"] for i in range(n)]
    asked = run(strategy, lambda a: -float(sum(a.choices())))
    flat = [a for g in asked for a in g]
    assert len(set(flat)) == len(flat) == 4 * 12
    assert all(tiny_space.cost(a).mflops <= budget.mflops for a in flat)
    a = tiny_space.arch([0] * len(tiny_space.genes))
    b = tiny_space.arch([3, 9] * n)
    for _ in range(20):
        child = strategy.crossover(a, b)
        assert all((child[f"b{i}"], child[f"w{i}"]) in ((0, 0), (3, 9)) for i in range(n))


# -- resume --------------------------------------------------------------------------------------------------------
class Killed(Exception):
    pass


def evaluator(space: ViTSpace, die_after: int | None = None) -> FunctionEvaluator:
    reward, _ = target_reward(space, 0)
    calls = []

    def fn(arch: Arch) -> dict[str, float]:
        if die_after is not None and len(calls) >= die_after:
            raise Killed()
        calls.append(arch)
        return {"top1": reward(arch)}

    ev = FunctionEvaluator(fn, ["top1"])
    ev.calls = calls
    return ev


@pytest.mark.parametrize("die_after", [10, 24, 31])  # mid-generation 0, after generation 1 (of 12), mid-generation 2
def test_a_killed_search_resumes_through_run_search_to_the_same_history(tmp_path, die_after):
    space = vit()
    budget = Budget(params=median_params(space))
    reward = WeightedSum({"top1": 1.0})
    full = run_search(make(space, budget, seed=10), space, evaluator(space), reward, budget, tmp_path / "full",
                      progress=False)

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run_search(make(space, budget, seed=10), space, evaluator(space, die_after), reward, budget, out,
                   progress=False)
    with open(out / "history.jsonl", "a") as f:  # a kill during a write: a torn last line
        f.write('{"gen": 3, "arch": {"sp')
    ev = evaluator(space)
    resumed = run_search(make(space, budget, seed=10), space, ev, reward, budget, out, progress=False)

    assert artifacts.read_jsonl(out / "history.jsonl") == artifacts.read_jsonl(tmp_path / "full" / "history.jsonl")
    assert resumed.best["arch"] == full.best["arch"]
    assert len(ev.calls) == len(full.records) - die_after  # every candidate is new; finished ones are not redone


# -- configuration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,key", [
    ({"population": 0}, "search.strategy.population"),
    ({"generations": 1.5}, "search.strategy.generations"),
    ({"top_k": 0}, "search.strategy.top_k"),
    ({"top_k": 13}, "search.strategy.top_k"),
    ({"mutation_size": -1}, "search.strategy.mutation_size"),
    ({"crossover_size": 13}, "search.strategy.crossover_size"),
    ({"crossover_size": "6"}, "search.strategy.crossover_size"),
    ({"mutation_size": 7}, "search.strategy.mutation_size"),
    ({"mutate_prob": 1.2}, "search.strategy.mutate_prob"),
    ({"depth_prob": -0.1}, "search.strategy.depth_prob"),
    ({"embed_prob": True}, "search.strategy.embed_prob"),
    ({"same_depth_crossover": "yes"}, "search.strategy.same_depth_crossover"),
])
def test_bad_hyper_parameters_are_one_line_config_errors_naming_the_key(kw, key):
    with pytest.raises(ConfigError) as err:
        make(vit(), Budget(), **kw)
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


def test_defaults_are_autoformers_and_the_config_instantiates():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "search" / "constrained_evolution.yaml")
    space = vit()
    s = instantiate(conf.strategy, space=space, budget=Budget(), seed=0)
    assert isinstance(s, ConstrainedEvolution)
    assert (s.generations, s.population, s.top_k, s.mutation_size, s.crossover_size) == (20, 50, 10, 25, 25)
    assert (s.mutate_prob, s.depth_prob, s.embed_prob, s.same_depth_crossover) == (0.2, 0.4, 0.4, True)
    d = ConstrainedEvolution(space, Budget(), 0)
    assert (d.generations, d.population, d.top_k, d.mutation_size, d.crossover_size) == (20, 50, 10, 25, 25)
    assert (d.mutate_prob, d.depth_prob, d.embed_prob, d.same_depth_crossover) == (0.2, 0.4, 0.4, True)


def test_the_strategy_is_pure_python():
    tree = ast.parse(inspect.getsource(nasx.search.constrained_evolution))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"torch", "numpy", "time", "os", "io", "pathlib"}, imported
