"""Kill -9 at random moments, resume, compare: does a killed nasx run end exactly as an uninterrupted one?

Runs a small quickstart once without interruption (the reference, which also times its four stages), then, for each
kill, starts the same command in a fresh output directory, waits until the targeted stage has started (train: the
run has validated its config and written ``config.yaml``; search: ``train/done.json``; retrain: ``search/best.json``; evaluate: ``retrain/done.json``), sleeps a
random share of that stage's reference duration, sends SIGKILL, and runs ``nasx resume=<run dir>`` until it exits 0.
Compared with the reference, byte for byte: ``search/history.jsonl``, ``search/best.json``, ``results.json``; tensor by
tensor: the supernet (``train/last.ckpt``) and the retrained model (``retrain/model.pt``). Also checked: no
``*.tmp`` file is left in the finished run.

    python experiments/reliability/kill_resume.py               # 12 kills: experiments/reliability/RESULTS.md
    python experiments/reliability/kill_resume.py --kills 20 --seed 1

Each kill's outcome is written to ``--out`` (JSON, atomically) as soon as it is known; a re-run skips kills already
there, so an interrupted study resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nasx import artifacts

CONFIG = ["experiment=quickstart", "space.stage_repeats=[1,1,2,1]", "space.input_size=16", "train.epochs=4",
          "train.warmup_epochs=1", "retrain.epochs=3", "search.strategy.generations=4", "search.strategy.population=8",
          "search.strategy.top_k=3", "search.strategy.crossover_size=4", "search.bn_batches=2", "progress=false"]
STAGES = ("train", "search", "retrain", "evaluate")
STARTED_BY = {"train": "config.yaml", "search": "train/done.json", "retrain": "search/best.json",
              "evaluate": "retrain/done.json"}  # the file whose appearance means the stage has begun
FINISHED_BY = {"train": "train/done.json", "search": "search/best.json", "retrain": "retrain/done.json",
               "evaluate": "results.json"}


def nasx_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nasx", *args]


def env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}


def run_dir_of(out: Path) -> Path | None:
    runs = list((out / "quickstart").glob("*")) if (out / "quickstart").exists() else []
    return runs[0] if runs else None


def reference(out: Path) -> dict:
    """The uninterrupted run, with the time (s after launch) at which each stage's start and end file appeared."""
    t0 = time.time()
    proc = subprocess.Popen(nasx_cmd(*CONFIG, f"paths.output_dir={out}"), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}
    while proc.poll() is None:
        d = run_dir_of(out)
        if d is not None:
            for rel in {*FINISHED_BY.values(), *STARTED_BY.values()}:
                if rel not in seen and (d / rel).exists():
                    seen[rel] = time.time() - t0
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed:\n{proc.stderr.read()[-3000:]}")
    end = time.time() - t0
    d = run_dir_of(out)
    for rel in FINISHED_BY.values():
        seen.setdefault(rel, end)
    bounds = {}
    for stage in STAGES:
        bounds[stage] = (seen[STARTED_BY[stage]], seen[FINISHED_BY[stage]])
    return {"run_dir": str(d), "seconds": end, "stages": bounds}


def stage_reached(d: Path | None) -> str:
    """The stage a killed run was in: the first whose end file is missing."""
    if d is None:
        return "startup"
    for stage in STAGES:
        if not (d / FINISHED_BY[stage]).exists():
            return stage
    return "finished"


def progress_at_kill(d: Path | None) -> dict:
    """What the killed run had saved: finished epochs in each last.ckpt, history records, stale temporary files."""
    if d is None:
        return {}
    out = {}
    for stage in ("train", "retrain"):
        ckpt = d / stage / "last.ckpt"
        if ckpt.exists():
            try:
                out[f"{stage}_epochs_saved"] = int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) + 1
            except Exception:  # torn by the kill: resume reports it
                out[f"{stage}_epochs_saved"] = "unreadable"
    history = d / "search" / "history.jsonl"
    if history.exists():
        out["history_lines"] = len(history.read_text().splitlines())
    out["tmp_files"] = len(list(d.rglob("*.tmp*")))
    return out


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def compare(ref: Path, run: Path) -> dict:
    same = {name: (ref / name).read_bytes() == (run / name).read_bytes()
            for name in ("search/history.jsonl", "search/best.json", "results.json")}
    same["supernet weights"] = same_weights(ref / "train" / "last.ckpt", run / "train" / "last.ckpt")
    same["retrained weights"] = same_weights(ref / "retrain" / "model.pt", run / "retrain" / "model.pt")
    same["no *.tmp left"] = not list(run.rglob("*.tmp*"))
    return same


