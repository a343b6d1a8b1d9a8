"""Search strategies: pure ask/tell objects over a :class:`~nasx.arch.SearchSpace` under a budget."""
from nasx.search.constrained_evolution import ConstrainedEvolution
from nasx.search.evolution import Evolution
from nasx.search.random_search import RandomSearch
from nasx.search.strategy import Strategy

__all__ = ["Strategy", "RandomSearch", "Evolution", "ConstrainedEvolution"]
