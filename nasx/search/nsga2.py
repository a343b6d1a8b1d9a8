"""NSGA-II on pymoo's ask/tell interface, as MixPath's Algorithm 1 (METHODS.md §5; supplementary B).

pymoo runs the algorithm — non-dominated sorting, rank-and-crowding survival, binary tournaments, duplicate
elimination, its own seeded ``random_state`` — on integer genomes (one gene per column, ``0 ≤ x < n_choices``).
nasx supplies the operators that know the space and the budget, and the candidate evaluation:

- sampling: uniform inside the FLOPs budget (:meth:`SearchSpace.sample_within`) [seed: "uniformly generate"];
- crossover: uniform per-gene crossover of two tournament winners, always applied [seed: ``crossover(M)``];
- mutation [nasx]: each gene re-drawn with probability ``mutate_prob`` (0.1; Algorithm 1 names only crossover, and
  without mutation a small population collapses onto duplicates); ``mutate_prob: 0`` is Algorithm 1 literally;
- repair: only for spaces with invalid gene combinations (the S4 cell with every node off).

Algorithm 1's constraints, enforced by this strategy around pymoo:

- a child over the FLOPs limit is *skipped* [seed]: never evaluated, a fresh child is asked instead;
- the initial P0 ∪ Q0 is 2n uniform archs and each generation's Q is n children; a candidate that fails a
  floor/ceiling of the reward (e.g. ``top1 ≥ acc_min``) is *dropped* [seed] and the generation is topped up with
  more candidates in further rounds, up to ``max_rounds`` rounds, after which the search stops with a message that
  names the constraint (an unreachable accuracy floor fails fast, never loops);
- P_{i+1} is the best n of P_i ∪ Q_i by rank, then crowding distance weighted by ``objective_weights`` [seed];
  with equal weights it is pymoo's (and Deb et al.'s) crowding distance.

The state (``state_dict``) holds the pickled pymoo algorithm (population, ranks, random state) as bytes, so a
search resumed after any completed round continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import math
import pickle
import random
from typing import Sequence

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2 as PymooNSGA2
from pymoo.core.crossover import Crossover
from pymoo.core.duplicate import ElementwiseDuplicateElimination
from pymoo.core.evaluator import Evaluator
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.indicators.hv import HV
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import ConfigError, NasxError
from nasx.search.strategy import Outcome, Strategy, check_positive_int, check_probability

# asks of pymoo per round before the FLOPs-skipping gives up and repairs (a budget admitting almost nothing)
SKIP_TRIES = 20


def _py_rng(random_state: np.random.Generator) -> random.Random:
    """A Python RNG drawn from pymoo's generator, so the space's samplers stay deterministic under pymoo's seed."""
    return random.Random(int(random_state.integers(2 ** 62)))


class _Space:
    """Lets the operators reach the space without pickling it into the saved state."""

    space: SearchSpace | None = None
    budget: Budget | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("space", "budget")}


class _Sampling(Sampling, _Space):
    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        rng = _py_rng(random_state)
        return np.array([self.space.sample_within(self.budget, rng).choices() for _ in range(n_samples)])


class _UniformCrossover(Crossover):
    def __init__(self):
        super().__init__(n_parents=2, n_offsprings=1, prob=1.0)

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        take_first = random_state.random(X.shape[1:]) < 0.5
        return np.where(take_first, X[0], X[1])[None]


class _GeneMutation(Mutation):
    def __init__(self, prob: float, n_choices: Sequence[int]):
        super().__init__()
        self.gene_prob, self.n_choices = prob, np.asarray(n_choices)

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        X = X.copy()
        redraw = random_state.random(X.shape) < self.gene_prob
        fresh = np.floor(random_state.random(X.shape) * self.n_choices).astype(X.dtype)
        X[redraw] = fresh[redraw]
        return X


class _ValidRepair(Repair, _Space):
    def _do(self, problem, X, *args, random_state=None, **kwargs):
        fix = getattr(self.space, "fix", None)
        if fix is None:
            return X
        rng = _py_rng(random_state) if random_state is not None else random.Random(0)
        return np.array([fix(row, rng).choices() for row in X])


class _SameArch(ElementwiseDuplicateElimination):
    def is_equal(self, a, b):
        return bool(np.array_equal(a.X, b.X))


class _Lookup(Problem):
    """The problem pymoo sees: objectives looked up from the rewards the search loop has told."""

    def __init__(self, n_var: int, n_obj: int, upper: Sequence[int]):
        super().__init__(n_var=n_var, n_obj=n_obj, xl=0, xu=np.asarray(upper), vtype=int)
        self.values: dict[tuple[int, ...], tuple[float, ...]] = {}

    def _evaluate(self, X, out, *args, **kwargs):
        out["F"] = np.array([self.values[tuple(int(v) for v in row)] for row in X], dtype=float)


