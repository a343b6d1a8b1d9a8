"""Evolutionary search under a budget: CMP-NAS's search (METHODS.md §1), after SPOS.

What comes from where:

- [seed] the hyper-parameter values: 20 generations, population 50, crossover size 40, mutate chance 0.1,
  random-select chance 0.1, under the tier's FLOPs budget. These are the constructor's defaults.
- [ref] an arch already evaluated is never proposed again (SPOS keeps a visited dict; METHODS.md "Evaluation
  cache").
- [nasx] the formulation around those numbers, since the main paper is not at hand:

  * generation 0 is ``population`` distinct uniform archs inside the budget (as :class:`RandomSearch`);
  * parents are the top ``top_k`` (k = 10) of ALL archs evaluated so far, a global top-k as SPOS keeps, not only
    of the last generation; a reward of ``-inf`` (failed or infeasible) never makes a parent, and while no arch
    has a finite reward the generation is drawn at random again;
  * ``crossover_size`` children are each made in this order: uniform per-gene crossover of two distinct random
    parents (with a single parent, the parent itself), then each gene re-drawn with probability
    ``mutate_prob``, then, with probability ``random_prob``, the whole child replaced by a fresh random arch;
  * the remaining ``population - crossover_size`` slots are filled by mutating a random parent with
    ``mutate_prob``;
  * a child outside the budget is re-made (up to :data:`BUDGET_TRIES` times) and then repaired
    (:meth:`SearchSpace.repair`); a child already evaluated or already in this generation is re-made (up to
    :data:`DUPLICATE_TRIES` times) and then replaced by a fresh random arch, so no evaluation is wasted on a
    repeat unless the budget admits almost nothing new.
"""
from __future__ import annotations

from typing import Callable

from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import ConfigError
from nasx.search.strategy import Strategy, check_positive_int, check_probability

# Bounded re-draws keep every generation finite however tight the budget or small the space.
BUDGET_TRIES = 10
DUPLICATE_TRIES = 20


class Evolution(Strategy):
    """Top-k evolution: crossover → mutate → random-replace children, the rest mutants of the parents."""

    def __init__(self, space: SearchSpace, budget: Budget, seed: int, generations: int = 20, population: int = 50,
                 top_k: int = 10, crossover_size: int = 40, mutate_prob: float = 0.1, random_prob: float = 0.1):
        super().__init__(space, budget, seed, generations, population)
        self.top_k = check_positive_int("top_k", top_k)
        self.crossover_size = check_positive_int("crossover_size", crossover_size)
        self.mutate_prob = check_probability("mutate_prob", mutate_prob)
        self.random_prob = check_probability("random_prob", random_prob)
        if top_k > population:
            raise ConfigError(f"search.strategy.top_k must be at most search.strategy.population ({population}), got {top_k}")
        if crossover_size > population:
            raise ConfigError(
                f"search.strategy.crossover_size must be at most search.strategy.population ({population}), got {crossover_size}")

    def parents(self) -> list[Arch]:
        """The current parents: the ``top_k`` best evaluated archs with a finite (or ``+inf``) reward."""
        return [a for a, r in self.best(self.top_k) if r > float("-inf")]

    def _propose(self) -> list[Arch]:
        taken = self._taken()
        parents = self.parents()
        if not parents:
            return [self._sample_new(taken) for _ in range(self.population)]
        children = [self._child(lambda: self._crossover_child(parents), taken) for _ in range(self.crossover_size)]
        children += [self._child(lambda: self.space.mutate(self.rng.choice(parents), self.rng, self.mutate_prob),
                                 taken) for _ in range(self.population - self.crossover_size)]
        return children

    def _crossover_child(self, parents: list[Arch]) -> Arch:
        if len(parents) >= 2:
            a, b = self.rng.sample(parents, 2)
            child = self.space.crossover(a, b, self.rng)
        else:  # top_k = 1 (or one finite reward so far): crossover degenerates to mutation
            child = parents[0]
        child = self.space.mutate(child, self.rng, self.mutate_prob)
        if self.rng.random() < self.random_prob:
            child = self.space.sample_within(self.budget, self.rng)
        return child

    def _within_budget(self, make: Callable[[], Arch]) -> Arch:
        """``make()`` until the child fits the budget; after :data:`BUDGET_TRIES` misses, the last one repaired."""
        for _ in range(BUDGET_TRIES):
            child = make()
            if self.budget.admits(self.space.cost(child)):
                return child
        return self.space.repair(child, self.budget, self.rng)

    def _child(self, make: Callable[[], Arch], taken: set[Arch]) -> Arch:
        """A feasible child not in ``taken`` (evaluated or already in this generation); adds it to ``taken``."""
        for _ in range(DUPLICATE_TRIES):
            child = self._within_budget(make)
            if child not in taken:
                taken.add(child)
                return child
        # the parents' neighbourhood is used up (e.g. mutate_prob = 0): a fresh arch still teaches something new
        return self._sample_new(taken)
