"""The CMP-NAS method's stages (METHODS.md §1) on three retrieval protocols: the embedded digits (closed set),
face (IMDb-Face training + IJB-C test, ``experiment=cmp_nas_face``) and fashion (DeepFashion2,
``experiment=cmp_nas_fashion``); the data module's ``protocol`` picks one (:mod:`nasx.data.retrieval`).

* train    — the gallery model φg (a bottleneck ResNet embedding network, trained once as a classifier and then
             frozen; ``gallery.checkpoint`` reuses one across runs) → ``gallery/model.pt``; then the query supernet
             (SPOS space, uniform sampling after the warm-up) with the BCT term ``train.bct_weight ·
             CE(W_g(φq(x)), y)`` against φg's frozen classifier (``bct_weight: 0`` is "vanilla") → ``train/``.
* search   — evolution under the tier's MFLOPs budget with a compatibility reward on the search-reward split:
             ``hom`` = A(φq, φq) and ``het`` = A(φq, φg) (:mod:`nasx.cmp_eval`: top-``search.reward_k`` retrieval
             for digits and fashion, TAR@FAR=``search.reward_far`` on 1:1 pairs for face); R1 / R2 / R3 are
             ``conf/reward/cmp_r{1,2,3}.yaml``. φg's side is embedded once for the whole search.
* retrain  — the winner standalone, with BCT (``retrain.bct_weight``).
* evaluate — homogeneous and heterogeneous test metrics beside the paragon A(φg, φg): digits top-1/5/10 (test
             queries, training gallery, same class = correct); fashion top-1/10/20 on DeepFashion2 validation; face
             IJB-C 1:1 TAR@FAR and 1:N rank-k / TPIR@FPIR. Cosine similarity of the embeddings (penultimate features).
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from nasx import artifacts
from nasx.cmp_eval import (FASHION_KS, KS, CompatibilityEvaluator, RetrievalEvaluator, RetrievalReward,
                           VerificationReward, embed, face_results, fashion_results, load_pixels, report_columns,
                           retrieval_metrics, verification_pairs)
from nasx.errors import ConfigError, NasxError
from nasx.pipeline import STAGES, Run, _optim, chosen_arch, load_supernet, start, train_standalone, train_supernet
from nasx.pipeline import search as pipeline_search
from nasx.training.standalone import StandaloneTraining

log = logging.getLogger("nasx")
__all__ = ["CMPRun", "RetrievalEvaluator", "embed", "retrieval_metrics", "run_cmp_nas"]


def _positive_int(key: str, what: str):
    def check(v) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"search.{key} ({what}) must be a positive integer, got {v!r}")
    return check


def _check_far(v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ConfigError(f"search.reward_far (the FAR of the face reward's TAR@FAR) must lie in (0, 1), got {v!r}")


REWARD_KEYS = {"reward_k": _positive_int("reward_k", "the top-k of the search reward"),
               "reward_far": _check_far,
               "reward_genuine_pairs": _positive_int("reward_genuine_pairs", "the face reward's genuine-pair cap"),
               "reward_impostor_pairs": _positive_int("reward_impostor_pairs", "the face reward's impostor-pair cap")}


class CMPRun(Run):
    """A CMP-NAS run; ``protocol`` ("closed_set" | "face" | "fashion") comes from the data module."""

    def __init__(self, cfg: DictConfig):
        if cfg.get("gallery") is None:
            raise ConfigError("method=cmp_nas needs a gallery model config (gallery=resnet_cpu or gallery=resnet101)")
        for key in REWARD_KEYS:  # checked before the data is read; check_reward says which the protocol needs
            if cfg.search.get(key) is not None:
                REWARD_KEYS[key](cfg.search[key])
        super().__init__(cfg)
        dim = cfg.gallery.model.embedding_dim
        if dim is not None and dim != self.space.last_channels:
            raise ConfigError(f"gallery.model.embedding_dim ({dim}) must equal the query embedding size "
                              f"space.last_channels ({self.space.last_channels}): BCT feeds query embeddings to the "
                              f"gallery's classifier (null picks it)")

    @property
    def protocol(self) -> str:
        return getattr(self.data, "protocol", "closed_set")

    def check_reward(self) -> None:
        c = self.cfg.search
        needed = ("reward_far", "reward_genuine_pairs", "reward_impostor_pairs") if self.protocol == "face" else (
            "reward_k",)
        for key in needed:
            REWARD_KEYS[key](c.get(key))
        if self.protocol == "face":
            names = VerificationReward.names()
        else:
            names = RetrievalReward.names(FASHION_KS if self.protocol == "fashion" else KS, c.reward_k)
        self.reward.check(names + ["mflops", "params"])

    def gallery_model(self) -> torch.nn.Module:
        """φg; ``gallery.model.embedding_dim: null`` = the query space's embedding size (``last_channels`` after
        the tier's width scale), so one config serves every tier."""
        return instantiate(self.cfg.gallery.model, in_channels=self.data.in_channels,
                           num_classes=self.data.num_classes, embedding_dim=self.space.last_channels)


