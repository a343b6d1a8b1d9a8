"""Constrained evolution over layered spaces: VIM-NAS's resource-constrained search (METHODS.md §3), after AutoFormer.

What comes from where:

- [seed: VIM-NAS Alg. 2] generation 0 is ``population`` random archs that meet the constraint (the budget; in
  VIM-NAS typically parameters); each later generation is crossovers plus mutants of the top-K candidates;
  crossover takes two random top candidates and picks each layer's block uniformly from one of them; mutation
  changes the depth with probability P_d (``depth_prob``), then each layer's block with probability P_m
  (``mutate_prob``); a child enters only if it meets the constraint.
- [ref: AutoFormer ``evolution.py``] the defaults: population 50, top 10, 25 mutants and 25 crossovers, 20
  generations, P_m = 0.2 per layer gene, P_d = 0.4; the embed dim (any global gene) is re-drawn with
  ``embed_prob`` = 0.4 (AutoFormer's ``s_prob``, which the seed does not mention); the parents are the top K of
  every candidate evaluated so far; a re-drawn value is uniform over all choices, the current one included (so a
  gene with k choices changes with probability P·(1 − 1/k)); P_m applies to each of a layer's genes (heads, MLP
  ratio) separately, and only to layers below the depth; layers added by a deeper depth get random blocks;
  crossover only between parents of equal depth (``same_depth_crossover``); a child already evaluated or outside
  the budget is re-made a bounded number of times and the generation is then topped up with random feasible
  archs (AutoFormer's ``max_iters`` and ``get_random``); with ``mutation_size + crossover_size < population`` the
  rest of every generation is random feasible archs, as AutoFormer's ``population_num``.
- [nasx] the formulation around those:

  * Genes are grouped into layers by the first integer in their name (``h3``/``r3`` → layer 3, ``b7``/``w7`` →
    layer 7, ``l2_g1`` → layer 2), or by the space's own ``layer_genes`` (a list of gene-name lists, one per
    layer, in layer order) where it declares one. Genes without an index are global: ``depth`` is re-drawn with
    ``depth_prob``, every other (``embed``) with ``embed_prob``. A space without a ``depth`` gene (e.g.
    ShuffleNet's ``b{i}``/``w{i}``) works the same with every layer always present.
  * The depth gene is understood as "the first ``space.depths[c]`` layers are present" when the space has a
    ``depths`` list of that meaning (:class:`~nasx.spaces.vit.ViTSpace`). Then a layer past the depth is the
    identity and its genes mean nothing: the strategy writes them as 0, so two archs that build the same network
    are one arch (never evaluated twice), and a depth that grows draws the new layers' blocks at random. Without
    such a list the depth gene is a global gene like any other and every layer is present.
  * A crossover child takes each global gene, and each layer's block (all of the layer's genes together), from
    either parent with probability 1/2. The pair is two distinct parents drawn uniformly among the pairs of
    equal depth; if no two parents have equal depth, among all pairs, and then a layer that only the deeper
    parent has comes from it. With a single parent the crossover slots are made by mutation.
  * While no candidate has a finite reward (all failed), the generation is drawn at random again.
  * A child (mutant or crossover) enters only if the budget admits it and it is not evaluated or already in this
    generation; after :data:`CHILD_TRIES` rejected children the slot gets a fresh random feasible arch (after
    :data:`~nasx.search.strategy.FRESH_TRIES` repeats, a repeat, so a nearly exhausted space ends the generation
    instead of looping). Children are never repaired: a repaired child would no longer be the operator's.
  * ``mutation_size`` = None (the default) is ``population − crossover_size`` (25 with the defaults).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import ConfigError
from nasx.search.strategy import FRESH_TRIES, Strategy, check_positive_int, check_probability

# Re-made children per slot before a random feasible arch takes it [ref: AutoFormer tries 10 × the count].
CHILD_TRIES = 20

_INDEX = re.compile(r"\d+")


def layer_index(gene: str) -> int | None:
    """The layer a gene belongs to: the first integer in its name (``h3`` → 3, ``l2_g1`` → 2); None if global."""
    m = _INDEX.search(gene)
    return None if m is None else int(m.group())


def _check_count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"search.strategy.{key} must be a non-negative integer, got {value!r}")
    return value


class ConstrainedEvolution(Strategy):
    """Top-k evolution with layer-block crossover and depth/embed/layer mutation under a budget [seed Alg. 2]."""

    def __init__(self, space: SearchSpace, budget: Budget, seed: int, generations: int = 20, population: int = 50,
                 top_k: int = 10, mutation_size: int | None = None, crossover_size: int = 25,
                 mutate_prob: float = 0.2, depth_prob: float = 0.4, embed_prob: float = 0.4,
                 same_depth_crossover: bool = True):
        super().__init__(space, budget, seed, generations, population)
        self.top_k = check_positive_int("top_k", top_k)
        if top_k > population:
            raise ConfigError(f"search.strategy.top_k must be at most search.strategy.population ({population}), "
                              f"got {top_k}")
        self.crossover_size = _check_count("crossover_size", crossover_size)
        if crossover_size > population:
            raise ConfigError(f"search.strategy.crossover_size must be at most search.strategy.population "
                              f"({population}), got {crossover_size}")
        if mutation_size is None:
            mutation_size = population - crossover_size
        self.mutation_size = _check_count("mutation_size", mutation_size)
        if mutation_size + crossover_size > population:
            raise ConfigError(f"search.strategy.mutation_size must be at most search.strategy.population minus "
                              f"search.strategy.crossover_size ({population - crossover_size}), got {mutation_size}")
        self.mutate_prob = check_probability("mutate_prob", mutate_prob)
        self.depth_prob = check_probability("depth_prob", depth_prob)
        self.embed_prob = check_probability("embed_prob", embed_prob)
        if not isinstance(same_depth_crossover, bool):
            raise ConfigError(f"search.strategy.same_depth_crossover must be true or false, "
                              f"got {same_depth_crossover!r}")
        self.same_depth_crossover = same_depth_crossover
        self.layer_genes, self.global_genes = self._group(space)
        self.depth_gene = "depth" if "depth" in space.genes else None
        self.depths = self._layer_counts(space)

    # -- the space's structure -----------------------------------------------------------------------------------
    @staticmethod
    def _group(space: SearchSpace) -> tuple[list[list[str]], list[str]]:
        """(genes of each layer, in layer order; the global genes other than ``depth``), in the space's order."""
        declared = getattr(space, "layer_genes", None)
        if declared is not None:
            layers = [list(layer) for layer in declared]
            in_layers = {g for layer in layers for g in layer}
            wrong = sorted(in_layers - set(space.genes)) + sorted(in_layers & {"depth"})
            if wrong:
                raise ConfigError(f"space '{space.name}': layer_genes names '{wrong[0]}', which is not a layer gene "
                                  f"of the space")
        else:
            by_index: dict[int, list[str]] = {}
            for g in space.genes:
                i = layer_index(g)
                if i is not None:
                    by_index.setdefault(i, []).append(g)
            layers = [by_index[i] for i in sorted(by_index)]
            in_layers = {g for layer in layers for g in layer}
        return layers, [g for g in space.genes if g not in in_layers and g != "depth"]

    def _layer_counts(self, space: SearchSpace) -> tuple[int, ...] | None:
        """Layers present per depth choice, if the space says so (``depths``); None: every layer, always."""
        depths = getattr(space, "depths", None)
        if self.depth_gene is None or depths is None:
            return None
        try:
            counts = tuple(int(d) for d in depths)
        except (TypeError, ValueError):
            return None
        if len(counts) != space.genes["depth"] or not all(0 <= d <= len(self.layer_genes) for d in counts):
            return None
        return counts

    def present(self, arch: Arch | Mapping[str, int]) -> int:
        """How many leading layers ``arch`` has (all of them unless the depth gene says otherwise)."""
        return len(self.layer_genes) if self.depths is None else self.depths[arch["depth"]]

    def canonical(self, arch: Arch) -> Arch:
        """``arch`` with the genes of layers past its depth set to 0 (they do not change the network)."""
        n = self.present(arch)
        dead = {g: 0 for layer in self.layer_genes[n:] for g in layer}
        return arch.replace(**dead) if dead else arch

    # -- parents -------------------------------------------------------------------------------------------------
    def parents(self) -> list[Arch]:
        """The current parents: the ``top_k`` best evaluated archs with a finite (or ``+inf``) reward."""
        return [a for a, r in self.best(self.top_k) if r > float("-inf")]

    def crossover_pairs(self, parents: list[Arch]) -> list[tuple[Arch, Arch]]:
        """The pairs of distinct parents a crossover may draw: those of equal depth with ``same_depth_crossover``
        (all pairs if there is none)."""
        pairs = [(a, b) for i, a in enumerate(parents) for b in parents[i + 1:]]
        if self.same_depth_crossover and self.depth_gene is not None:
            same = [(a, b) for a, b in pairs if a[self.depth_gene] == b[self.depth_gene]]
            if same:
                return same
        return pairs

    # -- operators (no budget; the callers filter) ---------------------------------------------------------------
    def mutate(self, parent: Arch) -> Arch:
        """Depth re-drawn with ``depth_prob`` (new layers random), every other global gene with ``embed_prob``,
        then each gene of each present layer with ``mutate_prob``."""
        rng, k = self.rng, self.space.genes
        genes = dict(parent.genes)
        if self.depth_gene is not None and rng.random() < self.depth_prob:
            before = self.present(genes)
            genes[self.depth_gene] = rng.randrange(k[self.depth_gene])
            for layer in self.layer_genes[before:self.present(genes)]:  # the layers a deeper depth adds
                for g in layer:
                    genes[g] = rng.randrange(k[g])
        for g in self.global_genes:
            if rng.random() < self.embed_prob:
                genes[g] = rng.randrange(k[g])
        for layer in self.layer_genes[:self.present(genes)]:
            for g in layer:
                if rng.random() < self.mutate_prob:
                    genes[g] = rng.randrange(k[g])
        return self.canonical(self.space.arch(genes))

    def crossover(self, a: Arch, b: Arch) -> Arch:
        """Each global gene, and each layer's block as a whole, from ``a`` or ``b`` with probability 1/2; a layer
        only one parent has comes from that parent."""
        rng = self.rng
        genes = {}
        for g in ([self.depth_gene] if self.depth_gene else []) + self.global_genes:
            genes[g] = (a if rng.random() < 0.5 else b)[g]
        na, nb = self.present(a), self.present(b)
        for i, layer in enumerate(self.layer_genes):
            if i < na and i < nb:
                src = a if rng.random() < 0.5 else b
            else:
                src = a if i < na else b
            for g in layer:
                genes[g] = src[g]
        return self.canonical(self.space.arch(genes))

    # -- proposal ------------------------------------------------------------------------------------------------
    def _propose(self) -> list[Arch]:
        taken = {self.canonical(a) for a in self._taken()}
        parents = self.parents()
        if not parents:
            return [self._fresh(taken) for _ in range(self.population)]

        def mutant() -> Arch:
            return self.mutate(self.rng.choice(parents))

        pairs = self.crossover_pairs(parents)

        def crossed() -> Arch:
            return self.crossover(*self.rng.choice(pairs))

        children = [self._child(mutant, taken) for _ in range(self.mutation_size)]
        children += [self._child(crossed if pairs else mutant, taken) for _ in range(self.crossover_size)]
        children += [self._fresh(taken) for _ in range(self.population - len(children))]
        return children

    def _child(self, make: Callable[[], Arch], taken: set[Arch]) -> Arch:
        """``make()`` until a child is inside the budget and not in ``taken``; else a fresh arch. Adds it."""
        for _ in range(CHILD_TRIES):
            child = make()
            if child not in taken and self.budget.admits(self.space.cost(child)):
                taken.add(child)
                return child
        return self._fresh(taken)

    def _fresh(self, taken: set[Arch]) -> Arch:
        """A random arch inside the budget, canonical, not in ``taken`` (a repeat after FRESH_TRIES); adds it."""
        for _ in range(FRESH_TRIES):
            drawn = self.space.sample_within(self.budget, self.rng)  # always inside the budget (repaired if need be)
            arch = self.canonical(drawn)
            if arch != drawn and not self.budget.admits(self.space.cost(arch)):
                arch = drawn  # a space whose layers past the depth still cost something: keep the feasible draw
            if arch not in taken:
                break
        taken.add(arch)
        return arch
