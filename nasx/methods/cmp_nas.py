"""The CMP-NAS method's stages (METHODS.md §1) on three retrieval protocols: the embedded digits (closed set),
face (IMDb-Face training + IJB-C test, ``experiment=cmp_nas_face``) and fashion (DeepFashion2,
``experiment=cmp_nas_fashion``); the data module's ``protocol`` picks one (:mod:`nasx.data.retrieval`).
``method=cmp_nas`` is SPOS (:mod:`nasx.methods.spos`) with a reference model — the gallery — a BCT loss term, a
compatibility evaluator and retrieval test protocols.

* train    — the gallery model φg (a bottleneck ResNet embedding network, trained once as a classifier and then
             frozen; ``gallery.checkpoint`` reuses one across runs) → ``gallery/model.pt``; then the query supernet
             (SPOS space, uniform sampling after the warm-up) with the BCT term ``train.loss.bct.weight ·
             CE(W_g(φq(x)), y)`` against φg's frozen classifier (``weight: 0`` is "vanilla") → ``train/``.
* search   — evolution under the tier's MFLOPs budget with a compatibility reward on the search-reward split:
             ``hom`` = A(φq, φq) and ``het`` = A(φq, φg) (:mod:`nasx.evaluation.compatibility`: top-``search.reward_k`` retrieval
             for digits — validation queries against the training split, or ``search.reward_gallery`` of its images
             — and fashion, TAR@FAR=``search.reward_far`` on 1:1 pairs for face); R1 / R2 / R3 are
             ``conf/reward/cmp_r{1,2,3}.yaml``. φg's side is embedded once for the whole search.
* retrain  — the winner standalone, with BCT (``retrain.loss.bct``).
* evaluate — homogeneous and heterogeneous test metrics beside the paragon A(φg, φg): digits top-1/5/10 (test
             queries, training gallery, same class = correct); fashion top-1/10/20 on DeepFashion2 validation; face
             IJB-C 1:1 TAR@FAR and 1:N rank-k / TPIR@FPIR. Cosine similarity of the embeddings (penultimate features).
"""
from __future__ import annotations

import logging

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from nasx.errors import ConfigError
from nasx.evaluation.compatibility import FASHION_KS, KS, CompatibilityEvaluator, RetrievalReward, VerificationReward
from nasx.evaluation.embedding import load_pixels
from nasx.evaluation.pairs import verification_pairs
from nasx.methods.base import ResultsTable
from nasx.methods.cmp_nas_protocols import PROTOCOL_NOTES, RESULTS, report_columns
from nasx.methods.spos import SPOS
from nasx.stages import chosen_arch, load_model, load_supernet, reference_model

log = logging.getLogger("nasx")


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
               "reward_impostor_pairs": _positive_int("reward_impostor_pairs", "the face reward's impostor-pair cap"),
               "reward_gallery": _positive_int("reward_gallery", "the closed-set reward's gallery size")}


