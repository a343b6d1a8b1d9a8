"""Architectures and search spaces.

An :class:`Arch` is an immutable, hashable choice (an ``int``) per named gene, tagged with the name of its space.
It prints as ``space:gene=choice,...`` and round-trips through JSON. A :class:`SearchSpace` owns the genes, samples
and varies architectures with a :class:`random.Random` it is handed (so strategies stay pure and resumable), and
knows their cost (MFLOPs as multiply-accumulates, and parameters).
"""
from __future__ import annotations

import json
import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Sequence

from nasx.errors import ArchError, InfeasibleBudgetError


@dataclass(frozen=True)
class Arch:
    """One architecture: ``genes`` is a tuple of ``(gene name, choice index)`` in the space's gene order."""

    space: str
    genes: tuple[tuple[str, int], ...]

    def __getitem__(self, gene: str) -> int:
        for name, choice in self.genes:
            if name == gene:
                return choice
        raise KeyError(gene)

    def choices(self) -> tuple[int, ...]:
        return tuple(c for _, c in self.genes)

    def replace(self, **changes: int) -> "Arch":
        return Arch(self.space, tuple((n, changes.get(n, c)) for n, c in self.genes))

    def to_dict(self) -> dict:
        return {"space": self.space, "genes": {n: c for n, c in self.genes}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @staticmethod
    def from_dict(d: Mapping, where: str = "arch") -> "Arch":
        if not isinstance(d, Mapping) or "space" not in d or "genes" not in d or not isinstance(d["genes"], Mapping):
            raise ArchError(f"{where}: expected an object {{'space': <name>, 'genes': {{<gene>: <int>, ...}}}}")
        genes = []
        for name, choice in d["genes"].items():
            if isinstance(choice, bool) or not isinstance(choice, int):
                raise ArchError(f"{where}: gene '{name}' must be an integer choice, got {choice!r}")
            genes.append((str(name), choice))
        return Arch(str(d["space"]), tuple(genes))

    @staticmethod
    def from_json(text: str, where: str = "arch") -> "Arch":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArchError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        return Arch.from_dict(d.get("arch", d) if isinstance(d, dict) else d, where)

    def __str__(self) -> str:
        return f"{self.space}:" + ",".join(f"{n}={c}" for n, c in self.genes)


@dataclass(frozen=True)
class Cost:
    mflops: float  # millions of multiply-accumulates (one multiply-add counts as one FLOP, as in the seeds' tables)
    params: int  # number of parameters of the extracted static model


@dataclass(frozen=True)
class Budget:
    """Upper bounds on cost; ``None`` means unbounded. ``params`` is in millions."""

    mflops: float | None = None
    params: float | None = None

    def admits(self, cost: Cost) -> bool:
        return (self.mflops is None or cost.mflops <= self.mflops) and (
            self.params is None or cost.params <= self.params * 1e6)

    def __str__(self) -> str:
        parts = ([f"{self.mflops:g} MFLOPs"] if self.mflops is not None else []) + (
            [f"{self.params:g} M params"] if self.params is not None else [])
        return " and ".join(parts) or "no budget"


class SearchSpace(ABC):
    """Genes and their number of choices, with sampling, variation and cost.

    Subclasses set ``name`` and ``genes`` (an ordered mapping gene -> number of choices) and implement
    :meth:`cost`, :meth:`min_cost` and :meth:`repair`; :class:`AdditiveSearchSpace` does all three from
    per-unit cost tables.
    """

    name: str
    genes: dict[str, int]

    # -- validation --------------------------------------------------------------------------------------------
    def validate(self, arch: Arch, where: str = "arch") -> Arch:
        if arch.space != self.name:
            raise ArchError(f"{where}: belongs to space '{arch.space}', expected '{self.name}'")
        names = [n for n, _ in arch.genes]
        for n in names:
            if n not in self.genes:
                raise ArchError(f"{where}: unknown gene '{n}' (space '{self.name}' has {self._gene_summary()})")
        for n in self.genes:
            if n not in names:
                raise ArchError(f"{where}: gene '{n}' is missing")
        for n, c in arch.genes:
            if not 0 <= c < self.genes[n]:
                raise ArchError(f"{where}: gene '{n}' has choice {c}, expected 0..{self.genes[n] - 1}")
        # normalise the gene order
        return Arch(self.name, tuple((n, arch[n]) for n in self.genes))

    def _gene_summary(self) -> str:
        names = list(self.genes)
        return f"genes {names[0]}..{names[-1]}" if len(names) > 4 else f"genes {', '.join(names)}"

    def arch(self, choices: Sequence[int] | Mapping[str, int]) -> Arch:
        if isinstance(choices, Mapping):
            return self.validate(Arch(self.name, tuple((n, int(c)) for n, c in choices.items())))
        if len(choices) != len(self.genes):
            raise ArchError(f"arch: {len(choices)} choices given, space '{self.name}' has {len(self.genes)} genes")
        return self.validate(Arch(self.name, tuple(zip(self.genes, (int(c) for c in choices)))))

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
            return True
        except ArchError:
            return False

    # -- cost ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def cost(self, arch: Arch) -> Cost:
        """Exact cost of the extracted static model."""

    @abstractmethod
    def min_cost(self) -> Cost:
        """The cheapest architecture's cost, per metric."""

    def check_feasible(self, budget: Budget) -> None:
        """Fail fast if no architecture fits: an infeasible budget is an error, never an endless search."""
        lo = self.min_cost()
        if budget.mflops is not None and lo.mflops > budget.mflops:
            raise InfeasibleBudgetError(
                f"budget of {budget.mflops:g} MFLOPs is infeasible: the smallest architecture of space "
                f"'{self.name}' costs {lo.mflops:.3f} MFLOPs")
        if budget.params is not None and lo.params > budget.params * 1e6:
            raise InfeasibleBudgetError(
                f"budget of {budget.params:g} M params is infeasible: the smallest architecture of space "
                f"'{self.name}' has {lo.params / 1e6:.4f} M params")

    @abstractmethod
    def repair(self, arch: Arch, budget: Budget, rng: random.Random) -> Arch:
        """A nearby architecture inside ``budget``; must terminate for any feasible budget."""

    # -- sampling and variation ----------------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> Arch:
        """Uniform over every gene independently."""
        return Arch(self.name, tuple((n, rng.randrange(k)) for n, k in self.genes.items()))

    def train_sample(self, rng: random.Random) -> Arch:
        """The supernet's training distribution; uniform (:meth:`sample`) unless a method says otherwise."""
        return self.sample(rng)

    def mutate(self, arch: Arch, rng: random.Random, prob: float) -> Arch:
        """Each gene is redrawn uniformly with probability ``prob``."""
        return Arch(self.name, tuple(
            (n, rng.randrange(self.genes[n]) if rng.random() < prob else c) for n, c in arch.genes))

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform per-gene crossover."""
        return Arch(self.name, tuple((n, ca if rng.random() < 0.5 else cb)
                                     for (n, ca), (_, cb) in zip(a.genes, b.genes)))

    def sample_within(self, budget: Budget, rng: random.Random, tries: int = 100) -> Arch:
        """Uniform sample conditioned on the budget by rejection; after ``tries`` misses, a repaired sample."""
        arch = self.sample(rng)
        for _ in range(tries):
            if budget.admits(self.cost(arch)):
                return arch
            arch = self.sample(rng)
        return self.repair(arch, budget, rng)


def step_rng(seed: int, step: int) -> random.Random:
    """The RNG for training step ``step``: the sampled arch is a pure function of (seed, step).

    Identical on every DDP rank without communication, and reproducible on resume.
    """
    return random.Random(f"nasx:{seed}:{step}")




class AdditiveSearchSpace(SearchSpace):
    """A space whose cost is a fixed part plus one term per *unit* (a group of genes, e.g. a layer's block and
    width), each term depending only on its unit's choices.

    Subclasses call :meth:`_set_cost_tables` with, per unit, its gene names and a table from the unit's choice
    tuple to ``(MFLOPs, params)``. Then :meth:`cost` is a sum of table look-ups — cheap enough for evolution to
    check thousands of candidates — and :meth:`min_cost`, :meth:`check_feasible` and :meth:`repair` are exact,
    for a FLOPs and a params bound together too.
    """

    def _set_cost_tables(self, fixed: Cost, units: Sequence[tuple[tuple[str, ...], dict]]) -> None:
        gene_index = {g: i for i, g in enumerate(self.genes)}
        self._fixed = fixed
        self._units = [(tuple(gene_index[g] for g in names), names, table) for names, table in units]
        self._unit_min = [min(table.items(), key=lambda kv: kv[1]) for _, _, table in self._units]
        self._unit_min_params = [min(table.items(), key=lambda kv: kv[1][1]) for _, _, table in self._units]
        self._fits: dict[Budget, tuple[tuple[int, ...], ...] | None] = {}  # budget -> unit choices that fit it

    def _sum(self, unit_costs) -> Cost:
        """Fixed part plus unit costs, added in unit order as :meth:`cost` does, so equal archs cost equal floats."""
        mflops, params = self._fixed.mflops, self._fixed.params
        for m, p in unit_costs:
            mflops += m
            params += p
        return Cost(mflops, int(params))

    def cost(self, arch: Arch) -> Cost:
        c = arch.choices()
        return self._sum(table[tuple(c[i] for i in idx)] for idx, _, table in self._units)

    def min_cost(self) -> Cost:
        # summed like cost(): a budget equal to the cheapest arch's cost must admit it, to the last bit
        return Cost(self._sum(v for _, v in self._unit_min).mflops,
                    self._sum(v for _, v in self._unit_min_params).params)

    def check_feasible(self, budget: Budget) -> None:
        """Each bound against the per-metric minimum, then both together: the FLOPs-cheapest choices may have many
        params, so both bounds can be met alone and not at once."""
        super().check_feasible(budget)
        if budget.mflops is not None and budget.params is not None and self._fit_both(budget) is None:
            raise InfeasibleBudgetError(f"no architecture of space '{self.name}' fits {budget}, though each bound "
                                        f"alone is met by some architecture")

    def _fit_both(self, budget: Budget) -> tuple[tuple[int, ...], ...] | None:
        """Per unit, a choice such that the arch fits both bounds of ``budget``, or ``None`` if no arch does.

        First cheap candidates: per unit the choice minimising a weighted sum of the normalised costs, then trading
        one metric for the other from the per-metric cheapest arch. If neither fits, the exact search of
        :meth:`_pareto_fit` decides. Cached per budget.
        """
        cache = self.__dict__.setdefault("_fits", {})  # also for a space unpickled from before the cache
        if budget not in cache:
            cache[budget] = self._weighted_fit(budget) or self._exchange_fit(budget, 0) or \
                self._exchange_fit(budget, 1) or self._pareto_fit(budget)
        return cache[budget]

    def _weighted_fit(self, budget: Budget) -> tuple[tuple[int, ...], ...] | None:
        sm, sp = max(abs(budget.mflops), 1e-12), max(abs(budget.params * 1e6), 1e-12)
        for lam in (1.0, 0.0, 0.5, 0.25, 0.75, 0.1, 0.9):
            choices = tuple(min(table.items(), key=lambda kv: (lam * kv[1][0] / sm + (1 - lam) * kv[1][1] / sp,
                                                               kv[1]))[0] for _, _, table in self._units)
            if budget.admits(self._sum(table[c] for c, (_, _, table) in zip(choices, self._units))):
                return choices
        return None

    def _exchange_fit(self, budget: Budget, first: int) -> tuple[tuple[int, ...], ...] | None:
        """From the cheapest choices on metric ``first`` (0 MFLOPs, 1 params), trade it for the other: while the
        other is over its bound, make the unit change that saves the most of the other per unit of ``first`` spent
        and keeps ``first`` within bound. Each change lowers one unit's cost on the other metric, so there are at
        most as many changes as choices."""
        other = 1 - first
        bounds = (budget.mflops, budget.params * 1e6)
        least = self._unit_min if first == 0 else self._unit_min_params
        choices = [c for c, _ in least]
        start = self._sum(v for _, v in least)
        total = [start.mflops, float(start.params)]
        while total[other] > bounds[other]:
            best, best_gain = None, 0.0
            for u, (_, _, table) in enumerate(self._units):
                now = table[choices[u]]
                for c, v in table.items():
                    saved, spent = now[other] - v[other], v[first] - now[first]
                    if saved <= 0 or total[first] + spent > bounds[first]:
                        continue
                    gain = math.inf if spent <= 0 else saved / spent
                    if gain > best_gain:
                        best, best_gain = (u, c), gain
            if best is None:
                return None
            u, c = best
            old, choices[u] = self._units[u][2][choices[u]], c
            total = [t - o + n for t, o, n in zip(total, old, self._units[u][2][c])]
        choices = tuple(choices)
        # the running totals drift from cost()'s sums: the exact check decides
        return choices if budget.admits(self._sum(t[c] for c, (_, _, t) in zip(choices, self._units))) else None

    def _pareto_fit(self, budget: Budget) -> tuple[tuple[int, ...], ...] | None:
        """Exact: dynamic programming over the units, keeping the partial (MFLOPs, params) sums on the Pareto front
        that can still fit. Milliseconds on the spaces here; tables whose many choices trade FLOPs against params
        one for one, with a budget on the edge, can make the front, and the search, large."""
        # A fitting arch has λ·MFLOPs/sm + (1 − λ)·params/sp ≤ λ·bound_m/sm + (1 − λ)·bound_p/sp for every λ in
        # [0, 1], and the least such weighted cost of the units left is a sum of per-unit minima: a partial sum
        # over it for some λ can no longer fit. λ = 0 and 1 are the per-metric bounds; the λ maximising the gap
        # at the start (the Lagrangian dual, concave in λ) proves most infeasible budgets before any search.
        bm, bp = budget.mflops, budget.params * 1e6
        sm, sp = max(abs(bm), 1e-12), max(abs(bp), 1e-12)
        tables = [table for _, _, table in self._units]

        def gap(lam: float) -> float:
            least = sum(min(lam * m / sm + (1 - lam) * p / sp for m, p in t.values()) for t in tables)
            fixed = lam * self._fixed.mflops / sm + (1 - lam) * self._fixed.params / sp
            return fixed + least - (lam * bm / sm + (1 - lam) * bp / sp)

        lo, hi = 0.0, 1.0
        for _ in range(40):
            a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
            lo, hi = (a, hi) if gap(a) < gap(b) else (lo, b)
        lams = sorted({0.0, 1.0, (lo + hi) / 2, *(k / 10 for k in range(1, 10))})
        n = len(tables)
        rest = [[0.0] * len(lams) for _ in range(n + 1)]  # rest[u][j]: least weighted cost of units u.. at lams[j]
        for u in reversed(range(n)):
            rest[u] = [r + min(lam * m / sm + (1 - lam) * p / sp for m, p in tables[u].values())
                       for r, lam in zip(rest[u + 1], lams)]
        # the bounds are summed in another order than cost(): prune only sums clearly over, check exactly below
        rhs = [lam * bm / sm + (1 - lam) * bp / sp + 1e-9 for lam in lams]

        def may_fit(m: float, p: float, u: int) -> bool:
            return all(lam * m / sm + (1 - lam) * p / sp + r <= c for lam, r, c in zip(lams, rest[u], rhs))

        front = [(self._fixed.mflops, self._fixed.params, ())]  # (MFLOPs, params, choices as nested pairs)
        if not may_fit(*front[0][:2], 0):
            return None
        for u, table in enumerate(tables):
            grown = sorted(((m + cm, p + cp, (choice, path)) for m, p, path in front
                            for choice, (cm, cp) in table.items() if may_fit(m + cm, p + cp, u + 1)),
                           key=lambda s: (s[0], s[1]))
            front, least_p = [], math.inf
            for s in grown:  # the Pareto front: a dominated sum fits nowhere the one dominating it does not
                if s[1] < least_p:
                    front.append(s)
                    least_p = s[1]
        for m, p, path in front:
            if budget.admits(Cost(m, int(p))):  # the sums cost() makes: same order, same floats
                choices = []
                while path:
                    choice, path = path
                    choices.append(choice)
                return tuple(reversed(choices))
        return None

    def _set_unit(self, arch: Arch, u: int, choice: tuple[int, ...]) -> Arch:
        return arch.replace(**dict(zip(self._units[u][1], choice)))

    def repair(self, arch: Arch, budget: Budget, rng: random.Random) -> Arch:
        """A nearby arch inside ``budget``; an arch that fits is returned as it is.

        One bound: randomly chosen units go to their cheapest choice on that metric until the arch fits — at most
        one pass, since all of them at their cheapest cost :meth:`min_cost`, which :meth:`check_feasible` compared
        with the budget. Both bounds: the FLOPs-cheapest choice may have the most params, so each randomly chosen
        unit goes to the choice that most lowers the excess over both bounds (relative to each bound), the smaller
        normalised cost sum among equals; if one pass does not fit, the arch becomes an exact fit found by
        :meth:`_fit_both` and its units go back to their original choices, in random order, wherever that keeps it
        inside. Infeasible only when no arch fits.
        """
        self.check_feasible(budget)
        arch = self.validate(arch)
        if budget.admits(self.cost(arch)):
            return arch
        order = list(range(len(self._units)))
        rng.shuffle(order)
        if budget.mflops is None or budget.params is None:
            cheapest = self._unit_min if budget.mflops is not None else self._unit_min_params
            for u in order:
                arch = self._set_unit(arch, u, cheapest[u][0])
                if budget.admits(self.cost(arch)):
                    return arch
            # unreachable: all units at their cheapest cost min_cost(), which check_feasible compared with the budget
            raise InfeasibleBudgetError(f"no architecture of space '{self.name}' fits {budget}")
        bm, bp = budget.mflops, budget.params * 1e6
        sm, sp = max(abs(bm), 1e-12), max(abs(bp), 1e-12)
        original = arch
        for u in order:
            idx, _, table = self._units[u]
            c = arch.choices()
            total = self.cost(arch)
            um, up = table[tuple(c[i] for i in idx)]

            def score(kv):
                cm, cp = kv[1]
                m, p = total.mflops - um + cm, total.params - up + cp
                return max(0.0, (m - bm) / sm) + max(0.0, (p - bp) / sp), cm / sm + cp / sp

            arch = self._set_unit(arch, u, min(table.items(), key=score)[0])
            if budget.admits(self.cost(arch)):
                return arch
        fit = self._fit_both(budget)  # check_feasible has made sure there is one
        arch = original
        for u, choice in enumerate(fit):
            arch = self._set_unit(arch, u, choice)
        for u in order:
            back = self._set_unit(arch, u, tuple(original.choices()[i] for i in self._units[u][0]))
            if budget.admits(self.cost(back)):
                arch = back
        return arch