def train_gallery(run: CMPRun) -> torch.nn.Module:
    """φg: trained once as a classifier, then frozen. ``gallery.checkpoint`` reuses a trained one."""
    g = run.cfg.gallery
    model = run.gallery_model()
    path = Path(g.checkpoint) if g.get("checkpoint") else run.dir / "gallery" / "model.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        return model.eval().requires_grad_(False)
    if g.get("checkpoint"):
        raise ConfigError(f"gallery.checkpoint: no such file '{path}' (a run's gallery/model.pt)")
    stage = run.dir / "gallery"
    L.seed_everything(run.cfg.seed + 2, workers=True, verbose=False)
    system = StandaloneTraining(model, checkpoint_dir=str(stage), **_optim(g))
    last = stage / "last.ckpt"
    trainer = run.trainer("gallery", g.epochs, val=True, distributed=False)
    trainer.fit(system, datamodule=run.data, ckpt_path=str(last) if last.exists() else None)
    artifacts.torch_save({"state_dict": model.state_dict()}, path)
    return model.eval().requires_grad_(False)


def reward_data(run: CMPRun) -> RetrievalReward | VerificationReward:
    """The search reward's images and metric for the run's protocol (see :mod:`nasx.cmp_eval`)."""
    c, data = run.cfg.search, run.data
    if run.protocol == "closed_set":
        return RetrievalReward(*data.split("val"), *data.split("train"), KS, c.reward_k)
    if run.protocol == "fashion":
        queries, shop = data.reward_sets()
        return RetrievalReward(load_pixels(data.eval_loader(queries.crops, normalise=False)), queries.labels,
                               load_pixels(data.eval_loader(shop.crops, normalise=False)), shop.labels, FASHION_KS,
                               c.reward_k, prepare=data.normalise)
    images = data.reward_set()
    pairs, genuine = verification_pairs(images.labels, c.reward_genuine_pairs, c.reward_impostor_pairs, run.cfg.seed)
    used, pairs = torch.unique(pairs, return_inverse=True)  # only the images the pairs use are read
    pixels = load_pixels(data.eval_loader(torch.utils.data.Subset(images.crops, used.tolist()), normalise=False))
    log.info("search reward: %d genuine and %d impostor pairs over %d carved images", int(genuine.sum()),
             int((genuine == 0).sum()), len(used))
    return VerificationReward(pixels, pairs, genuine, c.reward_far, prepare=data.normalise)


def search(run: CMPRun, gallery: torch.nn.Module) -> dict:
    c = run.cfg.search
    run.data.setup("fit")
    dev = run.device()
    evaluator = CompatibilityEvaluator(load_supernet(run).to(dev), run.data.calibration_batches(c.bn_batches,
                                                                                                c.bn_batch_size),
                                       reward_data(run), gallery, dev)
    return pipeline_search(run, evaluator)


def closed_set_results(data, model: torch.nn.Module, gallery: torch.nn.Module, dev: torch.device) -> dict:
    """Digits rows: test queries against the training gallery, top-1/5/10."""
    (qx, qy), (gx, gy) = data.split("test"), data.split("train")
    qx, qy, gx, gy = qx.to(dev), qy.to(dev), gx.to(dev), gy.to(dev)
    q, g_q, g_g = embed(model, qx), embed(model, gx), embed(gallery, gx)
    return {"query (retrained)": {**retrieval_metrics(q, g_q, qy, gy, "hom"),
                                  **retrieval_metrics(q, g_g, qy, gy, "het")},
            "paragon A(φg, φg)": retrieval_metrics(embed(gallery, qx), g_g, qy, gy, "hom")}


