"""Candidate-parallel search: one search generation on 2 ranks ÷ on 1 rank, on this machine's CPU cores.

One generation of an experiment's search (generation 0 of its evolution: ``--population`` random candidates under
its budget) through :func:`nasx.search.loop.run_search` with the experiment's evaluator (extract, BN recalibration
on the fixed calibration batches, top-1/top-5/loss on the validation split) and its supernet (weights as initialised:
what a candidate costs to score does not depend on training). The 2-rank run is what ``trainer=ddp_sim`` does: two
processes, one torch thread each, a gloo process group, each rank scoring half of the round
(:class:`nasx.distributed.ShardedEvaluator`) and the metrics gathered. The 1-rank run is one process at 2 threads
(what ``trainer=cpu`` does here) and, for reference, at 1 thread.

Timed: from a barrier just before ``run_search`` to its return on rank 0 (process start-up and imports excluded;
they are a once-per-run cost), each setting ``--reps`` times with a fresh output directory, median reported. The
histories of the 1-rank and 2-rank runs are checked equal.

Usage: ``python benchmarks/ddp_search.py [--experiment quickstart] [--population 20] [--reps 3] [--quick]``
(``--quick``: a seconds-long smoke run whose numbers mean nothing). Run it with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pieces(experiment: str, population: int, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from nasx.arch import Budget
    from nasx.evaluation import ClassificationEvaluator
    from nasx.rewards import make_reward
    from nasx.stages import build

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", f"search.strategy.population={population}",
                                           "search.strategy.generations=1", f"search.strategy.top_k={population // 4}",
                                           f"search.strategy.crossover_size={population // 2}", *overrides])
    data = build(cfg.data, "data")
    data.setup("fit")
    space = build(cfg.space, "space", in_channels=data.in_channels, num_classes=data.num_classes)
    budget = Budget(mflops=cfg.budget.mflops, params=cfg.budget.params)
    torch.manual_seed(cfg.seed)
    supernet = space.supernet()
    evaluator = ClassificationEvaluator(supernet, data.calibration_batches(cfg.search.bn_batches,
                                                                           cfg.search.bn_batch_size),
                                        list(data.val_dataloader()))
    strategy = instantiate(cfg.search.strategy, _partial_=True)(space=space, budget=budget, seed=cfg.seed)
    return strategy, space, evaluator, make_reward(cfg.reward), budget


def _one(rank: int, world: int, threads: int, args, port: int, out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    import logging

    logging.getLogger("nasx").setLevel(logging.WARNING)
    from nasx import artifacts
    from nasx.search.loop import run_search

    strategy, space, evaluator, reward, budget = _pieces(args.experiment, args.population, args.override)
    search_dir = Path(out) / "search"
    import random

    warm = space.sample(random.Random("warm-up"))  # first-call costs out of the timing (bypassing the cache)
    evaluator.score(warm, evaluator.model(warm))
    if world > 1:
        torch.distributed.barrier()
    t = time.perf_counter()
    if world > 1 and rank != 0:
        with artifacts.read_only():
            run_search(strategy, space, evaluator, reward, budget, search_dir, progress=False)
    else:
        run_search(strategy, space, evaluator, reward, budget, search_dir, progress=False)
    seconds = time.perf_counter() - t
    if world > 1:
        torch.distributed.destroy_process_group()
    if rank == 0:
        artifacts.write_json(Path(out) / "seconds.json", {"seconds": seconds})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, threads: int, args) -> tuple[float, list[dict]]:
    from nasx import artifacts

    with tempfile.TemporaryDirectory() as out:
        if world == 1:
            ctx = mp.get_context("spawn")  # a fresh process, as the 2-rank run's, so neither inherits warm caches
            p = ctx.Process(target=_one, args=(0, 1, threads, args, 0, out))
            p.start()
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"the 1-rank run failed (exit {p.exitcode})")
        else:
            mp.spawn(_one, args=(world, threads, args, _free_port(), out), nprocs=world, join=True)
        return (artifacts.read_json(Path(out) / "seconds.json")["seconds"],
                artifacts.read_jsonl(Path(out) / "search" / "history.jsonl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="quickstart")
    ap.add_argument("--population", type=int, default=20, help="candidates in the generation (quickstart's is 20)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--override", action="append", default=[], help="a further config override (repeatable)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.quick:
        args.population, args.reps = 4, 1
    cores = os.cpu_count() or 1
    settings = {"1 rank, 2 threads": (1, min(2, cores)), "1 rank, 1 thread": (1, 1), "2 ranks, 1 thread each": (2, 1)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    histories = {}
    for _ in range(args.reps):  # interleaved, so a slow spell of the machine hits every setting alike
        for name, (world, threads) in settings.items():
            seconds, histories[name] = measure(world, threads, args)
            times[name].append(seconds)
    same = all(h == histories["1 rank, 1 thread"] for h in histories.values())
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "one search generation (run_search, evaluator of the experiment) on 2 ranks vs 1 rank",
        "experiment": args.experiment, "population": args.population, "reps": args.reps,
        "candidates_scored": sum(1 for r in histories["1 rank, 1 thread"] if not r["cached"] and r["metrics"]),
        "seconds_median": med, "seconds_all": times,
        "ratio_2_ranks_over_1_rank_2_threads": med["2 ranks, 1 thread each"] / med["1 rank, 2 threads"],
        "ratio_2_ranks_over_1_rank_1_thread": med["2 ranks, 1 thread each"] / med["1 rank, 1 thread"],
        "histories_equal": same,
        "machine": {"cpus": cores, "torch": torch.__version__, "platform": platform.platform()},
        "command": "python benchmarks/ddp_search.py " + " ".join(sys.argv[1:]),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from nasx import artifacts

        artifacts.write_text(Path(args.out), text + "\n")
    if not same:
        raise SystemExit("the histories differ between settings")


if __name__ == "__main__":
    main()