def one_kill(stage: str, fraction: float, ref: dict, work: Path) -> dict:
    out = work / "outputs"
    shutil.rmtree(out, ignore_errors=True)
    start_file = STARTED_BY[stage]
    lo, hi = ref["stages"][stage]
    proc = subprocess.Popen(nasx_cmd(*CONFIG, f"paths.output_dir={out}"), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None:  # wait for the stage to begin
        d = run_dir_of(out)
        if d is not None and (d / start_file).exists():
            break
        time.sleep(0.01)
    delay = fraction * max(hi - lo, 0.05)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    d = run_dir_of(out)
    at = stage_reached(d) if killed else "finished"
    progress = progress_at_kill(d)
    resumes = 0
    if d is None or not (d / ".hydra" / "overrides.yaml").exists():  # killed before Hydra wrote the run: start again
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(nasx_cmd(*CONFIG, f"paths.output_dir={out}"), env=env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d = run_dir_of(out)
    while not (d / "results.json").exists() or resumes == 0:
        resumes += 1
        r = subprocess.run(nasx_cmd(f"resume={d}"), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
        if r.returncode != 0:
            return {"stage": stage, "killed_in": at, "delay_s": round(delay, 2), "progress": progress,
                    "error": r.stderr[-2000:]}
        if resumes > 3:
            break
    same = compare(Path(ref["run_dir"]), d)
    return {"stage": stage, "killed_in": at, "delay_s": round(delay, 2), "progress": progress, "resumes": resumes,
            "identical": same,
            "all_identical": all(same.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=12, help="kills, spread evenly over the four stages")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments (not the run)")
    ap.add_argument("--out", default="experiments/reliability/kill_resume.json")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out)
    state = json.loads(out.read_text()) if out.exists() else {}
    work = Path(args.work or tempfile.mkdtemp(prefix="nasx-kill-"))
    t0 = time.time()
    ref_out = work / "reference"
    if not (run_dir_of(ref_out) and (run_dir_of(ref_out) / "results.json").exists()):
        shutil.rmtree(ref_out, ignore_errors=True)
        state["reference"] = reference(ref_out)
        state["kills"] = {}
        artifacts.write_json(out, state)
    ref = state["reference"]
    print(f"reference: {ref['seconds']:.1f} s; stages (s after launch): "
          + ", ".join(f"{s} {a:.1f}-{b:.1f}" for s, (a, b) in ref["stages"].items()), flush=True)
    rng = random.Random(args.seed)
    plan = [(STAGES[i % 4], rng.random()) for i in range(args.kills)]
    for i, (stage, fraction) in enumerate(plan):
        key = f"{i}:{stage}:{fraction:.4f}"
        if key in state["kills"]:
            continue
        result = one_kill(stage, fraction, ref, work / f"kill{i}")
        state["kills"][key] = result
        artifacts.write_json(out, state)
        print(f"kill {i + 1}/{len(plan)}: aimed at {stage} (+{result['delay_s']} s), landed in {result['killed_in']} "
              f"{result['progress']}: "
              f"{'identical' if result.get('all_identical') else result.get('identical', result.get('error'))}",
              flush=True)
    kills = [state["kills"][f"{i}:{s}:{f:.4f}"] for i, (s, f) in enumerate(plan)]
    state["summary"] = {"kills": len(kills), "identical": sum(bool(k.get("all_identical")) for k in kills),
                        "landed_in": {s: sum(k["killed_in"] == s for k in kills)
                                      for s in ("startup", *STAGES, "finished")},
                        "after_a_training_checkpoint": sum(
                            (k["killed_in"] == "train" and k["progress"].get("train_epochs_saved", 0) not in (0, "unreadable"))
                            or (k["killed_in"] == "retrain" and k["progress"].get("retrain_epochs_saved", 0)
                                not in (0, "unreadable")) for k in kills),
                        "wall_s": round(time.time() - t0, 1), "config": CONFIG}
    artifacts.write_json(out, state)
    print(json.dumps(state["summary"], indent=2))


if __name__ == "__main__":
    main()
