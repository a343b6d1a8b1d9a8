"""Random search: the baseline every strategy is compared with (MixPath's Fig. 1 compares NSGA-II with it).

Each generation draws ``population`` architectures uniformly from the budget-constrained space
(:meth:`SearchSpace.sample_within`: rejection sampling, then repair), re-drawing any already evaluated or already
drawn in this generation, so a fixed number of evaluations covers as many distinct archs as the space allows.
"""
from __future__ import annotations

from nasx.arch import Arch, Budget, SearchSpace
from nasx.search.strategy import Strategy


class RandomSearch(Strategy):
    """Uniform sampling inside the budget, without repeats; ``generations × population`` evaluations in all."""

    def __init__(self, space: SearchSpace, budget: Budget, seed: int, generations: int = 20, population: int = 50):
        super().__init__(space, budget, seed, generations, population)

    def _propose(self) -> list[Arch]:
        taken = self._taken()
        return [self._sample_new(taken) for _ in range(self.population)]
