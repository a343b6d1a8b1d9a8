"""What the once-for-all spaces (``ofa.py``, ``ofa_resnet.py``) share: a space whose every gene is an elastic
dimension ordered from small to large, where the smallest choice of everything is the cheapest arch, and where
containment — one arch holding all of another's weights — is every *live* gene (one that changes the network, see
``live_genes``) at least the other's [nasx CAS, REG-NAS]."""
from __future__ import annotations

import random
from abc import abstractmethod

from nasx.arch import Arch, Budget, Cost, SearchSpace
from nasx.errors import InfeasibleBudgetError


class ElasticSpace(SearchSpace):
    @abstractmethod
    def live_genes(self, arch: Arch) -> list[str]:
        """The genes that change the network of ``arch`` (those of blocks past a depth do not)."""

    def largest(self) -> Arch:
        return Arch(self.name, tuple((g, n - 1) for g, n in self.genes.items()))

    def smallest(self) -> Arch:
        return Arch(self.name, tuple((g, 0) for g in self.genes))

    def min_cost(self) -> Cost:
        return self.cost(self.smallest())  # every elastic dimension raises the cost

    def repair(self, arch: Arch, budget: Budget, rng: random.Random, floor: Arch | None = None) -> Arch:
        """Lower random live genes (each to a random smaller choice, never below ``floor``'s) until ``arch`` fits."""
        self.check_feasible(budget)
        arch = self.validate(arch)
        while not budget.admits(self.cost(arch)):
            low = (lambda g: 0) if floor is None else (lambda g: floor[g])  # noqa: E731
            reducible = [g for g in self.live_genes(arch) if arch[g] > low(g)]
            if not reducible:
                raise InfeasibleBudgetError(f"no architecture of space '{self.name}' fits {budget}"
                                            + ("" if floor is None else " and contains the reference"))
            g = rng.choice(reducible)
            arch = arch.replace(**{g: rng.randrange(low(g), arch[g])})
        return arch

    def contains(self, big: Arch, small: Arch) -> bool:
        """Whether ``big`` holds all of ``small``'s weights: each of ``small``'s live genes at least as large."""
        big, small = self.validate(big), self.validate(small)
        return all(big[g] >= small[g] for g in self.live_genes(small))

    def contain(self, arch: Arch, ref: Arch) -> Arch:
        """The nearest arch (gene by gene) containing ``ref``: every violated live gene raised to ``ref``'s choice."""
        arch, ref = self.validate(arch), self.validate(ref)
        return arch.replace(**{g: ref[g] for g in self.live_genes(ref) if arch[g] < ref[g]})