class CMPNAS(SPOS):
    """A CMP-NAS run; ``protocol`` ("closed_set" | "face" | "fashion") comes from the data module."""

    name = "cmp_nas"
    has_reference = True

    def __init__(self):
        self._gallery: torch.nn.Module | None = None

    def check_config(self, cfg: DictConfig) -> None:
        if cfg.get("gallery") is None:
            raise ConfigError("method=cmp_nas needs a gallery model config (gallery=resnet_cpu or gallery=resnet101)")
        for key in REWARD_KEYS:  # checked before the data is read; setup says which the protocol needs
            if cfg.search.get(key) is not None:
                REWARD_KEYS[key](cfg.search[key])
        super().check_config(cfg)

    @staticmethod
    def protocol(run) -> str:
        return getattr(run.data, "protocol", "closed_set")

    def setup(self, run) -> None:
        dim = run.cfg.gallery.model.embedding_dim
        if dim is not None and dim != run.space.last_channels:
            raise ConfigError(f"gallery.model.embedding_dim ({dim}) must equal the query embedding size "
                              f"space.last_channels ({run.space.last_channels}): BCT feeds query embeddings to the "
                              f"gallery's classifier (null picks it)")
        c = run.cfg.search
        needed = ("reward_far", "reward_genuine_pairs", "reward_impostor_pairs") if self.protocol(run) == "face" \
            else ("reward_k",)
        for key in needed:
            REWARD_KEYS[key](c.get(key))
        super().setup(run)

    def metrics(self, run) -> list[str]:
        if self.protocol(run) == "face":
            return VerificationReward.names()
        return RetrievalReward.names(FASHION_KS if self.protocol(run) == "fashion" else KS, run.cfg.search.reward_k)

    def reference(self, run) -> torch.nn.Module:
        """φg: trained once as a classifier, then frozen; ``gallery.checkpoint`` reuses a trained one.
        ``gallery.model.embedding_dim: null`` = the query space's embedding size (``last_channels`` after the
        tier's width scale), so one config serves every tier."""
        if self._gallery is None:
            self._gallery = reference_model(run, "gallery", lambda: instantiate(
                run.cfg.gallery.model, in_channels=run.data.in_channels, num_classes=run.data.num_classes,
                embedding_dim=run.space.last_channels))
        return self._gallery

    # -- stages --------------------------------------------------------------------------------------------------
    def train(self, run) -> None:
        self.reference(run)  # the gallery first: the query supernet is trained against it
        super().train(run)

    def evaluator(self, run) -> CompatibilityEvaluator:
        c = run.cfg.search
        run.data.setup("fit")
        return CompatibilityEvaluator(load_supernet(run), run.data.calibration_batches(c.bn_batches, c.bn_batch_size),
                                      reward_data(run), self.reference(run), run.device)

    def evaluate(self, run) -> dict:
        arch, best = chosen_arch(run)
        run.data.setup("test")
        model = load_model(run, arch, "retrain").to(run.device)
        rows = RESULTS[self.protocol(run)](run.data, model, self.reference(run).to(run.device), run.device)
        results = {**self.summary(run, arch, best), "protocol": self.protocol(run),
                   "train_loss": _loss_text(run.cfg.train.loss), "retrain_loss": _loss_text(run.cfg.retrain.loss),
                   "metrics": report_columns(self.protocol(run)), "test": rows}
        self.write_results(run, results)
        return results

    # -- output --------------------------------------------------------------------------------------------------
    def table(self, r: dict) -> ResultsTable:
        header, rows = table(r)  # one row per test metric, one column per model and side (hom / het), in %
        return ResultsTable(f"nasx · {r['experiment']} · CMP-NAS: {r['mflops']:.3f} MFLOPs, reward {r['reward']}",
                            header, rows)

    def report(self, run, r: dict) -> str:
        return report(r)


def _loss_text(loss_cfg) -> str:
    """``ce + 1·bct`` — the active terms of a loss config, with their weights."""
    return " + ".join(name if float(node.get("weight", 1.0)) == 1.0 else f"{float(node.get('weight')):g}·{name}"
                      for name, node in loss_cfg.items() if float(node.get("weight", 1.0)) > 0)


def reward_data(run) -> RetrievalReward | VerificationReward:
    """The search reward's images and metric for the run's protocol (see :mod:`nasx.evaluation.compatibility`)."""
    c, data = run.cfg.search, run.data
    if CMPNAS.protocol(run) == "closed_set":
        return RetrievalReward(*data.split("val"), *reward_gallery(data.split("train"), c.get("reward_gallery"),
                                                                   run.cfg.seed), KS, c.reward_k)
    if CMPNAS.protocol(run) == "fashion":
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


def reward_gallery(train: tuple[torch.Tensor, torch.Tensor], size: int | None, seed: int):
    """The closed-set reward's gallery: the training split, or [nasx] ``search.reward_gallery`` of its images drawn
    at random (by ``seed``, kept in split order) — every candidate embeds the gallery, so a large training split makes
    the search cost that many forward passes per candidate. ``None`` (the default) keeps them all."""
    x, y = train
    if size is None or size >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return x[keep], y[keep]


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
             f"- query space `{r['space']}`, budget {r['budget']}, reward `{r['reward']}`, loss "
             f"`{r['train_loss']}` (supernet) / `{r['retrain_loss']}` (retrain)",
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
