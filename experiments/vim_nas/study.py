"""Does one supernet serve image and video? VIM-NAS's joint supernet against an image-only and a video-only one.

Three runs of ``experiment=vim_nas_digits`` with the same number of optimizer steps (``data.steps_per_epoch`` fixed
to the joint run's default, 76, × ``train.epochs``), the same space, budget, search and retraining:

* ``joint``: digits (images) + moving digits labelled by digit + moving digits labelled by motion direction; the
  first third of the epochs on the digits alone, then one data set per step in proportion to its size [seed];
* ``image``: the digits alone;
* ``video``: the two moving-digits data sets alone (no image-only phase);
* ``joint2x`` (only with ``--only joint2x``): the joint run with twice the steps, so that each data set gets about
  the steps its specialist got.

For each supernet: the perturbation-selected and the evolved arch (params; validation top-1 per data set with
inherited weights) and the evolved arch retrained (test top-1 per data set). Writes ``study.json`` (every number,
the commands and seconds) and ``study.md`` (the table RESULTS.md shows).

    python experiments/vim_nas/study.py                 # the joint run alone first (timed), then image and video
                                                       # side by side, one thread each
    python experiments/vim_nas/study.py --only joint    # one of them
    python experiments/vim_nas/study.py --only joint2x  # the joint supernet with twice the steps (48 epochs)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nasx import artifacts  # noqa: E402

STEPS = 76  # the joint data's default steps per epoch (digits + 2 × moving digits batches of 64)
RUNS = {
    "joint": [],
    "image": ["~data.datasets.moving_digits", "~data.datasets.moving_digits_motion"],
    "video": ["~data.datasets.digits", "data.image_dataset=moving_digits", "data.image_only_epochs=0"],
    # twice the steps: about as many steps per data set as the specialists get (digits ~1,850, each video set ~900)
    "joint2x": ["train.epochs=48"],
}
NAMES = ["digits", "moving_digits", "moving_digits_motion"]


def command(name: str, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "nasx", "experiment=vim_nas_digits", f"data.steps_per_epoch={STEPS}",
            "progress=false", *RUNS[name], *extra, f"hydra.run.dir={out / name}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(RUNS), action="append")
    ap.add_argument("--runs", default=str(ROOT / "outputs" / "vim_nas_study"), help="where the run directories go")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "vim_nas" / "study.json"))
    ap.add_argument("--override", action="append", default=[], help="a further override for every run")
    args = ap.parse_args()
    runs_dir, out = Path(args.runs), Path(args.out)
    state = artifacts.read_json(out) if out.exists() else {"runs": {}}
    todo = [n for n in (args.only or ["joint", "image", "video"]) if n not in state["runs"]]
    env = {**os.environ, "WANDB_MODE": "offline"}

    def finish(name: str, cmd: list[str], seconds: float, threads: str) -> None:
        r = json.loads((runs_dir / name / "results.json").read_text())
        state["runs"][name] = {"command": " ".join(cmd[1:]), "seconds": round(seconds, 1), "torch_threads": threads,
                               "datasets": r["datasets"], "found": r["found"], "retrain": r["retrain"]}
        artifacts.write_json(out, state)

    if "joint" in todo:  # alone, at the machine's default threads: the timed run of experiment=vim_nas_digits
        cmd = command("joint", runs_dir, args.override)
        t = time.time()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        finish("joint", cmd, time.time() - t, "default")
        todo.remove("joint")
    procs = {}
    side_by_side = len(todo) > 1
    for name in todo:  # the others side by side, one thread each (a single one at the default threads)
        cmd = command(name, runs_dir, args.override)
        run_env = {**env, "OMP_NUM_THREADS": "1"} if side_by_side else env
        procs[name] = (cmd, time.time(), subprocess.Popen(cmd, env=run_env, cwd=ROOT))
    for name, (cmd, t, p) in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"run {name} failed: {' '.join(cmd)}")
        finish(name, cmd, time.time() - t, "1" if side_by_side else "default")
    table(state, out.with_suffix(".md"))


def table(state: dict, path: Path) -> None:
    head = "| supernet | arch (source) | params | " + " | ".join(NAMES) + " |"
    lines = [head, "|" + "---|" * (3 + len(NAMES))]
    for run in ("joint", "image", "video", "joint2x"):
        r = state["runs"].get(run)
        if r is None:
            continue
        for source in ("selection", "evolution"):
            f = r["found"][source]
            cells = [f"{100 * f['supernet_val'][f'top1/{n}']:.1f}" if f"top1/{n}" in f["supernet_val"] else "—"
                     for n in NAMES]
            lines.append(f"| {run} | {source} (supernet, val) | {f['params'] / 1e6:.3f} M | " + " | ".join(cells)
                         + " |")
        test = r["retrain"]["test_top1"]
        cells = [f"{100 * test[n]:.1f}" if n in test else "—" for n in NAMES]
        lines.append(f"| {run} | evolution, retrained (test) | {r['found']['evolution']['params'] / 1e6:.3f} M | "
                     + " | ".join(cells) + " |")
    artifacts.write_text(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
