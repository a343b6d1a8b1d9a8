"""CMP-NAS supplementary Tab. 4 on the embedded digits: weight-level compatibility of pruned query models.

The gallery model φg (the CPU gallery ResNet of ``conf/gallery/resnet_cpu.yaml``) is trained once; each query model
φq is φg with filters pruned from conv1 and conv2 of every bottleneck (``nasx/prune.py``: L1 magnitude, or channel
selection that best reconstructs the next layer's output), then trained four ways:

* scratch   — the pruned architecture re-initialised, cross-entropy only;
* fine-tune — from the pruned gallery weights, cross-entropy only (lr ``--finetune-lr``);
* BCT       — re-initialised, cross-entropy + BCT against φg's frozen classifier;
* KD        — re-initialised, cross-entropy + distillation from φg's logits (T = 4).

Reported: heterogeneous top-1 retrieval A(φq, φg) — test-split queries embedded by φq against the training split
embedded by φg, correct = same class — and homogeneous A(φq, φq). Chance is about 0.10.

    python experiments/cmp_nas/tab4.py                       # the table in experiments/cmp_nas/RESULTS.md

Results are kept in ``--out`` after every trained model, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from nasx import artifacts
from nasx.evaluation.compatibility import retrieval_metrics
from nasx.evaluation.embedding import embed
from nasx.losses import BCT, CrossEntropy, Distillation, Loss
from nasx.data.digits import DigitsDataModule
from nasx.models.resnet import ResNetEmbedding
from nasx.prune import prune_gallery
from nasx.training.base import fit_quiet
from nasx.training.standalone import StandaloneTraining

MODES = ("scratch", "fine-tune", "BCT", "KD")




def _reinit(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--amounts", type=float, nargs="+", default=[0.5, 0.9])
    ap.add_argument("--methods", nargs="+", default=["l1", "channel"])
    ap.add_argument("--gallery-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of each query model")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--image-size", type=int, default=16, help="digits upsampled to this size (the gallery is 4 stages)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="experiments/cmp_nas/tab4.json")
    args = ap.parse_args()

    out = Path(args.out)
    state = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    opt = dict(momentum=0.9, weight_decay=5e-4, nesterov=True, schedule="cosine")

    data = DigitsDataModule(seed=args.seed, image_size=args.image_size, batch_size=64)
    data.setup()
    (qx, qy), (gx, gy) = data.split("test"), data.split("train")

    def gallery_model() -> ResNetEmbedding:
        return ResNetEmbedding(blocks=(1, 1, 1, 1), width=16, embedding_dim=128, num_classes=10, in_channels=1,
                               stem_stride=1, stem_pool=False)

    t0 = time.time()
    gpath = out.with_name("tab4_gallery.pt")
    torch.manual_seed(args.seed)  # before the gallery is built: its initial weights are the seed's too
    gallery = gallery_model()
    if gpath.exists():
        gallery.load_state_dict(torch.load(gpath, weights_only=True))
    else:
        fit_quiet(StandaloneTraining(gallery, lr=args.lr, **opt), data, args.gallery_epochs, args.seed)
        artifacts.torch_save(gallery.state_dict(), gpath)
    gallery.eval().requires_grad_(False)
    g_emb = embed(gallery, gx)
    paragon = retrieval_metrics(embed(gallery, qx), g_emb, qy, gy, "x")["x_top1"]
    state["paragon_top1"] = paragon
    print(f"gallery: paragon A(φg, φg) top-1 {paragon:.4f} ({time.time() - t0:.0f} s)", flush=True)

    calibration = data.calibration_batches(4, 64)
    calib_x = torch.cat([x for x, _ in calibration])
    for method in args.methods:
        for amount in args.amounts:
            pruned = prune_gallery(gallery, amount, method, calibration=calib_x)
            key0 = f"{method},{amount:g},pruned"
            if key0 not in state["rows"]:
                q = embed(pruned, qx)
                state["rows"][key0] = {"het": retrieval_metrics(q, g_emb, qy, gy, "x")["x_top1"],
                                       "hom": retrieval_metrics(q, embed(pruned, gx), qy, gy, "x")["x_top1"]}
            for mode in MODES:
                key = f"{method},{amount:g},{mode}"
                if key in state["rows"]:
                    continue
                torch.manual_seed(args.seed + 1)
                model = copy.deepcopy(pruned).requires_grad_(True).train()
                if mode == "fine-tune":
                    system = StandaloneTraining(model, lr=args.finetune_lr, **opt)
                else:
                    _reinit(model)
                    if mode == "BCT":
                        system = StandaloneTraining(model, lr=args.lr, loss=Loss(
                            {"ce": CrossEntropy(), "bct": BCT(weight=1.0)}, reference=gallery), **opt)
                    elif mode == "KD":
                        system = StandaloneTraining(model, lr=args.lr, loss=Loss(
                            {"ce": CrossEntropy(), "kd": Distillation(weight=1.0, temperature=4.0)},
                            reference=gallery), **opt)
                    else:
                        system = StandaloneTraining(model, lr=args.lr, **opt)
                fit_quiet(system, data, args.epochs, args.seed + 1)
                model.eval()
                q = embed(model, qx)
                state["rows"][key] = {"het": retrieval_metrics(q, g_emb, qy, gy, "x")["x_top1"],
                                      "hom": retrieval_metrics(q, embed(model, gx), qy, gy, "x")["x_top1"]}
                artifacts.write_json(out, state)
                print(f"{key:24s} het {state['rows'][key]['het']:.4f}  hom {state['rows'][key]['hom']:.4f}  "
                      f"({time.time() - t0:.0f} s)", flush=True)
    state["args"] = vars(args)
    artifacts.write_json(out, state)

    print(f"\nHeterogeneous top-1 A(φq, φg) (homogeneous A(φq, φq) in brackets); paragon A(φg, φg) = {paragon:.3f}")
    print("| prune method | amount | pruned, untrained | " + " | ".join(MODES) + " |")
    print("|---|---|---|" + "---|" * len(MODES))
    for method in args.methods:
        for amount in args.amounts:
            cells = [state["rows"][f"{method},{amount:g},{m}"] for m in ("pruned",) + MODES]
            print(f"| {method} | {amount:.0%} | " + " | ".join(f"{c['het']:.3f} ({c['hom']:.3f})" for c in cells)
                  + " |")


if __name__ == "__main__":
    main()
