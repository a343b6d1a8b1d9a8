"""The search loop: runs any ask/tell strategy against an evaluator, persistently.

Per round it asks the strategy, enforces the budget, skips candidates already scored, evaluates the rest,
tells the rewards, appends one record per candidate to ``history.jsonl`` (flushed and fsynced), and checkpoints
the strategy to ``state.pt``. A round is one ask/tell exchange: one generation for most strategies; NSGA-II may top
a generation up with further rounds until enough children meet its constraints. Killed at any moment, a re-run in
the same directory:

* loads the strategy as of the last completed round,
* truncates ``history.jsonl`` to the records of completed rounds (the records of the interrupted round are kept in
  memory so those candidates are not evaluated again),
* and continues, reaching the same history and best arch as an uninterrupted run with the same seed.

The reward sees the evaluator's metrics plus the candidate's cost (``mflops``, ``params``). Every strategy is told
one :class:`~nasx.search.strategy.Outcome` per candidate: the reward's objective vector in minimisation form (length
1 for a single-objective reward) and its feasibility; a candidate outside the budget is told ``Outcome(None,
False)``. A multi-objective reward also adds ``objectives`` and ``feasible`` to each record.

A round's new candidates go to the evaluator together (``evaluate_many``), which reports each result as it comes;
records are appended in ask order as soon as their metrics are known, so a kill loses at most the candidate being
evaluated. Records are flushed one by one and the file is fsynced once per round, before ``state.pt``.

Under DDP (a process group of W > 1 ranks) every rank runs this loop with the same strategy and seed; a round's new
candidates are split over the ranks and their metrics gathered (:class:`nasx.distributed.ShardedEvaluator`), and rank
0 alone writes (the others run inside :func:`nasx.artifacts.read_only`), so the history equals a single process's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from nasx import artifacts, distributed
from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import NasxError
from nasx.evaluation.base import Evaluator
from nasx.rewards import Objectives, WeightedSum
from nasx.search.strategy import Outcome

STATE_VERSION = 1
log = logging.getLogger("nasx")


@dataclass
class SearchResult:
    best: dict | None  # the best record (arch, metrics, reward, mflops, params, gen); None: nothing was asked
    records: list[dict]
    evaluations: int  # candidates evaluated by this process (not taken from cache or a previous run)


def _record_arch(record: dict, space: SearchSpace) -> Arch:
    return space.validate(Arch.from_dict(record["arch"]), where="history record")


def _round(record: dict) -> int:
    return record.get("round", record["gen"])


def run_search(strategy, space: SearchSpace, evaluator: Evaluator, reward: WeightedSum | Objectives,
               budget: Budget, out_dir: str | Path, progress: bool = True,
               on_generation: Callable[[int, list[dict]], None] | None = None) -> SearchResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history_path, state_path = out_dir / "history.jsonl", out_dir / "state.pt"

    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        strategy.load_state_dict(state["strategy"])
    records = artifacts.read_jsonl(history_path)
    done_gens, done_rounds = strategy.generation, strategy.rounds
    committed = [r for r in records if _round(r) < done_rounds]
    recovered = {_record_arch(r, space): r for r in records if _round(r) >= done_rounds and r["metrics"] is not None}
    rank, world = distributed.rank_world()
    if world > 1:  # candidate-parallel: every rank has read the files before rank 0 rewrites them
        distributed.barrier()
        evaluator = distributed.ShardedEvaluator(evaluator, rank, world)
        progress = progress and rank == 0
        on_generation = on_generation if rank == 0 else None
    artifacts.write_jsonl(history_path, committed)
    seen: dict[Arch, dict] = {_record_arch(r, space): r for r in committed if r["metrics"] is not None}
    evaluations = 0

    bar = _Progress(strategy.generations, done_gens, _best_reward(committed)) if progress else None
    try:
        while not strategy.done:
            gen, rnd = strategy.generation, strategy.rounds
            asked = [space.validate(a) for a in strategy.ask()]
            gen_records, outcomes, new, pending = [], [], [], {}  # pending: a new arch's record, to be filled
            for arch in asked:
                cost = space.cost(arch)
                rec = {"gen": gen, "round": rnd, "arch": arch.to_dict(), "arch_str": str(arch), "mflops": cost.mflops,
                       "params": cost.params, "cached": False, "metrics": None, "reward": None}
                if not budget.admits(cost):  # the strategy should never ask this; the loop is the last guard
                    rec["status"] = "over_budget"
                elif arch in seen:
                    rec["metrics"], rec["cached"] = seen[arch]["metrics"], True
                elif arch in recovered:
                    rec["metrics"] = recovered[arch]["metrics"]
                    seen[arch] = rec
                elif arch in new:
                    rec["cached"] = True  # asked twice in one round: scored once, by the first
                else:
                    new.append(arch)
                    pending[arch] = rec
                gen_records.append(rec)

            written = 0

            def write_ready() -> None:
                """Append, in ask order, every record whose metrics are known."""
                nonlocal written
                while written < len(gen_records):
                    rec, arch = gen_records[written], asked[written]
                    if rec.get("status") != "over_budget" and rec["metrics"] is None:
                        if not (rec["cached"] and arch in seen):
                            return  # still being evaluated
                        rec["metrics"] = seen[arch]["metrics"]
                    outcomes.append(_score(rec, reward))
                    artifacts.append_jsonl(history_path, rec, sync=False)
                    if bar:
                        bar.candidate(rec["reward"])
                    written += 1

            def on_result(i: int, metrics: Mapping[str, float]) -> None:
                nonlocal evaluations
                arch = new[i]
                rec = pending[arch]
                rec["metrics"] = dict(metrics)
                seen[arch] = rec
                evaluations += 1
                write_ready()

            write_ready()
            if new:
                evaluator.evaluate_many(new, on_result=on_result)
            write_ready()
            strategy.tell(list(zip(asked, outcomes)))
            artifacts.fsync(history_path)
            artifacts.torch_save({"version": STATE_VERSION, "strategy": strategy.state_dict()}, state_path)
            committed.extend(gen_records)
            if strategy.generation == gen:  # a top-up round: the generation goes on
                continue
            if on_generation is not None:
                on_generation(gen, committed)
            if bar:
                bar.generation_done()
    finally:
        if bar:
            bar.close()

    if isinstance(evaluator, distributed.ShardedEvaluator):
        log.info("search: rank %d of %d scored %d of the %d candidates evaluated", evaluator.rank, evaluator.world,
                 evaluator.scored, evaluator.total)
    scored = [r for r in committed if r["reward"] is not None]
    if committed and not scored:
        raise NasxError(f"search: none of the {len(committed)} candidates fit {budget}; the strategy ignores the "
                        f"budget or the budget is too tight for it")
    best = max(scored, key=lambda r: r["reward"]) if scored else None  # max keeps the first of equals
    if best is not None:
        artifacts.write_json(out_dir / "best.json", best)
    return SearchResult(best=best, records=committed, evaluations=evaluations)


def _score(rec: dict, reward: WeightedSum | Objectives) -> Outcome:
    """Fill a record's reward (and objectives) from its metrics and cost; the strategy's outcome."""
    if rec["metrics"] is None:
        return Outcome(None, False)
    full = {**rec["metrics"], "mflops": rec["mflops"], "params": rec["params"]}
    rec["reward"] = reward.scalar(full)
    outcome = Outcome(tuple(reward.vector(full)), reward.feasible(full))
    if reward.multi:
        rec["objectives"], rec["feasible"] = list(outcome.objectives), outcome.feasible
    return outcome


def _best_reward(records: list[dict]) -> float | None:
    rewards = [r["reward"] for r in records if r["reward"] is not None]
    return max(rewards) if rewards else None


class _Progress:
    """A rich progress bar over generations showing the best reward so far."""

    def __init__(self, generations: int, done: int, best: float | None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.best = best
        self.progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("generations"),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False)
        self.task = self.progress.add_task("search", total=generations, completed=done, info=self._info())
        self.progress.start()

    def _info(self) -> str:
        return "best reward —" if self.best is None else f"best reward {self.best:.4f}"

    def candidate(self, value: float | None) -> None:
        if value is not None and value != float("-inf") and (self.best is None or value > self.best):
            self.best = value
            self.progress.update(self.task, info=self._info())

    def generation_done(self) -> None:
        self.progress.update(self.task, advance=1, info=self._info())

    def close(self) -> None:
        self.progress.stop()
