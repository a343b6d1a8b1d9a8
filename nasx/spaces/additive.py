"""Spaces whose cost is a sum of per-unit table look-ups (a unit: a group of genes such as a layer's block and
width), with exact minimum cost, feasibility and repair under FLOPs and/or parameter budgets."""
from __future__ import annotations

import math
import random
from typing import Sequence

from nasx.arch import Arch, Budget, Cost, SearchSpace
from nasx.errors import InfeasibleBudgetError


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
