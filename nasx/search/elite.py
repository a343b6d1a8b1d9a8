"""Elite spaces and NSS's evaluation protocol (METHODS.md §2, supplementary Tab. 1). Pure functions: no tensors.

* ``elite_space(probs)``: the most probable candidate space per stage [nasx].
* ``sample_until_within``: draw architectures — from given candidate spaces (an elite space) or uniformly from the
  expanded space — until one lands within ``tolerance`` of the MFLOPs target; report how many draws it took and the
  deviation |Δ| in %. Bounded by ``max_samples``: a target nothing reaches ends the search with ``found=False``,
  never an endless loop.
"""
from __future__ import annotations

import random
from typing import Sequence

from nasx.arch import Arch


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
