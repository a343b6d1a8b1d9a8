"""What the search itself costs next to evaluating candidates, measured in one run.

For each search — a ``--generations`` × ``--population`` evolution on the ``shufflenet_cpu`` space (1-MFLOPs budget)
and an NSGA-II run of the same size on ``mixpath_s1_cpu`` (top-1 against MFLOPs) — the real evaluator (extract, BN
recalibration on 4 fixed batches, validation on the embedded digits; an untrained supernet, which costs the same)
scores every candidate, and the search loop writes ``history.jsonl`` and ``state.pt`` as in a run. Prints JSON with,
per search:

* ``overhead_ratio``: (wall time of the whole search − time inside the evaluator) ÷ time inside the evaluator —
  what the strategy, the loop, the budget checks and the history/state writes add per candidate. Target < 0.01.
* ``per_candidate_ms``: the same two times per evaluated candidate.

Usage: ``python benchmarks/search_overhead.py [--generations 20] [--population 50]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from nasx.arch import Budget
from nasx.data.digits import DigitsDataModule
from nasx.evaluation import ClassificationEvaluator
from nasx.rewards import Objectives, WeightedSum
from nasx.search import Evolution
from nasx.search.loop import run_search
from nasx.search.nsga2 import NSGA2

CONF = Path(__file__).resolve().parent.parent / "conf"


class TimedEvaluator(ClassificationEvaluator):
    """Adds up the time spent inside candidate evaluations."""

    seconds = 0.0

    def evaluate(self, arch):
        t = time.perf_counter()
        try:
            return super().evaluate(arch)
        finally:
            self.seconds += time.perf_counter() - t


def preset(space: str):
    """A space preset of conf/space/, for the embedded digits (1 channel, 10 classes)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"space={space}"])
    return instantiate(cfg.space, in_channels=1, num_classes=10)


def measure(name, space, strategy, reward, budget) -> dict:
    torch.manual_seed(0)
    data = DigitsDataModule(seed=0, image_size=space.input_size, batch_size=64)
    data.setup("fit")
    evaluator = TimedEvaluator(space.supernet(), data.calibration_batches(4, 64), list(data.val_dataloader()))
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        result = run_search(strategy, space, evaluator, reward, budget, out, progress=False)
        total = time.perf_counter() - t
    n = result.evaluations
    outside = total - evaluator.seconds
    return {"search": name, "candidates": len(result.records), "evaluated": n,
            "overhead_ratio": outside / evaluator.seconds,
            "per_candidate_ms": {"evaluation": 1e3 * evaluator.seconds / n, "outside": 1e3 * outside / n}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--population", type=int, default=50)
    args = ap.parse_args()
    g, p = args.generations, args.population
    spos = preset("shufflenet_cpu")
    budget = Budget(mflops=1.0)
    evo = measure("evolution", spos, Evolution(spos, budget, seed=0, generations=g, population=p,
                                               top_k=max(1, p // 5), crossover_size=max(1, 4 * p // 5)),
                  WeightedSum({"top1": 1.0}), budget)

    mp = preset("mixpath_s1_cpu")
    objectives = Objectives([{"metric": "top1", "sense": "max", "ref": 0.0},
                             {"metric": "mflops", "sense": "min", "ref": mp.max_cost().mflops}])
    nsga = measure("nsga2", mp, NSGA2(mp, Budget(), seed=0, generations=g, population=p), objectives, Budget())
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "generations": g, "population": p, "results": [evo, nsga]}, indent=2))


if __name__ == "__main__":
    main()
