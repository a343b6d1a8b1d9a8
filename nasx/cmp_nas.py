"""The CMP-NAS method's stages (METHODS.md §1) on the embedded digits' closed-set retrieval protocol.

* train    — the gallery model φg (a bottleneck ResNet embedding network, trained once as a classifier and then
             frozen; ``gallery.checkpoint`` reuses one across runs) → ``gallery/model.pt``; then the query supernet
             (SPOS space, uniform sampling after the warm-up) with the BCT term ``train.bct_weight ·
             CE(W_g(φq(x)), y)`` against φg's frozen classifier (``bct_weight: 0`` is "vanilla") → ``train/``.
* search   — evolution under the tier's MFLOPs budget with a retrieval reward: ``hom`` = A(φq, φq) and ``het`` =
             A(φq, φg) (top-``search.reward_k`` retrieval accuracy, queries from the validation split, gallery the
             training split); R1 / R2 / R3 are ``conf/reward/cmp_r{1,2,3}.yaml``. φg's gallery embeddings are
             computed once for the whole search.
* retrain  — the winner standalone, with BCT (``retrain.bct_weight``).
* evaluate — homogeneous and heterogeneous top-1/5/10 on the test queries, beside the paragon A(φg, φg).

The protocol [seed: DATASETS.md "digits"]: queries from the held-out split, gallery from the training split, a
retrieved image is correct if it has the query's class; cosine similarity of the embeddings (the penultimate
features).
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from nasx import artifacts
from nasx.arch import Arch
from nasx.errors import ConfigError, NasxError
from nasx.evaluator import bn_recalibrate
from nasx.metrics.retrieval import topk_retrieval
from nasx.pipeline import STAGES, Run, _optim, chosen_arch, load_supernet, start, train_standalone, train_supernet
from nasx.search.loop import run_search
from nasx.search.plots import plot_search
from nasx.training.standalone import StandaloneTraining

log = logging.getLogger("nasx")
KS = (1, 5, 10)


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Penultimate features (the embedding) of ``x`` in eval mode, in batches."""
    model.eval()
    return torch.cat([model.forward_features(x[i:i + batch]) for i in range(0, len(x), batch)])


def retrieval_metrics(query: torch.Tensor, gallery: torch.Tensor, yq: torch.Tensor, yg: torch.Tensor,
                      prefix: str, reward_k: int | None = None) -> dict[str, float]:
    ks = tuple(sorted(set(KS) | ({reward_k} if reward_k else set())))
    top = topk_retrieval(query, gallery, yq, yg, ks=ks)
    out = {f"{prefix}_top{k}": top[k] for k in ks}
    if reward_k:
        out[prefix] = top[reward_k]
    return out


class RetrievalEvaluator:
    """``evaluator(arch) -> {hom, het, hom_top1, …, het_top10}`` for a query candidate from the supernet.

    Per candidate: extract, recalibrate BN on the cached training batches, embed the queries and (for A(φq, φq)) the
    gallery; A(φq, φg) uses φg's gallery embeddings, computed once. Cached per arch."""

    metrics = ("hom", "het") + tuple(f"{p}_top{k}" for p in ("hom", "het") for k in KS)

    def __init__(self, supernet, calibration, queries: tuple[torch.Tensor, torch.Tensor],
                 gallery: tuple[torch.Tensor, torch.Tensor], gallery_model: torch.nn.Module, reward_k: int = 1,
                 device: str | torch.device = "cpu"):
        self.supernet, self.device, self.reward_k = supernet.eval(), torch.device(device), reward_k
        self.calibration = [(x.to(self.device), y.to(self.device)) for x, y in calibration]
        self.qx, self.qy = queries[0].to(self.device), queries[1].to(self.device)
        self.gx, self.gy = gallery[0].to(self.device), gallery[1].to(self.device)
        self.gallery_g = embed(gallery_model.to(self.device), self.gx)  # φg(gallery): once for the whole search
        self.cache: dict[Arch, dict[str, float]] = {}

    def __call__(self, arch: Arch) -> dict[str, float]:
        if arch not in self.cache:
            model = bn_recalibrate(self.supernet.extract(arch).to(self.device), self.calibration)
            q = embed(model, self.qx)
            m = retrieval_metrics(q, embed(model, self.gx), self.qy, self.gy, "hom", self.reward_k)
            m.update(retrieval_metrics(q, self.gallery_g, self.qy, self.gy, "het", self.reward_k))
            self.cache[arch] = m
        return self.cache[arch]


