"""Rewards: named metrics -> one scalar, as a weighted sum from config (``conf/reward/*.yaml``).

New rewards are configs, not code: e.g. CMP-NAS's R3 is ``{hom_top1: 0.5, het_top1: 0.5}``, and a multi-objective
reward (MixPath's accuracy against MFLOPs) is a list of objectives.
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

    multi = False
    n_objectives = 1

    def scalar(self, metrics: Mapping[str, float]) -> float:
        return self(metrics)

    def vector(self, metrics: Mapping[str, float]) -> tuple[float]:
        """The reward as a length-1 objective vector in minimisation form."""
        return (-self(metrics),)

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        return True

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}·{m}" for m, w in self.weights.items())


SENSES = ("max", "min")


class Objectives:
    """Several named metrics optimised together (multi-objective search, e.g. MixPath's NSGA-II).

    Config (``conf/reward/acc_mflops.yaml``): a list of ``{metric, sense: max|min, ref, floor|ceiling}``.
    ``metric`` may be any evaluator metric or a cost (``mflops``, ``params``). ``ref`` is the objective's
    hypervolume reference value (the worst value that still counts); ``floor`` (for ``max``) / ``ceiling``
    (for ``min``) is a constraint — Algorithm 1's accuracy floor is ``floor`` on ``top1``.

    ``__call__`` gives the objective vector in *minimisation* form (a ``max`` objective negated), which is what
    non-dominated sorting and the hypervolume use; :meth:`scalar` gives the first objective in its own units, for
    progress bars and for single-objective strategies run on the same reward (random search).
    """

    multi = True

    def __init__(self, objectives, name: str = "objectives"):
        if not objectives or len(objectives) < 2:
            raise ConfigError("reward.objectives must list at least two {metric, sense} entries")
        self.name = name
        self.objectives = []
        for i, o in enumerate(objectives):
            where = f"reward.objectives[{i}]"
            if "metric" not in o:
                raise ConfigError(f"{where} needs a 'metric'")
            sense = o.get("sense", "max")
            if sense not in SENSES:
                raise ConfigError(f"{where}.sense must be 'max' or 'min', got '{sense}'")
            bound_key = "floor" if sense == "max" else "ceiling"
            other = "ceiling" if sense == "max" else "floor"
            if o.get(other) is not None:
                raise ConfigError(f"{where}: a '{sense}' objective takes a {bound_key}, not a {other}")
            self.objectives.append({"metric": str(o["metric"]), "sense": sense, "ref": o.get("ref"),
                                    "bound": o.get(bound_key)})

    @property
    def metrics(self) -> list[str]:
        return [o["metric"] for o in self.objectives]

    def check(self, available: list[str]) -> None:
        missing = [m for m in self.metrics if m not in available]
        if missing:
            raise ConfigError(f"reward.objectives names metric '{missing[0]}', which the evaluator does not produce "
                              f"(available: {', '.join(available)})")

    def __call__(self, metrics: Mapping[str, float]) -> tuple[float, ...]:
        return tuple(-float(metrics[o["metric"]]) if o["sense"] == "max" else float(metrics[o["metric"]])
                     for o in self.objectives)

    def scalar(self, metrics: Mapping[str, float]) -> float:
        return float(metrics[self.objectives[0]["metric"]])

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    def vector(self, metrics: Mapping[str, float]) -> tuple[float, ...]:
        return self(metrics)

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        """Every floor / ceiling met."""
        for o in self.objectives:
            v, b = float(metrics[o["metric"]]), o["bound"]
            if b is not None and (v < b if o["sense"] == "max" else v > b):
                return False
        return True

    def constraint_text(self) -> str:
        return ", ".join(f"{o['metric']} {'≥' if o['sense'] == 'max' else '≤'} {o['bound']:g}"
                         for o in self.objectives if o["bound"] is not None) or "none"

    def ref_point(self, defaults: Mapping[str, float] | None = None) -> tuple[float, ...]:
        """The hypervolume reference point in minimisation form; a ``ref: null`` takes ``defaults[metric]``."""
        out = []
        for o in self.objectives:
            r = o["ref"] if o["ref"] is not None else (defaults or {}).get(o["metric"])
            if r is None:
                raise ConfigError(f"reward.objectives: '{o['metric']}' needs a ref (hypervolume reference value)")
            out.append(-float(r) if o["sense"] == "max" else float(r))
        return tuple(out)

    def natural(self, f: tuple[float, ...]) -> tuple[float, ...]:
        """Back from minimisation form to the metrics' own units."""
        return tuple(-v if o["sense"] == "max" else v for v, o in zip(f, self.objectives))

    def __repr__(self) -> str:
        return ", ".join(f"{o['sense']} {o['metric']}" for o in self.objectives)


def make_reward(cfg) -> WeightedSum | Objectives:
    """The reward a ``conf/reward/*.yaml`` describes: ``weights`` → :class:`WeightedSum`, ``objectives`` →
    :class:`Objectives`."""
    name = cfg.get("name", "reward")
    if cfg.get("lambda2") is not None:  # REG-NAS's R2 = λ1·top-1 − λ2·NFR [seed Eq. 4] (conf/reward/r2.yaml)
        lam1, lam2 = cfg.get("lambda1", 1.0), cfg.get("lambda2")
        for key, v in (("lambda1", lam1), ("lambda2", lam2)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"reward.{key} must be a number >= 0, got {v!r}")
        return WeightedSum({"top1": float(lam1), "nfr": -float(lam2)}, name=name)
    if cfg.get("objectives") is not None:
        return Objectives(cfg["objectives"], name=name)
    return WeightedSum(cfg.get("weights"), name=name)
