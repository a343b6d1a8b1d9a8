"""`nasx compare`: a sweep's results side by side, with the swept keys as columns, in compare.csv and compare.png,
and a one-line error for a directory with no results."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from nasx import artifacts

ROOT = Path(__file__).resolve().parents[1]


def _nasx(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nasx", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _fake_run(root: Path, name: str, overrides: list[str], results: dict) -> Path:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    artifacts.write_json(d / "results.json", results)
    return d


def _results(mflops, reward, top1):
    return {"experiment": "x", "mflops": mflops, "params": 1000, "search_reward": reward,
            "retrain": {"test_top1": top1, "epochs": 3}, "arch": {"genes": {"a": 1}}, "history": [1, 2]}


def test_swept_keys_become_columns_and_every_scalar_reaches_the_csv(tmp_path):
    from nasx.compare import main

    sweep = tmp_path / "multirun"
    _fake_run(sweep, "0_reward=cmp_r1", ["experiment=q", "reward=cmp_r1", "seed=0"], _results(0.9, 0.7, 0.8))
    _fake_run(sweep, "1_reward=cmp_r2", ["experiment=q", "reward=cmp_r2", "seed=0"], _results(0.8, 0.6, 0.75))
    _fake_run(sweep, "2_reward=cmp_r3", ["experiment=q", "reward=cmp_r3", "seed=0"], _results(0.95, 0.65, 0.7))
    main([str(sweep)])
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [r["reward"] for r in rows] == ["cmp_r1", "cmp_r2", "cmp_r3"]
    assert list(rows[0])[:3] == ["run", "reward", "experiment"]  # the swept key, then the results' scalars
    assert "seed" not in rows[0]  # the same in every run: not swept
    assert [float(r["retrain.test_top1"]) for r in rows] == [0.8, 0.75, 0.7]
    assert rows[0]["arch.genes.a"] == "1" and "history" not in rows[0]  # scalars flattened, lists left out
    assert (sweep / "compare.png").stat().st_size > 1000


def test_no_results_is_one_line_error_naming_the_directory(tmp_path):
    empty = tmp_path / "empty_sweep"
    (empty / "0_seed=1").mkdir(parents=True)
    proc = _nasx("compare", str(empty), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no results.json" in lines[0] and str(empty) in lines[0], proc.stderr
    proc = _nasx("compare", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode == 2 and "no such directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unknown_metric_or_colour_key_is_one_line_error(tmp_path):
    from nasx.compare import main
    from nasx.errors import ConfigError

    _fake_run(tmp_path, "a", ["seed=1"], _results(1, 0.5, 0.5))
    _fake_run(tmp_path, "b", ["seed=2"], _results(1, 0.6, 0.6))
    with pytest.raises(ConfigError, match="--metrics nope"):
        main([str(tmp_path), "--metrics", "nope"])
    with pytest.raises(ConfigError, match="--color reward: not a swept key"):
        main([str(tmp_path), "--color", "reward"])


@pytest.mark.slow
def test_compare_reads_a_real_two_point_sweep(tmp_path):
    """A tiny `nasx -m ... reward=accuracy,acc_mflops` sweep, then `nasx compare` on its directory: one row per job,
    the reward column tells them apart, and the metrics are the jobs' own results.json values."""
    out = tmp_path / "outputs"
    proc = _nasx("-m", "experiment=quickstart", *TINY, "reward=accuracy,acc_mflops", f"paths.output_dir={out}",
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((out / "quickstart").iterdir())
    proc = _nasx("compare", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reward" in proc.stdout and "retrain.test_top1" in proc.stdout
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert sorted(r["reward"] for r in rows) == ["acc_mflops", "accuracy"]
    for r in rows:
        job = next(p for p in sweep.iterdir() if p.is_dir() and f"reward={r['reward']}" in p.name)
        saved = artifacts.read_json(job / "results.json")
        assert float(r["mflops"]) == pytest.approx(saved["mflops"])
        assert float(r["retrain.test_top1"]) == pytest.approx(saved["retrain"]["test_top1"])
    assert (sweep / "compare.png").is_file()