def weighted_crowding(weights: Sequence[float]):
    """Crowding distance with objective m's normalised gap weighted by w_m (Algorithm 1's input w)."""
    w = np.asarray(weights, dtype=float)
    used = np.flatnonzero(w > 0)  # a zero-weighted objective contributes nothing, not even its boundary's inf

    def crowding(F, **kwargs):
        per = np.stack([calc_crowding_distance(F[:, [m]]) for m in used], 1)
        return (per * w[used]).sum(1) / w.sum()

    return crowding


class _Algorithm(PymooNSGA2):
    """pymoo's NSGA-II with Algorithm 1's start: 2n initial archs (P0 ∪ Q0), of which the best n survive."""

    def _initialize_infill(self):
        return self.initialization.do(self.problem, 2 * self.pop_size, algorithm=self,
                                      random_state=self.random_state)

    def _initialize_advance(self, infills=None, **kwargs):
        self.pop = self.survival.do(self.problem, infills, n_survive=self.pop_size, algorithm=self,
                                    random_state=self.random_state)


class NSGA2(Strategy):
    min_objectives = 2  # a run with a single-objective reward is a config error
    def __init__(self, space: SearchSpace, budget: Budget, seed: int, generations: int = 20, population: int = 50,
                 mutate_prob: float = 0.1, objective_weights: Sequence[float] | None = None, n_objectives: int = 2,
                 max_rounds: int = 10):
        super().__init__(space, budget, seed, generations, population)
        self.mutate_prob = check_probability("mutate_prob", mutate_prob)
        self.max_rounds = check_positive_int("max_rounds", max_rounds)
        self.n_objectives = check_positive_int("n_objectives", n_objectives)
        weights = [1.0] * self.n_objectives if objective_weights is None else [float(w) for w in objective_weights]
        if len(weights) != self.n_objectives or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"search.strategy.objective_weights must be {self.n_objectives} non-negative numbers "
                              f"(one per objective) with a positive sum, got {list(weights)}")
        self.objective_weights = weights
        self._objectives: dict[Arch, tuple[float, ...]] = {}
        self._buffer: list[tuple[Arch, tuple[float, ...]]] = []  # this generation's feasible candidates so far
        self._rounds_in_gen = 0
        self._dropped = 0
        self.algorithm = self._new_algorithm()

    def _new_algorithm(self) -> _Algorithm:
        n_choices = list(self.space.genes.values())
        crowding = "cd" if len(set(self.objective_weights)) == 1 else weighted_crowding(self.objective_weights)
        algo = _Algorithm(pop_size=self.population, sampling=_Sampling(), crossover=_UniformCrossover(),
                          mutation=_GeneMutation(self.mutate_prob, n_choices), repair=_ValidRepair(),
                          eliminate_duplicates=_SameArch(), survival=RankAndCrowding(crowding_func=crowding))
        algo.setup(_Lookup(len(n_choices), self.n_objectives, [n - 1 for n in n_choices]), seed=self.seed,
                   termination=("n_gen", 10 ** 9))  # the strategy counts generations itself
        self._attach(algo)
        return algo

    def _attach(self, algo) -> None:
        for op in (algo.initialization.sampling, algo.repair, algo.mating.repair):
            if isinstance(op, _Space):
                op.space, op.budget = self.space, self.budget

    # -- ask / tell ----------------------------------------------------------------------------------------------
    def _target(self) -> int:
        return 2 * self.population if self.generation == 0 else self.population

    def _propose(self) -> list[Arch]:
        need = self._target() - len(self._buffer)
        taken = {a for a, _ in self._buffer}
        out: list[Arch] = []
        for _ in range(SKIP_TRIES):
            for row in self.algorithm.ask().get("X"):
                arch = self.space.arch([int(v) for v in row])
                if arch in taken or not self.budget.admits(self.space.cost(arch)):
                    continue  # Algorithm 1: a child over the FLOPs limit is skipped, never evaluated
                taken.add(arch)
                out.append(arch)
                if len(out) == need:
                    return out
        # the budget admits almost nothing pymoo proposes: fill with uniform archs inside it
        rng = _py_rng(self.algorithm.random_state)
        while len(out) < need:
            out.append(self.space.sample_within(self.budget, rng))
        return out

    def tell(self, results: list[tuple[Arch, Outcome]]) -> None:
        told = self._check_told(results)
        for arch, (_, o) in zip(told, results):
            f = o.objectives
            finite = f is not None and all(math.isfinite(v) for v in f)
            if finite:
                self._objectives.setdefault(arch, tuple(float(v) for v in f))
                self._rewards.setdefault(arch, -float(f[0]))
            else:
                self._rewards.setdefault(arch, -math.inf)
            if o.usable and arch not in {a for a, _ in self._buffer}:
                self._buffer.append((arch, tuple(float(v) for v in f)))
            elif not o.usable:
                self._dropped += 1
        self._pending = None
        self.rounds += 1
        self._rounds_in_gen += 1
        if len(self._buffer) >= self._target():
            self._advance()
        elif self._rounds_in_gen >= self.max_rounds:
            raise NasxError(
                f"NSGA-II generation {self.generation}: after {self._rounds_in_gen} rounds only {len(self._buffer)} "
                f"of the {self._target()} candidates it needs meet the reward's constraints ({self._dropped} dropped); "
                f"loosen the floor/ceiling in reward.objectives or raise search.strategy.max_rounds")

    def _advance(self) -> None:
        take = self._buffer[:self._target()]
        X = np.array([a.choices() for a, _ in take])
        self.algorithm.problem.values = {tuple(a.choices()): f for a, f in take}
        pop = Population.new("X", X)
        Evaluator().eval(self.algorithm.problem, pop)
        self.algorithm.tell(infills=pop)
        self._buffer, self._rounds_in_gen, self._dropped = [], 0, 0
        self.generation += 1

    # -- results -------------------------------------------------------------------------------------------------
    def population_front(self, at_least: int = 1) -> list[tuple[Arch, tuple[float, ...]]]:
        """The non-dominated members of the current parent population P_i (minimisation form); when they are fewer
        than ``at_least``, the next ranks are added until there are enough ("near the Pareto front")."""
        if not self.algorithm.is_initialized:
            return []
        pop = self.algorithm.pop
        rank = np.asarray(pop.get("rank")).ravel()
        last = 0
        while (rank <= last).sum() < min(at_least, len(pop)):
            last += 1
        return [(self.space.arch([int(v) for v in ind.X]), tuple(float(v) for v in ind.F))
                for ind, r in zip(pop, rank) if r <= last]

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        d = super().state_dict()
        d["objectives"] = [[list(a.choices()), list(f)] for a, f in self._objectives.items()]
        d["buffer"] = [[list(a.choices()), list(f)] for a, f in self._buffer]
        d["rounds_in_gen"], d["dropped"] = self._rounds_in_gen, self._dropped
        d["pymoo"] = pickle.dumps(self.algorithm)
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self._objectives = {self.space.arch(c): tuple(f) for c, f in d["objectives"]}
        self._buffer = [(self.space.arch(c), tuple(f)) for c, f in d["buffer"]]
        self._rounds_in_gen, self._dropped = int(d["rounds_in_gen"]), int(d["dropped"])
        self.algorithm = pickle.loads(d["pymoo"])
        self._attach(self.algorithm)