class CMPRun(Run):
    def __init__(self, cfg: DictConfig):
        if cfg.get("gallery") is None:
            raise ConfigError("method=cmp_nas needs a gallery model config (gallery=resnet_cpu or gallery=resnet101)")
        rk = cfg.search.get("reward_k")
        if not isinstance(rk, int) or isinstance(rk, bool) or rk < 1:
            raise ConfigError(f"search.reward_k (the top-k of the search reward) must be a positive integer, got {rk!r}")
        super().__init__(cfg)
        dim = cfg.gallery.model.embedding_dim
        if dim != self.space.last_channels:
            raise ConfigError(f"gallery.model.embedding_dim ({dim}) must equal the query embedding size "
                              f"space.last_channels ({self.space.last_channels}): BCT feeds query embeddings to the "
                              f"gallery's classifier")

    def check_reward(self) -> None:
        self.reward.check(list(RetrievalEvaluator.metrics) + ["mflops", "params"])

    def gallery_model(self) -> torch.nn.Module:
        return instantiate(self.cfg.gallery.model, in_channels=self.data.in_channels,
                           num_classes=self.data.num_classes)


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


def search(run: CMPRun, gallery: torch.nn.Module) -> dict:
    c = run.cfg.search
    run.data.setup("fit")
    dev = run.device()
    evaluator = RetrievalEvaluator(load_supernet(run).to(dev), run.data.calibration_batches(c.bn_batches,
                                                                                            c.bn_batch_size),
                                   run.data.split("val"), run.data.split("train"), gallery, c.reward_k, dev)
    out = run.dir / "search"
    plot = lambda gen, records: plot_search(records, out / "search.png", run.budget.mflops,  # noqa: E731
                                            title=f"{run.cfg.name}: {run.reward!r}")
    result = run_search(run.strategy, run.space, evaluator, run.reward, run.budget, out, progress=run.cfg.progress,
                        on_generation=plot)
    plot(None, result.records)
    return result.best


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
    model, gallery = model.to(dev), gallery.to(dev)
    (qx, qy), (gx, gy) = run.data.split("test"), run.data.split("train")
    qx, qy, gx, gy = qx.to(dev), qy.to(dev), gx.to(dev), gy.to(dev)
    q, g_q, g_g = embed(model, qx), embed(model, gx), embed(gallery, gx)
    rows = {"query (retrained)": {**retrieval_metrics(q, g_q, qy, gy, "hom"),
                                  **retrieval_metrics(q, g_g, qy, gy, "het")},
            "paragon A(φg, φg)": retrieval_metrics(embed(gallery, qx), g_g, qy, gy, "hom")}
    cost = run.space.cost(arch)
    results = {"experiment": run.cfg.name, "method": "cmp_nas", "seed": run.cfg.seed, "space": run.space.name,
               "arch": arch.to_dict(), "arch_str": str(arch), "mflops": cost.mflops, "params": cost.params,
               "budget": str(run.budget), "reward": repr(run.reward), "bct_weight": run.cfg.train.bct_weight,
               "retrain_bct_weight": run.cfg.retrain.bct_weight,
               "search_reward": best["reward"] if best else None, "search_metrics": best["metrics"] if best else None,
               "test": rows}
    artifacts.write_json(run.dir / "results.json", results)
    artifacts.write_text(run.dir / "report.md", report(results))
    return results


def report(r: dict) -> str:
    lines = [f"# nasx run: {r['experiment']} (CMP-NAS)", "",
             f"- query space `{r['space']}`, budget {r['budget']}, reward `{r['reward']}`, BCT weight "
             f"{r['bct_weight']} (supernet) / {r['retrain_bct_weight']} (retrain)",
             f"- arch `{r['arch_str']}`: {r['mflops']:.3f} MFLOPs, {r['params']:,} params", "",
             "| model | hom top-1 | hom top-5 | hom top-10 | het top-1 | het top-5 | het top-10 |",
             "|---|---|---|---|---|---|---|"]
    for name, m in r["test"].items():
        cells = [f"{100 * m[f'{p}_top{k}']:.2f}" if f"{p}_top{k}" in m else "—" for p in ("hom", "het") for k in KS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Queries: test split; gallery: training split; correct = same class; cosine similarity.", ""]
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
