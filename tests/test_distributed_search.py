"""Candidate-parallel search under DDP: every rank scores its share of each generation, and the history is the one a
single process writes with the same seed and supernet (issue: cluster and dashboards)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from nasx import artifacts
from nasx.arch import Arch
from nasx.distributed import ShardedEvaluator
from nasx.evaluation.base import FunctionEvaluator


def nasx(*args, cwd: Path, threads: int = 1) -> subprocess.CompletedProcess:
    # one thread per process in both runs: a reduction over other thread counts may round differently
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "nasx", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_ddp_search_on_two_ranks_writes_the_single_process_history(tmp_path):
    """One supernet, searched twice from the same run state: in one process, and with ``trainer=ddp_sim`` (two
    processes, each scoring half of every generation). The records, rewards and best arch are identical, and the
    worker really scored candidates (its log says how many) while writing nothing."""
    single = tmp_path / "single"
    proc = nasx("experiment=quickstart", *TINY, "stages=[train]", f"hydra.run.dir={single}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = tmp_path / "ddp"
    shutil.copytree(single, ddp)

    a = nasx(f"resume={single}", "stages=[search]", cwd=tmp_path)
    assert a.returncode == 0, a.stderr[-3000:]
    b = nasx(f"resume={ddp}", "stages=[search]", "trainer=ddp_sim", cwd=tmp_path)
    assert b.returncode == 0, b.stderr[-3000:]

    ha = artifacts.read_jsonl(single / "search" / "history.jsonl")
    hb = artifacts.read_jsonl(ddp / "search" / "history.jsonl")
    assert len(ha) == 18 and ha == hb
    assert artifacts.read_json(single / "search" / "best.json") == artifacts.read_json(ddp / "search" / "best.json")
    worker_log = (ddp / "train_ddp_process_1.log").read_text()
    scored = [int(line.split("scored ")[1].split(" ")[0]) for line in worker_log.splitlines() if "rank 1 of 2" in line]
    distinct = len({r["arch_str"] for r in ha if not r["cached"]})
    assert scored and 0 < scored[-1] < distinct  # a share, not all and not none
    assert not list(ddp.rglob("*.tmp*"))


def test_sharded_evaluator_splits_a_round_and_returns_every_result_in_ask_order(monkeypatch):
    """Rank r of W scores candidates r, r + W, ...; the gathered metrics come back in ask order, on every rank."""
    import torch.distributed

    archs = [Arch("toy", (("g", i),)) for i in range(7)]
    scored_by: dict[int, list[int]] = {0: [], 1: []}

    def fake_gather(out, obj):  # what the other rank contributes: its own share, scored the same way
        out[0], out[1] = obj, {i: {"top1": i / 10} for i in range(1, 7, 2)}

    monkeypatch.setattr(torch.distributed, "all_gather_object", fake_gather)
    inner = FunctionEvaluator(lambda a: scored_by[0].append(a["g"]) or {"top1": a["g"] / 10},
                              ["top1"])
    seen = []
    out = ShardedEvaluator(inner, rank=0, world=2).evaluate_many(archs, on_result=lambda i, m: seen.append(i))
    assert scored_by[0] == [0, 2, 4, 6]
    assert [m["top1"] for m in out] == [i / 10 for i in range(7)] and seen == list(range(7))
