"""Cluster launches through hydra-submitit-launcher: a sweep through submitit's local executor, a job preempted
mid-search that submitit requeues into the same run directory and that finishes with the history of an uninterrupted
run, the sbatch script of ``hydra/launcher=slurm``, and the launcher's one-line errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY

from nasx import artifacts

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")

LONG = [*TINY, "search.strategy.generations=8"]  # a search long enough to be interrupted in its middle


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def nasx(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nasx", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)


def _task_pid(run_dir: Path) -> int | None:
    """The submitit task process running the job of ``run_dir``: the one holding the job's log file open."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"submitit.core._submit" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            if any(os.readlink(fd).startswith(str(run_dir)) for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return int(pid)
        except OSError:
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the job's process through /proc")
def test_a_job_preempted_mid_search_is_requeued_into_its_run_directory_and_ends_as_if_uninterrupted(tmp_path):
    out = tmp_path / "outputs"
    sweep = subprocess.Popen([sys.executable, "-m", "nasx", "-m", "hydra/launcher=submitit_local",
                              "experiment=quickstart", *LONG, "seed=1,2", f"paths.output_dir={out}"],
                             cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    interrupted, deadline = None, time.time() + 600
    while sweep.poll() is None and time.time() < deadline:
        for run_dir in sorted(out.glob("quickstart/multirun_*/[0-9]*")):
            history = run_dir / "search" / "history.jsonl"
            if interrupted is None and (run_dir / "search" / "state.pt").exists() and history.exists() \
                    and 6 <= len(history.read_text().splitlines()) < 36:  # after generation 0, before the end
                pid = _task_pid(run_dir)
                if pid is not None:
                    os.kill(pid, signal.SIGUSR2)  # what SLURM sends before a time-out or on preemption
                    interrupted = run_dir
        time.sleep(0.05)
    log = sweep.communicate(timeout=60)[0]
    assert sweep.returncode == 0, log[-3000:]
    assert interrupted is not None, "no job was caught in the middle of its search"

    (sweep_dir,) = list((out / "quickstart").iterdir())  # one sweep directory: the requeue made no new timestamp
    runs = sorted(p for p in sweep_dir.iterdir() if p.name[0].isdigit())
    assert len(runs) == 2 and all((r / "results.json").exists() for r in runs)
    submitit_logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in submitit_logs  # submitit owned the requeue
    job_log = (interrupted / "cli.log").read_text()
    assert job_log.count("stage search") == 2 and "train: done already" in job_log  # resumed, not restarted

    seed = next(o for o in yaml.safe_load((interrupted / ".hydra" / "overrides.yaml").read_text())
                if o.startswith("seed="))
    ref = tmp_path / "uninterrupted"
    proc = nasx("experiment=quickstart", *LONG, seed, f"hydra.run.dir={ref}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = artifacts.read_jsonl(ref / "search" / "history.jsonl")
    assert len(expected) == 48
    assert artifacts.read_jsonl(interrupted / "search" / "history.jsonl") == expected
    assert artifacts.read_json(interrupted / "results.json")["arch"] == artifacts.read_json(ref / "results.json")["arch"]


def _fake_srun(tmp_path, monkeypatch) -> None:
    """An ``srun`` on PATH, as on a SLURM login node (submitit looks for it; it is never run here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _slurm_script(tmp_path, monkeypatch, *overrides) -> str:
    """Run the CLI in-process up to the sbatch call, and return the script submitit would submit."""
    from submitit.slurm.slurm import SlurmExecutor

    from nasx import cli

    scripts = []

    class Submitted(Exception):
        pass

    def fake_submit(self, command):
        scripts.append(self._make_submission_file_text(command, "test"))
        raise Submitted

    monkeypatch.setattr(SlurmExecutor, "_submit_command", fake_submit)
    _fake_srun(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises((Submitted, SystemExit)):
        cli.main(["-m", "hydra/launcher=slurm", "experiment=cmp_nas_digits", f"paths.output_dir={tmp_path}/out",
                  *overrides])
    assert scripts, "nothing was submitted"
    return scripts[0]


def test_the_slurm_launcher_asks_for_one_task_per_device_and_requeues_through_submitit(tmp_path, monkeypatch):
    script = _slurm_script(tmp_path, monkeypatch, "trainer=ddp", "trainer.devices=4", "hydra.launcher.partition=gpu",
                           "hydra.launcher.account=lab", "hydra.launcher.timeout_min=90",
                           "+hydra.launcher.additional_parameters={mail-type:END}")
    for line in ("#SBATCH --ntasks-per-node=4", "#SBATCH --nodes=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=90",
                 "#SBATCH --signal=USR2@120", "#SBATCH --mail-type=END"):
        assert line in script, f"{line} missing from:\n{script}"


def test_a_cpu_trainer_on_slurm_asks_for_no_gpus(tmp_path, monkeypatch):
    script = _slurm_script(tmp_path, monkeypatch, "trainer=ddp_sim")
    assert "#SBATCH --ntasks-per-node=2" in script and "gpus" not in script


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("overrides,expected", [
    (["hydra/launcher=slurm", "hydra.launcher.partitionn=gpu"], "hydra.launcher.partitionn: launcher 'slurm' has no "
                                                                  "such key"),
    (["hydra/launcher=slrum"], "hydra/launcher=slrum: no such launcher"),
    (["hydra.launcher.partition=gpu"], "the default launcher (basic) has no settings"),
    (["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.tasks_per_node=2"],
     "hydra.launcher.tasks_per_node=2 does not match trainer.devices=4"),
    (["hydra/launcher=slurm", "trainer=ddp"], "hydra.launcher.tasks_per_node must be a positive integer, got -1"),
    (["hydra/launcher=slurm", "trainer=cpu", "hydra.launcher.tasks_per_node=4"], "with a single-process trainer"),
])
def test_bad_launcher_settings_are_one_line(overrides, expected, tmp_path, monkeypatch, capsys):
    from nasx import cli

    _fake_srun(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["-m", "experiment=quickstart", f"paths.output_dir={tmp_path}/out", *overrides])
    assert e.value.code == 2
    assert expected in _error(capsys)


def test_slurm_off_a_slurm_cluster_is_one_line(tmp_path, monkeypatch, capsys):
    from nasx import cli

    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["-m", "hydra/launcher=slurm", "experiment=quickstart", "trainer=ddp_sim",
                  f"paths.output_dir={tmp_path}/out"])
    assert "no 'srun' on PATH" in _error(capsys)


def test_slurm_without_submitit_names_the_install_command(tmp_path, monkeypatch, capsys):
    from nasx import cli

    monkeypatch.setattr(cli, "submitit_installed", lambda: False)
    with pytest.raises(SystemExit):
        cli.main(["-m", "hydra/launcher=slurm", "experiment=quickstart", f"paths.output_dir={tmp_path}/out"])
    line = _error(capsys)
    assert "needs hydra-submitit-launcher" in line and "pip install 'nasx[slurm]'" in line


def test_inside_a_slurm_job_tasks_that_do_not_match_the_devices_are_one_line(monkeypatch, tmp_path):
    from conftest import compose

    from nasx.errors import ConfigError
    from nasx.runner import check_config

    cfg = compose(["experiment=quickstart", "trainer=ddp", "trainer.devices=4"], tmp_path)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "nasx")
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(ConfigError, match="trainer.devices=4 does not match the 2 SLURM tasks per node"):
        check_config(cfg)
