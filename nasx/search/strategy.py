"""The ask/tell interface every search strategy implements.

A strategy is a pure object: it proposes candidates (``ask``), is told their rewards (``tell``) and keeps the
history of everything evaluated. It does no I/O, holds no tensors and never reads the clock; all its randomness
comes from one :class:`random.Random` seeded from ``seed``. So the search loop owns evaluation (supernet, BN
recalibration, the evaluation cache) and checkpointing, and a strategy restored with :meth:`load_state_dict`
continues exactly as if it had never stopped.
"""
from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import ConfigError

# Re-draws per slot before a duplicate is accepted: a nearly exhausted space (e.g. a budget that admits only a
# handful of archs) must end the generation with repeats rather than loop forever.
FRESH_TRIES = 20


def check_positive_int(key: str, value: object) -> int:
    """``value`` if it is a positive integer, else a one-line :class:`ConfigError` naming ``search.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"search.strategy.{key} must be a positive integer, got {value!r}")
    return value


def check_probability(key: str, value: object) -> float:
    """``value`` as a float if it is a number in [0, 1], else a one-line :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"search.strategy.{key} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Outcome:
    """What the search loop tells a strategy about one candidate.

    ``objectives`` is the reward's objective vector in minimisation form (a maximised metric negated; a
    single-objective reward is a vector of length 1), or None when the candidate was not evaluated (outside the
    budget). ``feasible`` is False when the candidate breaks one of the reward's constraints (a floor or ceiling).
    """

    objectives: tuple[float, ...] | None
    feasible: bool = True

    @property
    def usable(self) -> bool:
        """Evaluated, feasible and finite: a candidate a strategy may build on."""
        return self.objectives is not None and self.feasible and all(math.isfinite(v) for v in self.objectives)

    @property
    def reward(self) -> float:
        """The first objective as a reward to maximise; ``-inf`` for an unusable candidate."""
        return -self.objectives[0] if self.usable else -math.inf


class Strategy(ABC):
    """Base class: generation bookkeeping, history, ``best``, and state round-trip.

    Subclasses implement :meth:`_propose` (one generation's candidates, drawn with ``self.rng``). Everything a
    subclass decides must follow from the history and the RNG, which :meth:`state_dict` saves.
    """

    def __init__(self, space: SearchSpace, budget: Budget, seed: int, generations: int, population: int):
        self.generations = check_positive_int("generations", generations)
        self.population = check_positive_int("population", population)
        space.check_feasible(budget)  # an infeasible budget fails here, never inside an endless re-draw loop
        self.space, self.budget, self.seed = space, budget, seed
        self.rng = random.Random(seed)
        self.generation = 0
        self.rounds = 0  # ask/tell exchanges; one per generation unless a strategy tops a generation up
        # arch -> reward, in first-seen order (dicts keep insertion order): this order breaks ties in best()
        self._rewards: dict[Arch, float] = {}
        self._pending: list[Arch] | None = None

    @property
    def done(self) -> bool:
        return self.generation >= self.generations

    # -- ask / tell ----------------------------------------------------------------------------------------------
    def ask(self) -> list[Arch]:
        """The next generation's candidates: valid, inside the budget, distinct unless the space is exhausted.

        Asking again before :meth:`tell` returns the same list, so a loop that crashes between the two (or saves
        its state there) re-evaluates the same candidates.
        """
        if self._pending is None:
            self._pending = [self.space.validate(a) for a in self._propose()]
        return list(self._pending)

    def tell(self, results: list[tuple[Arch, Outcome]]) -> None:
        """Outcomes for exactly the archs of the last :meth:`ask`, in the same order; ends the generation.

        A single-objective strategy ranks by :attr:`Outcome.reward`: ``-inf`` for a candidate that was not
        evaluated, is infeasible or has a non-finite objective, so that it cannot poison the ordering of
        :meth:`best`. An arch told twice (only possible in an exhausted space) keeps its first reward, as an
        evaluation cache would return it.
        """
        told = self._check_told(results)
        for arch, (_, outcome) in zip(told, results):
            self._rewards.setdefault(arch, outcome.reward)
        self._pending = None
        self.rounds += 1
        self.generation += 1

    def _check_told(self, results: list[tuple[Arch, Outcome]]) -> list[Arch]:
        """The told archs, validated; they must be those of the pending ask, in order."""
        if self._pending is None:
            raise ValueError("tell() called without a pending ask()")
        told = [self.space.validate(a) for a, _ in results]
        if told != self._pending:
            raise ValueError(f"tell() expects outcomes for the {len(self._pending)} asked archs in the asked order, "
                             f"got {len(told)} archs that differ")
        if not all(isinstance(o, Outcome) for _, o in results):
            raise TypeError("tell() takes (arch, Outcome) pairs")
        return told

    def best(self, k: int = 1) -> list[tuple[Arch, float]]:
        """The top-``k`` (arch, reward) evaluated so far, best first; ties go to the arch seen first."""
        # sorted() is stable, so equal rewards stay in first-seen order
        return sorted(self._rewards.items(), key=lambda item: -item[1])[:max(k, 0)]

    # -- proposal helpers ----------------------------------------------------------------------------------------
    @abstractmethod
    def _propose(self) -> list[Arch]:
        """One generation's ``population`` candidates, drawn with ``self.rng`` only."""

    def _sample_new(self, taken: set[Arch]) -> Arch:
        """A uniform feasible arch not in ``taken`` (a repeat after :data:`FRESH_TRIES` misses); adds it."""
        for _ in range(FRESH_TRIES):
            arch = self.space.sample_within(self.budget, self.rng)
            if arch not in taken:
                break
        taken.add(arch)
        return arch

    def _taken(self) -> set[Arch]:
        """Archs a new candidate must avoid: everything already evaluated."""
        return set(self._rewards)

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue, as primitives only (loads with ``torch.load(weights_only=True)``).

        Archs are lists of choices in the space's gene order; the RNG is ``rng.getstate()`` with its tuples as
        lists. Pending asks are included, so a state saved between ask and tell resumes with the same candidates.
        """
        version, internal, gauss = self.rng.getstate()
        return {
            "strategy": type(self).__name__,
            "space": self.space.name,
            "generation": self.generation,
            "rounds": self.rounds,
            "rng": [version, list(internal), gauss],
            "history": [[list(a.choices()), r] for a, r in self._rewards.items()],
            "pending": None if self._pending is None else [list(a.choices()) for a in self._pending],
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore a :meth:`state_dict`; the hyper-parameters stay those given to the constructor."""
        if d.get("strategy") != type(self).__name__ or d.get("space") != self.space.name:
            raise ConfigError(f"search: the saved state is of {d.get('strategy')} on space '{d.get('space')}', "
                              f"this run uses {type(self).__name__} on space '{self.space.name}'")
        version, internal, gauss = d["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.generation = int(d["generation"])
        self.rounds = int(d.get("rounds", self.generation))
        self._rewards = {}
        for choices, reward in d["history"]:
            self._rewards[self.space.arch(choices)] = float(reward)
        self._pending = None if d["pending"] is None else [self.space.arch(c) for c in d["pending"]]
