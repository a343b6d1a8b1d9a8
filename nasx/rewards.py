"""Rewards: named metrics -> one scalar, as a weighted sum from config (``conf/reward/*.yaml``).

New rewards are configs, not code: e.g. CMP-NAS's R3 is ``{hom_top1: 0.5, het_top1: 0.5}``.
"""
from __future__ import annotations

from typing import Mapping

from nasx.errors import ConfigError


class WeightedSum:
    def __init__(self, weights: Mapping[str, float], name: str = "reward"):
        if not weights:
            raise ConfigError("reward.weights must name at least one metric, e.g. {top1: 1.0}")
        self.weights = {str(k): float(v) for k, v in weights.items()}
        self.name = name

    @property
    def metrics(self) -> list[str]:
        return list(self.weights)

    def check(self, available: list[str]) -> None:
        """Fail before any work if the reward names a metric the evaluator does not produce."""
        missing = [m for m in self.weights if m not in available]
        if missing:
            raise ConfigError(f"reward.weights names metric '{missing[0]}', which the evaluator does not produce "
                              f"(available: {', '.join(available)})")

    def __call__(self, metrics: Mapping[str, float]) -> float:
        return float(sum(w * metrics[m] for m, w in self.weights.items()))

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}·{m}" for m, w in self.weights.items())
