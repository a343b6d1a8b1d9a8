"""What the cluttered ranking benchmark (experiments/mixpath/ranking.py) costs per unit of work, on the CPU or a GPU.

Times the three kinds of work the benchmark is made of, with its own settings (``DEFAULTS["cluttered"]``: the S1
CPU space at 32 px with a stride-2 stem, SGD lr 0.1, batch 64, channels-last, all 18,000 training images):

* one standalone epoch of the cheapest and of the dearest of its 24 archs (the ground truth trains 24 archs × 2 seeds
  × 5 epochs);
* one supernet epoch with MixPath's sampling (m = 2, shadow BN; the benchmark trains 2 supernets × 60 epochs);
* scoring one arch with inherited weights after BN calibration, on the 10,000 test images (the benchmark scores
  24 archs × 4 settings).

Each is timed after an untimed warm-up fit (or arch); an epoch is (3-epoch fit − 1-epoch fit) / 2. It prints the
per-unit seconds, the ratio supernet epoch ÷ standalone epoch (of the mean of the two archs), and the benchmark's
wall time extrapolated for one process (the units times their counts). Results go to
``benchmarks/ranking_throughput.json`` under the device's name.

    python benchmarks/ranking_throughput.py                    # CPU, 1 thread (the benchmark's setting)
    python benchmarks/ranking_throughput.py --accelerator gpu  # on a GPU machine
    python benchmarks/ranking_throughput.py --quick            # a smoke run (seconds)
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "mixpath"))
sys.path.insert(0, str(ROOT))

from nasx import artifacts  # noqa: E402
from nasx.data.cluttered import ClutteredDigitsDataModule  # noqa: E402
from nasx.evaluation import ClassificationEvaluator  # noqa: E402
from nasx.training.base import fit_quiet  # noqa: E402
from nasx.training.standalone import StandaloneTraining  # noqa: E402
from nasx.training.supernet import SupernetTraining  # noqa: E402
from ranking import DEFAULTS, OPTIM, s1_cluttered, sample_archs  # noqa: E402

COUNTS = {"standalone_epochs": 24 * 2 * 5, "supernet_epochs": 2 * 60, "arch_scores": 24 * 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--data-root", default=str(ROOT / "data" / "cluttered_digits"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "ranking_throughput.json"))
    ap.add_argument("--quick", action="store_true", help="a smoke run on 640 training images; numbers mean nothing, "
                                                         "nothing is written")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = DEFAULTS["cluttered"]
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    cpu = f"{platform.processor() or platform.machine()} CPU, {args.threads} thread(s)"
    name = torch.cuda.get_device_name(0) if args.accelerator == "gpu" else cpu
    t = time.time()
    data = ClutteredDigitsDataModule(root=args.data_root, image_size=d["image_size"], batch_size=d["batch_size"])
    data.setup()
    if args.quick:
        x, y = data._raw["train"]
        data._raw["train"] = (x[:640], y[:640])
    print(f"data ready in {time.time() - t:.1f} s", flush=True)
    optim = {**OPTIM, "lr": d["lr"]}

    sp = s1_cluttered(d["image_size"], d["stem_stride"])
    archs = sample_archs(sp, 24, 0, d["sample"])

    def timed_fit(system, epochs):
        t = time.time()
        fit_quiet(system, data, epochs, 0, accelerator=args.accelerator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.time() - t

    def epoch_seconds(make_system):
        timed_fit(make_system(), 1)  # untimed: first-call costs (allocator, cuDNN's algorithm search, caches)
        one, three = timed_fit(make_system(), 1), timed_fit(make_system(), 3)
        return (three - one) / 2  # the difference drops the per-fit start-up

    res = {}
    for label, arch in (("cheapest", archs[0]), ("dearest", archs[-1])):
        res[f"standalone_epoch_s_{label}"] = epoch_seconds(
            lambda: StandaloneTraining(sp.supernet().extract(arch).to(memory_format=torch.channels_last), **optim))
        print(f"standalone epoch, {label} arch ({sp.cost(arch).mflops:.2f} MFLOPs): "
              f"{res[f'standalone_epoch_s_{label}']:.2f} s", flush=True)
    net = sp.supernet().to(memory_format=torch.channels_last)
    res["supernet_epoch_s"] = epoch_seconds(lambda: SupernetTraining(net, sp, seed=0, **optim))
    print(f"supernet epoch: {res['supernet_epoch_s']:.2f} s", flush=True)
    ev = ClassificationEvaluator(net, data.calibration_batches(4, 64), list(data.test_dataloader()), device=device)
    ev.evaluate(sp.arch(archs[0].choices()))
    t = time.time()
    for a in archs[1:5]:
        ev.evaluate(sp.arch(a.choices()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    res["arch_score_s"] = (time.time() - t) / 4
    print(f"one arch scored (calibration + 10,000 test images): {res['arch_score_s']:.2f} s", flush=True)
    standalone = (res["standalone_epoch_s_cheapest"] + res["standalone_epoch_s_dearest"]) / 2
    res["ratio_supernet_epoch_over_standalone_epoch"] = res["supernet_epoch_s"] / standalone
    res["extrapolated_benchmark_s_one_process"] = (standalone * COUNTS["standalone_epochs"] + res["supernet_epoch_s"]
                                                   * COUNTS["supernet_epochs"] + res["arch_score_s"]
                                                   * COUNTS["arch_scores"])
    print(f"supernet epoch ÷ standalone epoch: {res['ratio_supernet_epoch_over_standalone_epoch']:.2f}")
    print(f"the whole benchmark ({COUNTS}), one process: about "
          f"{res['extrapolated_benchmark_s_one_process'] / 60:.0f} min")
    if args.quick:
        return
    out = Path(args.out)
    state = json.loads(out.read_text()) if out.exists() else {}
    state[name] = {"counts": COUNTS, "torch": torch.__version__, **{k: round(v, 3) for k, v in res.items()}}
    artifacts.write_json(out, state)


if __name__ == "__main__":
    main()
