"""Containment-aware search (CAS) [nasx; REG-NAS, METHODS.md §4]: a search space restricted to the architectures
that contain a reference architecture — in every stage at least its depth, and in each of its active blocks at least
its kernel and expand ratio — so that the new family member inherits every weight of the previous one.

:class:`ContainingSpace` wraps a space that knows containment (``contains``, ``contain``, ``repair(..., floor=)``:
:class:`nasx.spaces.ofa.OFAMobileNetV3Space`). Sampling, mutation and crossover go through the wrapped space and
are then repaired into the constraint (every violated gene raised to the reference's), and budget repair never goes
below the reference; so any strategy searches inside the constraint without knowing it. The cheapest containing
architecture is the reference itself, so a budget below its cost fails at once, in one line.

:class:`CostFloorSpace` [nasx] keeps a member's candidates near its budget: every sampled, mutated, crossed or repaired
architecture is grown (one random live gene one step up at a time, only while the budget still admits it) until it
costs at least ``min_mflops``. REG-NAS's ``method.cost_floor`` (a fraction of each member's budget) uses it, so that a
search whose reward prefers the previous member unchanged still yields a larger member; the paper states no floor.
"""
from __future__ import annotations

import random

from nasx.arch import Arch, Budget, Cost, SearchSpace
from nasx.errors import ConfigError, InfeasibleBudgetError


class WrappedSpace(SearchSpace):
    """A space restricting another: the same name and genes, and everything it does not override (supernet,
    describe, decode, input geometry…) answered by the wrapped space."""

    def __init__(self, space: SearchSpace):
        self.space, self.name, self.genes = space, space.name, space.genes

    def __getattr__(self, item):
        if item == "space":  # not set yet (unpickling, or __init__ not run): no recursion
            raise AttributeError(item)
        return getattr(self.space, item)

    def cost(self, arch: Arch) -> Cost:
        return self.space.cost(arch)


class ContainingSpace(WrappedSpace):
    def __init__(self, space: SearchSpace, reference: Arch, label: str = "the reference"):
        if not hasattr(space, "contain"):
            raise ConfigError(f"space '{space.name}' does not define containment: CAS needs an elastic space "
                              f"(space=ofa_mbv3 or ofa_mbv3_cpu)")
        super().__init__(space)
        self.reference, self.label = space.validate(reference), label

    def min_cost(self) -> Cost:
        return self.space.cost(self.reference)

    def check_feasible(self, budget: Budget) -> None:
        ref = self.space.cost(self.reference)
        if budget.mflops is not None and ref.mflops > budget.mflops:
            raise InfeasibleBudgetError(f"budget of {budget.mflops:g} MFLOPs is below {self.label}'s cost "
                                        f"({ref.mflops:.3f} MFLOPs), which every containing arch exceeds")
        if budget.params is not None and ref.params > budget.params * 1e6:
            raise InfeasibleBudgetError(f"budget of {budget.params:g} M params is below {self.label}'s "
                                        f"{ref.params / 1e6:.4f} M params, which every containing arch exceeds")

    def contains_reference(self, arch: Arch) -> bool:
        return self.space.contains(arch, self.reference)

    def _in(self, arch: Arch) -> Arch:
        return self.space.contain(arch, self.reference)

    def repair(self, arch: Arch, budget: Budget, rng: random.Random) -> Arch:
        self.check_feasible(budget)
        return self.space.repair(self._in(arch), budget, rng, floor=self.reference)

    def sample(self, rng: random.Random) -> Arch:
        return self._in(self.space.sample(rng))

    def train_sample(self, rng: random.Random) -> Arch:
        return self._in(self.space.train_sample(rng))

    def mutate(self, arch: Arch, rng: random.Random, prob: float) -> Arch:
        return self._in(self.space.mutate(arch, rng, prob))

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        return self._in(self.space.crossover(a, b, rng))


class CostFloorSpace(WrappedSpace):
    def __init__(self, space: SearchSpace, min_mflops: float, budget: Budget):
        if not hasattr(space, "live_genes"):
            raise ConfigError(f"space '{space.name}': a cost floor needs an elastic space (ofa_mbv3, ofa_resnet50d)")
        super().__init__(space)
        self.min_mflops, self.budget = float(min_mflops), budget

    def min_cost(self) -> Cost:
        return self.space.min_cost()

    def grow(self, arch: Arch, rng: random.Random) -> Arch:
        """One random live gene one choice up at a time, while the budget admits it, until the floor is reached."""
        while self.space.cost(arch).mflops < self.min_mflops:
            options = [g for g in self.space.live_genes(arch) if arch[g] < self.genes[g] - 1]
            rng.shuffle(options)
            for g in options:
                bigger = arch.replace(**{g: arch[g] + 1})
                if self.budget.admits(self.space.cost(bigger)):
                    arch = bigger
                    break
            else:
                return arch  # the floor is out of reach inside the budget: as close as it gets
        return arch

    def repair(self, arch: Arch, budget: Budget, rng: random.Random, floor: Arch | None = None) -> Arch:
        kw = {} if floor is None else {"floor": floor}
        return self.grow(self.space.repair(arch, budget, rng, **kw), rng)

    def sample(self, rng: random.Random) -> Arch:
        return self.grow(self.space.sample(rng), rng)

    def train_sample(self, rng: random.Random) -> Arch:
        return self.space.train_sample(rng)

    def mutate(self, arch: Arch, rng: random.Random, prob: float) -> Arch:
        return self.grow(self.space.mutate(arch, rng, prob), rng)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        return self.grow(self.space.crossover(a, b, rng), rng)
