"""Architectures and search spaces.

An :class:`Arch` is an immutable, hashable choice (an ``int``) per named gene, tagged with the name of its space.
It prints as ``space:gene=choice,...`` and round-trips through JSON. A :class:`SearchSpace` owns the genes, samples
and varies architectures with a :class:`random.Random` it is handed (so strategies stay pure and resumable), and
knows their cost (MFLOPs as multiply-accumulates, and parameters).
"""
from __future__ import annotations

import json
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

    @staticmethod
    def from_str(text: str, where: str = "arch") -> "Arch":
        """The inverse of ``str(arch)``: ``space:gene=choice,...``."""
        space, sep, body = str(text).strip().rpartition(":")
        if not sep or not space:
            raise ArchError(f"{where}: expected '<space>:<gene>=<choice>,...', got {text!r}")
        genes = []
        for part in body.split(","):
            name, eq, value = part.partition("=")
            if not eq or not name.strip() or not value.strip().lstrip("-").isdigit():
                raise ArchError(f"{where}: '{part}' is not <gene>=<integer choice> (in {text!r})")
            genes.append((name.strip(), int(value)))
        return Arch(space, tuple(genes))


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