RESULTS = {"closed_set": closed_set_results, "face": face_results, "fashion": fashion_results}
PROTOCOL_NOTES = {
    "closed_set": "Queries: test split; gallery: training split; correct = same class; cosine similarity.",
    "face": "IJB-C, templates pooled from (image + mirrored) embeddings × face score. 1:1: "
            "ijbc_template_pair_label.txt, het = tid1 by the query model, tid2 by the gallery model. 1:N: mixed "
            "probes (query model) against G1 and G2 separately, averaged; rank-k over mated probes. — = not "
            "measurable on this data (too few impostor pairs / non-mated probes).",
    "fashion": "DeepFashion2 validation: user items with style > 0 as queries, shop items with style > 0 as the "
               "gallery, ground-truth box crops; correct = same (pair_id, style); cosine similarity.",
}


def evaluate(run: CMPRun, gallery: torch.nn.Module, model: torch.nn.Module | None = None) -> dict:
    arch, best = chosen_arch(run)
    run.data.setup("test")
    dev = run.device()
    if model is None:
        path = run.dir / "retrain" / "model.pt"
        if not path.exists():
            raise NasxError(f"evaluate needs a retrained model at '{path}': run the retrain stage first")
        model = run.space.supernet().extract(arch)
        model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    rows = RESULTS[run.protocol](run.data, model.to(dev), gallery.to(dev), dev)
    cost = run.space.cost(arch)
    results = {"experiment": run.cfg.name, "method": "cmp_nas", "protocol": run.protocol, "seed": run.cfg.seed,
               "space": run.space.name, "arch": arch.to_dict(), "arch_str": str(arch), "mflops": cost.mflops,
               "params": cost.params, "budget": str(run.budget), "reward": repr(run.reward),
               "bct_weight": run.cfg.train.bct_weight, "retrain_bct_weight": run.cfg.retrain.bct_weight,
               "search_reward": best["reward"] if best else None, "search_metrics": best["metrics"] if best else None,
               "metrics": report_columns(run.protocol), "test": rows}
    artifacts.write_json(run.dir / "results.json", results)
    artifacts.write_text(run.dir / "report.md", report(results))
    return results


def table(r: dict) -> tuple[list[str], list[list[str]]]:
    """The test results as (header, rows): one row per metric (``r["metrics"]``), one column per model and side
    (hom / het) present; percentages, "—" where absent or not measurable. Shared by report.md and the CLI."""
    columns = [(name, p) for name, m in r["test"].items() for p in ("hom", "het")
               if any(k.startswith(f"{p}_") for k in m)]
    header = ["metric"] + [f"{name} {p}" if name.startswith("query") else name for name, p in columns]
    rows = []
    for suffix, label in r.get("metrics") or [[f"top{k}", f"top-{k}"] for k in KS]:
        values = [r["test"][name].get(f"{p}_{suffix}") for name, p in columns]
        rows.append([label] + ["—" if v is None else f"{100 * v:.2f}" for v in values])
    return header, rows


def report(r: dict) -> str:
    header, rows = table(r)
    lines = [f"# nasx run: {r['experiment']} (CMP-NAS)", "",
             f"- query space `{r['space']}`, budget {r['budget']}, reward `{r['reward']}`, BCT weight "
             f"{r['bct_weight']} (supernet) / {r['retrain_bct_weight']} (retrain)",
             f"- arch `{r['arch_str']}`: {r['mflops']:.3f} MFLOPs, {r['params']:,} params"]
    if r.get("search_metrics"):
        far = r["search_metrics"].get("far")
        lines.append(f"- search reward {r['search_reward']:.4f}: hom {r['search_metrics']['hom']:.4f}, het "
                     f"{r['search_metrics']['het']:.4f}" + (f" (TAR@FAR={far:.3g})" if far is not None else ""))
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "hom = A(φq, φq), het = A(φq, φg) (queries by the query model, gallery by the gallery model), "
              "in %. " + PROTOCOL_NOTES[r.get("protocol", "closed_set")], ""]
    return "\n".join(lines)


def run_cmp_nas(cfg: DictConfig) -> dict:
    r = start(cfg, CMPRun)
    results, model, gallery = {}, None, None
    for stage in STAGES:
        if stage not in cfg.stages:
            continue
        log.info("stage %s", stage)
        if gallery is None:
            gallery = train_gallery(r)
        head = gallery.classifier
        if stage == "train":
            train_supernet(r, bct_head=head)
        elif stage == "search":
            search(r, gallery)
        elif stage == "retrain":
            model = train_standalone(r, chosen_arch(r)[0], "retrain", bct_head=head)
        else:
            results = evaluate(r, gallery, model)
    return results
