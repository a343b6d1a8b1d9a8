"""Elite spaces and NSS's evaluation protocol (METHODS.md §2, supplementary Tab. 1). Pure functions: no tensors.

* ``elite_space(probs)``: the most probable candidate space per stage [nasx].
* ``sample_until_within``: draw architectures — from given candidate spaces (an elite space) or uniformly from the
  expanded space — until one lands within ``tolerance`` of the MFLOPs target; report how many draws it took and the
  deviation |Δ| in %. Bounded by ``max_samples``: a target nothing reaches ends the search with ``found=False``,
  never an endless loop.
* :class:`EliteSampling`: that protocol as a strategy of the search loop.
"""
from __future__ import annotations

import random
from typing import Sequence

from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import ConfigError
from nasx.search.strategy import Strategy, check_positive_int


def elite_space(probs: Sequence[Sequence[float]]) -> tuple[int, ...]:
    """Index of the most probable candidate space of each stage (first on ties)."""
    return tuple(max(range(len(p)), key=lambda j: (p[j], -j)) for p in probs)


def sample_until_within(space, target_mflops: float, tolerance: float, rng: random.Random,
                        spaces: tuple[int, ...] | None = None, max_samples: int = 100_000) -> dict:
    """Draw until ``|MFLOPs − target| ≤ tolerance · target``.

    Returns ``{"found", "samples", "arch", "mflops", "delta_pct"}``; ``arch`` is the found one as a dict (or the
    closest seen when none was found within ``max_samples``).
    """
    best: tuple[float, Arch] | None = None
    for n in range(1, max_samples + 1):
        arch = space.sample(rng) if spaces is None else space.sample_in(spaces, rng)
        mflops = space.cost(arch).mflops
        dev = abs(mflops - target_mflops) / target_mflops
        if best is None or dev < best[0]:
            best = (dev, arch)
        if dev <= tolerance:
            return {"found": True, "samples": n, "arch": arch.to_dict(), "mflops": mflops, "delta_pct": 100 * dev}
    dev, arch = best
    return {"found": False, "samples": max_samples, "arch": arch.to_dict(), "mflops": space.cost(arch).mflops,
            "delta_pct": 100 * dev}


class EliteSampling(Strategy):
    """NSS's protocol as an ask/tell strategy, so it runs through the search loop (``history.jsonl``, resume).

    ``repeats`` independent runs of :func:`sample_until_within`; run k draws with ``Random(f"{seed}:{k}")``, from
    the candidate spaces ``spaces`` (an elite space) or uniformly from the expanded space (``spaces=None``), until an
    arch lands within ``tolerance`` of ``target_mflops`` or ``max_samples`` were drawn. One generation is one run; a
    round asks at most ``population`` draws and stops at the first hit, so the history holds exactly the protocol's
    draws. The deviation comes from the space's exact cost, not from what the loop tells.

    A space whose cheapest and dearest archs (``space.corner_archs``) both miss the window on the same side can never
    land in it [nasx]: such a run draws nothing and reports what ``max_samples`` draws would — not found,
    ``samples = max_samples`` — with the space's arch nearest the target (its dearest or its cheapest).
    """

    def __init__(self, space: SearchSpace, budget: Budget, seed, target_mflops: float, tolerance: float = 0.1,
                 repeats: int = 20, max_samples: int = 100_000, population: int = 256,
                 spaces: Sequence[int] | None = None):
        check_positive_int("repeats", repeats)
        super().__init__(space, budget, seed=f"{seed}:0", generations=repeats, population=population)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
            raise ConfigError(f"search.strategy.tolerance must lie strictly between 0 and 1, got {tolerance!r}")
        self.max_samples = check_positive_int("max_samples", max_samples)
        self.key, self.target, self.tolerance = seed, float(target_mflops), float(tolerance)
        self.spaces = None if spaces is None else tuple(spaces)
        self.runs: list[dict] = []  # one result per finished run, as sample_until_within returns it
        self._drawn, self._best = 0, None  # the current run's draws, and its closest (deviation, arch)

    def deviation(self, arch: Arch) -> float:
        return abs(self.space.cost(arch).mflops - self.target) / self.target

    def _unreachable(self) -> tuple[Arch, float] | None:
        """(the nearest arch, its deviation) when no arch of the sampled spaces can land within the tolerance."""
        corners = getattr(self.space, "corner_archs", None)
        if corners is None:
            return None
        lo, hi = corners(self.spaces)
        if self.space.cost(hi).mflops < self.target * (1 - self.tolerance):
            return hi, self.deviation(hi)
        if self.space.cost(lo).mflops > self.target * (1 + self.tolerance):
            return lo, self.deviation(lo)
        return None

    def _propose(self) -> list[Arch]:
        if self._drawn == 0 and self._unreachable() is not None:
            return []  # tell() closes the run without a draw
        out = []
        while len(out) < self.population and self._drawn + len(out) < self.max_samples:
            arch = self.space.sample(self.rng) if self.spaces is None else self.space.sample_in(self.spaces, self.rng)
            out.append(arch)
            if self.deviation(arch) <= self.tolerance:
                break
        return out

    def tell(self, results) -> None:
        told = self._check_told(results)
        for arch in told:
            self._rewards.setdefault(arch, -self.deviation(arch))
        if not told:  # an unreachable run (see the class docstring): closed without a draw
            arch, dev = self._unreachable()
            self._drawn = self.max_samples
            self._finish(False, arch, dev)
        for arch in told:
            self._drawn += 1
            dev = self.deviation(arch)
            if self._best is None or dev < self._best[0]:
                self._best = (dev, arch)
            if dev <= self.tolerance:
                self._finish(True, arch, dev)
                break
            if self._drawn >= self.max_samples:
                self._finish(False, *reversed(self._best))
                break
        self._pending = None
        self.rounds += 1

    def _finish(self, found: bool, arch: Arch, dev: float) -> None:
        self.runs.append({"found": found, "samples": self._drawn, "arch": arch.to_dict(),
                          "mflops": self.space.cost(arch).mflops, "delta_pct": 100 * dev})
        self.generation += 1
        self._drawn, self._best = 0, None
        self.rng = random.Random(f"{self.key}:{self.generation}")

    def state_dict(self) -> dict:
        d = super().state_dict()
        d["elite"] = {"runs": self.runs, "drawn": self._drawn,
                      "best": None if self._best is None else [self._best[0], list(self._best[1].choices())]}
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        e = d["elite"]
        self.runs, self._drawn = list(e["runs"]), int(e["drawn"])
        self._best = None if e["best"] is None else (float(e["best"][0]), self.space.arch(e["best"][1]))