# -- front utilities (used by the MixPath stages and the tests) -----------------------------------------------------
def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of F (minimisation)."""
    if len(F) == 0:
        return np.array([], dtype=int)
    return NonDominatedSorting().do(np.asarray(F, dtype=float), only_non_dominated_front=True)


def hypervolume(F: np.ndarray, ref: Sequence[float]) -> float:
    """Hypervolume dominated by F (minimisation) up to ``ref``; points not better than ``ref`` count nothing."""
    F = np.asarray(F, dtype=float).reshape(-1, len(ref))
    F = F[(F < np.asarray(ref)).all(1)]
    return float(HV(ref_point=np.asarray(ref, dtype=float))(F)) if len(F) else 0.0


def equispaced(F: np.ndarray, k: int, axis: int = 1) -> list[int]:
    """``k`` distinct indices of the front F, nearest to ``k`` equispaced values along objective ``axis``
    (MixPath picks K equispaced models near the Pareto front; nasx spaces them in MFLOPs)."""
    F = np.asarray(F, dtype=float)
    order = list(np.argsort(F[:, axis], kind="stable"))
    if k >= len(order):
        return order
    lo, hi = F[order[0], axis], F[order[-1], axis]
    chosen: list[int] = []
    for target in np.linspace(lo, hi, k):
        free = [i for i in order if i not in chosen]
        chosen.append(min(free, key=lambda i: abs(F[i, axis] - target)))
    return sorted(chosen, key=lambda i: F[i, axis])
