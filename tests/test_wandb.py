"""W&B tracking (``logger=wandb``, offline): one W&B run per nasx run with the supernet and retrain curves, every search
record as a table, the best and mean reward per generation, the search plots, results.json as the summary; a sweep's
runs share a group and are tagged with the swept keys; a resumed run continues the same W&B run.

Offline runs keep everything in ``<run>/wandb/offline-run-*/run-<id>.wandb`` (W&B 0.31 writes no config.yaml or
wandb-summary.json offline) plus the media files; :func:`read_offline_run` reads the record file back."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY, compose
from nasx import artifacts

ROOT = Path(__file__).resolve().parents[1]


# -- reading an offline W&B run --------------------------------------------------------------------------------------
def _records(path: Path):
    """The protobuf records of a ``.wandb`` file (W&B's LevelDB-log format: a 7-byte header, then 32 KiB blocks of
    records, each with a 7-byte header: CRC, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: Path) -> dict:
    """What an offline W&B run recorded: ``run`` (id, group, tags, name), ``config``, ``summary`` (merged updates),
    ``history`` (one dict per ``log`` call) and ``files`` (the run's files/ directory)."""
    out = {"config": {}, "summary": {}, "history": [], "run": None, "files": run_dir / "files"}
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + 30
    while True:  # W&B's service writes the file on its own: finish() may return before the last records are there
        recs = _records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for rec in recs:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "group": r.run_group, "tags": list(r.tags), "name": r.display_name,
                          "project": r.project}
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "summary":
            out["summary"].update({_item_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "history":
            out["history"].append({_item_key(i): json.loads(i.value_json) for i in rec.history.item})
    return out


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def table_of(wb: dict, key: str) -> dict:
    """The last table logged under ``key`` (its JSON file: columns and data)."""
    path = [h[f"{key}/path"] for h in wb["history"] if f"{key}/path" in h][-1]
    return json.loads((wb["files"] / path).read_text())


# -- fast: the pieces ------------------------------------------------------------------------------------------------
def _record(gen, reward, top1, arch="s:a=1", **extra):
    return {"gen": gen, "round": gen, "arch": {"space": "s", "genes": {"a": 1}}, "arch_str": arch, "mflops": 0.5,
            "params": 100, "cached": False, "metrics": None if top1 is None else {"top1": top1, "loss": 1.0},
            "reward": reward, **extra}


HISTORY = [_record(0, 0.2, 0.2, "s:a=1"), _record(0, 0.4, 0.4, "s:a=2"),
           {**_record(0, None, None, "s:a=3"), "status": "over_budget"},
           _record(1, 0.3, 0.3, "s:a=4"), _record(1, 0.1, 0.1, "s:a=5")]


def test_records_table_has_a_row_per_record_and_a_column_per_metric():
    from nasx.tracking import records_table

    columns, rows = records_table(HISTORY)
    assert columns[:5] == ["generation", "round", "arch", "reward", "mflops"]
    assert {"top1", "loss", "params", "status"} <= set(columns)
    assert len(rows) == len(HISTORY)
    col = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    assert col["arch"] == [r["arch_str"] for r in HISTORY]
    assert col["reward"] == [0.2, 0.4, None, 0.3, 0.1]
    assert col["generation"] == [0, 0, 0, 1, 1]
    assert col["top1"] == [0.2, 0.4, None, 0.3, 0.1]
    assert col["status"] == ["ok", "ok", "over_budget", "ok", "ok"]
    # a metric named like a fixed column does not shadow it
    columns, _ = records_table([_record(0, 0.5, 0.5, metrics={"reward": 1.0})])
    assert "metric.reward" in columns and columns.count("reward") == 1


def test_generation_rewards_best_mean_and_best_so_far():
    from nasx.tracking import generation_rewards

    rows = generation_rewards(HISTORY)
    assert [r["generation"] for r in rows] == [0, 1]
    assert rows[0]["best_reward"] == 0.4 and rows[0]["mean_reward"] == pytest.approx(0.3)
    assert rows[0]["candidates"] == 2  # the over-budget candidate has no reward
    assert rows[1]["best_reward"] == 0.3 and rows[1]["mean_reward"] == pytest.approx(0.2)
    assert rows[1]["best_so_far"] == 0.4


def test_tags_name_method_reward_budget_and_the_swept_keys():
    from nasx.tracking import MAX_TAG, make_tags

    tags = make_tags({"method": "cmp_nas", "reward": "cmp_r2", "budget": "mflops_100"},
                     {"reward": "cmp_r2", "seed": "1", "train.loss.bct.weight": "0." + "5" * 80}, ["mine"])
    assert tags[:4] == ["method=cmp_nas", "reward=cmp_r2", "budget=mflops_100", "seed=1"]  # no repeats
    assert tags[-1] == "mine" and all(len(t) <= MAX_TAG for t in tags)


def test_only_a_wandb_logger_makes_a_wandb_tracker(tmp_path):
    from nasx.tracking import Tracker, WandbTracker, make_tracker, uses_wandb

    assert uses_wandb(compose(["logger=wandb"], tmp_path))
    for logger in (["logger=csv"], ["~logger"]):
        cfg = compose(logger, tmp_path)
        assert not uses_wandb(cfg)
        tracker = make_tracker(SimpleNamespace(cfg=cfg, dir=tmp_path))
        assert type(tracker) is Tracker and not isinstance(tracker, WandbTracker)
    assert not (tmp_path / "wandb").exists()


def test_wandb_is_imported_only_for_a_wandb_logger():
    code = "import sys, nasx.runner, nasx.tracking, nasx.cli; print('wandb' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_missing_wandb_is_a_one_line_config_error(tmp_path, monkeypatch):
    from nasx.errors import ConfigError
    from nasx.tracking import WandbTracker

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ConfigError, match="logger=wandb needs the wandb package"):
        WandbTracker(SimpleNamespace(cfg=compose(["logger=wandb"], tmp_path), dir=tmp_path))


def _fake_run_dir(d: Path) -> dict:
    from PIL import Image

    artifacts.write_jsonl(d / "search" / "history.jsonl", HISTORY)
    Image.new("RGB", (8, 8), "red").save(d / "search" / "search.png")
    results = {"experiment": "x", "mflops": 0.5, "search_reward": 0.4, "retrain": {"test_top1": 0.9}}
    artifacts.write_json(d / "results.json", results)
    return results


def test_tracker_logs_the_run_directory_once_and_a_resume_continues_the_same_wandb_run(tmp_path, monkeypatch):
    """Offline, in-process: records table, per-generation rewards, plot, summary; the stage loggers log into the
    tracker's run under their stage's keys; a second tracker on the same directory (a resume) has the same id and
    group and logs only what changed."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    from nasx.tracking import WandbLogger, WandbTracker, active_run

    cfg = compose(["logger=wandb", "name=unit"], tmp_path)
    run = SimpleNamespace(cfg=cfg, dir=tmp_path)
    results = _fake_run_dir(tmp_path)
    tracker = WandbTracker(run)
    assert active_run() is tracker.wandb_run
    for stage, loss in (("train", 2.0), ("retrain", 1.0)):  # what make_trainer builds for each stage
        logger = WandbLogger(save_dir=str(tmp_path / stage), project="nasx", name="unit", offline=True)
        logger.log_metrics({"train/loss": loss}, step=7)
        assert logger.experiment is tracker.wandb_run
    tracker.stage_done("search")
    tracker.close()
    assert active_run() is None
    assert not list((tmp_path / "train").glob("wandb")) and not list((tmp_path / "retrain").glob("wandb"))

    (first,) = offline_runs(tmp_path)
    wb = read_offline_run(first)
    assert wb["run"]["group"] == "unit" and wb["run"]["project"] == "nasx"
    assert {"method=spos", "reward=accuracy", "budget=none"} <= set(wb["run"]["tags"])
    assert wb["config"]["sweep"]["reward"] == "accuracy" and wb["config"]["name"] == "unit"
    logged = {k: v for h in wb["history"] for k, v in h.items()}
    assert logged["train/loss"] == 2.0 and logged["trainer/global_step"] == 7
    assert logged["retrain/train/loss"] == 1.0 and logged["retrain/global_step"] == 7
    table = table_of(wb, "search/records")
    assert len(table["data"]) == len(HISTORY)
    gens = [h for h in wb["history"] if "search/generation" in h]
    assert [(h["search/generation"], h["search/best_reward"]) for h in gens] == [(0, 0.4), (1, 0.3)]
    assert list((wb["files"] / "media" / "images" / "search").glob("search_*.png"))
    assert wb["summary"]["search_reward"] == 0.4 and wb["summary"]["retrain"] == {"test_top1": 0.9}

    time.sleep(1.1)  # offline run directories are named by the second they start
    artifacts.write_json(tmp_path / "results.json", {**results, "search_reward": 0.5})
    tracker = WandbTracker(SimpleNamespace(cfg=compose(["logger=wandb", "name=other"], tmp_path), dir=tmp_path))
    tracker.stage_done("evaluate")
    tracker.close()
    runs = offline_runs(tmp_path)
    assert len(runs) == 2
    again = read_offline_run(runs[1])
    assert again["run"]["id"] == wb["run"]["id"] and again["run"]["group"] == "unit"  # the same W&B run
    assert not any("search/records/path" in h for h in again["history"])  # logged already: not again
    assert again["summary"]["search_reward"] == 0.5


# -- slow: a real sweep ------------------------------------------------------------------------------------------------
SHRINK = {"train.epochs": "1", "search.strategy.generations": "2"}  # ~20 s a job on one busy core


@pytest.mark.slow
def test_a_sweep_logs_one_wandb_run_per_job_with_records_rewards_plots_and_results(tmp_path):
    out = tmp_path / "outputs"
    tiny = [o for o in TINY if o.split("=", 1)[0] not in SHRINK] + [f"{k}={v}" for k, v in SHRINK.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "nasx", "-m", "experiment=quickstart", *tiny,
                           "reward=accuracy,acc_mflops", "seed=choice(3)",  # a swept key with one value
                           "logger=wandb", f"paths.output_dir={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((out / "quickstart").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 2

    groups = set()
    for job, reward in zip(jobs, ("accuracy", "acc_mflops")):
        (offline,) = offline_runs(job)  # one W&B run for the whole nasx run ...
        assert not list(job.glob("train/**/wandb")) and not list(job.glob("retrain/**/wandb"))  # ... none per stage
        wb = read_offline_run(offline)
        groups.add(wb["run"]["group"])
        assert {f"reward={reward}", "seed=3", "method=spos", "budget=mflops_1"} <= set(wb["run"]["tags"])
        assert wb["config"]["sweep"] == {"method": "spos", "reward": reward, "budget": "mflops_1", "seed": 3}
        assert wb["config"]["seed"] == 3 and wb["config"]["reward"]["name"] == reward  # the composed config too
        assert wb["run"]["name"] == f"quickstart/reward={reward},seed=3"

        keys = {k for h in wb["history"] for k in h}
        assert {"train/loss", "retrain/train/loss", "retrain/val/top1"} <= keys  # supernet and retrain curves

        records = artifacts.read_jsonl(job / "search" / "history.jsonl")
        table = table_of(wb, "search/records")
        assert {"generation", "arch", "reward", "mflops", "params", "top1"} <= set(table["columns"])
        col = {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}
        assert len(table["data"]) == len(records)
        assert col["arch"] == [r["arch_str"] for r in records]
        assert col["reward"] == pytest.approx([r["reward"] for r in records])
        assert col["mflops"] == pytest.approx([r["mflops"] for r in records])
        assert col["generation"] == [r["gen"] for r in records]

        per_gen = {h["search/generation"]: h for h in wb["history"] if "search/generation" in h}
        assert sorted(per_gen) == sorted({r["gen"] for r in records})
        for g, h in per_gen.items():
            rewards = [r["reward"] for r in records if r["gen"] == g and r["reward"] is not None]
            assert h["search/best_reward"] == pytest.approx(max(rewards))
            assert h["search/mean_reward"] == pytest.approx(sum(rewards) / len(rewards))

        assert list((wb["files"] / "media" / "images" / "search").glob("search_*.png"))  # search/search.png

        results = artifacts.read_json(job / "results.json")
        for k, v in results.items():
            assert wb["summary"][k] == (pytest.approx(v) if isinstance(v, float) else v), k
    (group,) = groups  # the sweep's runs share one group, named after the sweep directory
    assert group == f"quickstart/{sweep.name}"
