"""End to end: the four stages leave the run directory of DESIGN.md, resume after a kill, and bad input fails
with one line, a non-zero exit and no partial artifact."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, compose
from nasx import artifacts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from nasx.runner import run

    run_dir = tmp_path_factory.mktemp("run")
    results = run(compose(["experiment=quickstart", *TINY], run_dir))
    return run_dir, results


def test_pipeline_leaves_the_run_directory_described_in_the_design(finished_run):
    run_dir, results = finished_run
    for rel in ("config.yaml", "train/last.ckpt", "train/done.json", "search/history.jsonl", "search/state.pt",
                "search/best.json", "search/search.png", "retrain/last.ckpt", "retrain/model.pt", "results.json",
                "report.md"):
        assert (run_dir / rel).is_file(), rel
    saved = artifacts.read_json(run_dir / "results.json")
    assert saved == json.loads(json.dumps(results))
    best = artifacts.read_json(run_dir / "search" / "best.json")
    assert saved["arch"] == best["arch"] and saved["search_reward"] == best["reward"]
    assert saved["mflops"] <= 1.0  # budget mflops_1 of the quickstart
    assert 0.0 <= saved["retrain"]["test_top1"] <= 1.0 and saved["params"] > 0
    report = (run_dir / "report.md").read_text()
    assert saved["arch_str"] in report and "test top-1, retrained" in report
    history = artifacts.read_jsonl(run_dir / "search" / "history.jsonl")
    assert len(history) == 3 * 6 and {r["gen"] for r in history} == {0, 1, 2}
    assert not list(run_dir.rglob("*.tmp*")), "a temporary file was left behind"


def test_rerunning_a_finished_run_redoes_nothing(finished_run):
    from nasx.runner import run

    run_dir, results = finished_run
    ckpt_mtime = (run_dir / "train" / "last.ckpt").stat().st_mtime
    again = run(compose(["experiment=quickstart", *TINY], run_dir))
    assert (run_dir / "train" / "last.ckpt").stat().st_mtime == ckpt_mtime
    assert again["arch"] == results["arch"] and again["retrain"] == results["retrain"]


def test_search_killed_mid_generation_resumes_to_the_same_result(finished_run, tmp_path, monkeypatch):
    """Same seed, same supernet: a search interrupted after a few evaluations and resumed in its run directory
    writes the same history and picks the same arch as the uninterrupted search."""
    import shutil

    from nasx.evaluation import classification as evaluator_module
    from nasx.runner import run

    run_dir, _ = finished_run
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(run_dir / "train", resumed_dir / "train")
    shutil.copy(run_dir / "config.yaml", resumed_dir / "config.yaml")

    calls = {"n": 0}
    original = evaluator_module.ClassificationEvaluator.evaluate

    def dying(self, arch):
        if calls["n"] == 8:
            raise KeyboardInterrupt  # what a kill looks like from inside
        calls["n"] += 1
        return original(self, arch)

    monkeypatch.setattr(evaluator_module.ClassificationEvaluator, "evaluate", dying)
    cfg = compose(["experiment=quickstart", *TINY, "stages=[search]"], resumed_dir)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert 0 < len(artifacts.read_jsonl(resumed_dir / "search" / "history.jsonl")) < 18
    monkeypatch.setattr(evaluator_module.ClassificationEvaluator, "evaluate", original)
    run(cfg)
    assert artifacts.read_jsonl(resumed_dir / "search" / "history.jsonl") == \
        artifacts.read_jsonl(run_dir / "search" / "history.jsonl")
    assert artifacts.read_json(resumed_dir / "search" / "best.json")["arch"] == \
        artifacts.read_json(run_dir / "search" / "best.json")["arch"]


def test_wandb_logger_runs_offline_without_an_account(tmp_path, monkeypatch):
    from nasx.runner import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    run(compose(["experiment=quickstart", *TINY, "stages=[train]", "logger=wandb"], tmp_path / "run"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))  # one W&B run per nasx run, not per stage
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert not (tmp_path / "run" / "train" / "wandb").exists()


# -- the CLI, as a user runs it ---------------------------------------------------------------------------------------
def nasx(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "nasx", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    return lines[0]


@pytest.fixture
def bad_arch_files(tmp_path):
    genes = {f"b{i}": 0 for i in range(8)} | {f"w{i}": 0 for i in range(8)}  # shufflenet_cpu has 8 layers
    unknown = {"space": "shufflenet_cpu", "genes": genes | {"depth": 2}}
    out_of_range = {"space": "shufflenet_cpu", "genes": genes | {"w7": 12}}
    (tmp_path / "unknown.json").write_text(json.dumps(unknown))
    (tmp_path / "range.json").write_text(json.dumps(out_of_range))
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["arch={d}/unknown.json"], r"unknown\.json: unknown gene 'depth'"),
    (["arch={d}/range.json"], r"range\.json: gene 'w7' has choice 12, expected 0\.\.9"),
    (["data=cifar10", "paths.data_dir={d}/nowhere"], r"nowhere/cifar10.*cifar-10-batches-py"),
    (["budget.mflops=0.1"], r"budget of 0\.1 MFLOPs is infeasible: the smallest architecture of space "
                            r"'shufflenet_cpu' costs 0\.\d+ MFLOPs"),
    (["search.strategy.population=0"], r"search\.strategy\.population must be a positive integer, got 0"),
    (["search.strategy.generations=-1"], r"search\.strategy\.generations must be a positive integer, got -1"),
])
def test_bad_input_fails_with_one_line_and_leaves_no_run_directory(bad_arch_files, args, message):
    d = bad_arch_files
    proc = nasx("experiment=quickstart", f"paths.output_dir={d}/outputs", *[a.format(d=d) for a in args], cwd=d)
    line = _error_line(proc)
    assert line.startswith("nasx: error: ")
    import re
    assert re.search(message, line), line
    assert proc.returncode == 2
    leftovers = list((d / "outputs").rglob("*")) if (d / "outputs").exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers


@pytest.mark.parametrize("args", [["experiment=nope"], ["space=nope"], ["search=nope"]])
def test_unknown_config_name_is_refused_by_hydra(tmp_path, args):
    proc = nasx(*args, f"paths.output_dir={tmp_path}/outputs", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_cli_resume_continues_a_run_in_its_own_directory_with_its_overrides(tmp_path):
    out = tmp_path / "outputs"
    first = nasx("experiment=quickstart", *TINY, "stages=[train]", f"paths.output_dir={out}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = list((out / "quickstart").iterdir())
    assert (run_dir / "train" / "done.json").exists() and not (run_dir / "search").exists()
    second = nasx(f"resume={run_dir}", "stages=[search,retrain,evaluate]", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert list((out / "quickstart").iterdir()) == [run_dir]  # no new run directory
    results = artifacts.read_json(run_dir / "results.json")
    # the original overrides (tiny settings) were kept: 3 generations of 6
    assert len(artifacts.read_jsonl(run_dir / "search" / "history.jsonl")) == 18
    assert results["experiment"] == "quickstart"


def test_ddp_on_two_cpu_processes_trains_one_supernet_and_rank_zero_finishes(tmp_path):
    out = tmp_path / "outputs"
    proc = nasx("experiment=quickstart", *TINY, "trainer=ddp_sim", f"paths.output_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list((out / "quickstart").iterdir())
    done = artifacts.read_json(run_dir / "train" / "done.json")
    assert done["world_size"] == 2
    # each rank saw half the batches per epoch: the global step counts optimizer steps of one rank
    assert (run_dir / "results.json").exists() and len(artifacts.read_jsonl(run_dir / "search" / "history.jsonl")) == 18


def test_training_killed_mid_fit_leaves_last_ckpt_of_the_finished_epoch_and_resumes(tmp_path, monkeypatch):
    """Nothing is lost when a run is killed: last.ckpt is written after every epoch, not only at the end."""
    import lightning as L
    import torch

    import nasx.stages
    from nasx.methods.spos import SPOS
    from nasx.runner import Run
    from nasx.stages import train_supernet

    class Killed(Exception):
        """Stands in for a kill (Lightning turns a real KeyboardInterrupt into sys.exit and ignores SIGINT after)."""

    class KillAfterEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise Killed

    cfg = compose(["experiment=quickstart", *TINY, "train.epochs=3", "stages=[train]"], tmp_path)
    run = Run(cfg, SPOS())
    original = nasx.stages.make_trainer

    def trainer_with_kill(*args, **kwargs):
        t = original(*args, **kwargs)
        t.callbacks.append(KillAfterEpoch())
        return t

    monkeypatch.setattr(nasx.stages, "make_trainer", trainer_with_kill)
    with pytest.raises(Killed):
        train_supernet(run)
    monkeypatch.setattr(nasx.stages, "make_trainer", original)
    ckpt = torch.load(tmp_path / "train" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 1 and not (tmp_path / "train" / "done.json").exists()
    assert not (tmp_path / "train" / "checkpoints").exists()  # no second checkpoint family
    train_supernet(Run(cfg, SPOS()))  # resumes and finishes
    assert torch.load(tmp_path / "train" / "last.ckpt", weights_only=False)["epoch"] == 2
    assert (tmp_path / "train" / "done.json").exists()


def test_sweep_job_directory_names_stay_within_file_system_limits():
    """`nasx -m` with many overrides names each job directory after them; a long list is cut and hashed, not an
    OSError (File name too long)."""
    from nasx.cli import MAX_DIRNAME, short_dirname

    short = "reward=cmp_r1,train.loss.bct.weight=0"
    assert short_dirname(short) == short
    long_a = ",".join(f"search.strategy.key{i}={i}" for i in range(20))
    long_b = long_a.replace("key19=19", "key19=20")
    assert len(short_dirname(long_a)) == MAX_DIRNAME and short_dirname(long_a) != short_dirname(long_b)
    assert short_dirname(long_a).startswith(long_a[:100])
