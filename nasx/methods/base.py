"""What a method is to the runner: the hooks of its four stages, its checks, and its results table.

A method is chosen by Hydra ``_target_`` (``conf/method/<name>.yaml``); its constructor takes that node's keys.
:class:`nasx.methods.spos.SPOS` is the plain one-shot pipeline most methods extend.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from omegaconf import DictConfig


@dataclass
class ResultsTable:
    """A run's results as the CLI prints them: a title, column names, rows of strings, and lines printed above."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


class Method(ABC):
    """One paper's pipeline as hooks: ``train``, ``search``, ``retrain`` and ``evaluate`` each take the
    :class:`~nasx.runner.Run` and resume from what an earlier, killed attempt left in its directory; ``evaluate``
    returns the results (also written to ``results.json``)."""

    name = "method"
    # under DDP, every rank scores its share of each search round (nasx.distributed); the search must go through
    # nasx.search.loop.run_search and be deterministic given the run directory, as it is on rank 0
    parallel_search = False

    def check_config(self, cfg: DictConfig) -> None:
        """Method-specific config checks, before any data is read (raise :class:`~nasx.errors.ConfigError`)."""

    def setup(self, run) -> None:
        """Build and validate what the stages need beyond the run's data, space, budget and reward (e.g. the
        search strategy), so that bad settings fail before any training."""

    @abstractmethod
    def train(self, run) -> None: ...

    @abstractmethod
    def search(self, run) -> None: ...

    @abstractmethod
    def retrain(self, run) -> None: ...

    @abstractmethod
    def evaluate(self, run) -> dict: ...

    @abstractmethod
    def table(self, results: dict) -> ResultsTable:
        """The results as a table for the console."""
