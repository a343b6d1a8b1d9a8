"""The four stages — train, search, retrain, evaluate — and the run directory.

``run(cfg)`` is a plain function (tests call it with a composed config); the CLI wraps it with Hydra. Every stage is
resumable: run it again in the same run directory and it continues (training from ``last.ckpt``, search from
``state.pt`` + ``history.jsonl``) or skips what is finished.

Run directory::

    config.yaml                 the composed config of the run (resume reads it)
    train/last.ckpt, done.json  supernet training
    search/history.jsonl, state.pt, best.json, search.png
    retrain/last.ckpt, model.pt, done.json
    results.json, report.md
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nasx import artifacts
from nasx.arch import Arch, Budget, SearchSpace
from nasx.errors import ConfigError, NasxError
from nasx.evaluator import Evaluator, bn_recalibrate, classification_metrics
from nasx.rewards import make_reward
from nasx.search.loop import run_search
from nasx.search.plots import plot_search
from nasx.training.standalone import StandaloneTraining
from nasx.training.supernet import SupernetTraining

log = logging.getLogger("nasx")
STAGES = ("train", "search", "retrain", "evaluate")


class AtomicCheckpointIO(L.pytorch.plugins.TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed, so a kill never leaves a torn checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        artifacts.torch_save(checkpoint, Path(path))


class SaveLast(L.Callback):
    """Writes ``<stage>/last.ckpt`` at the end of every training epoch, so a killed fit resumes from its last finished
    epoch. (Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` only when it also wrote
    a top-k checkpoint — in Lightning 2.6 that is never, which left nothing to resume from until the fit ended.)"""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


# -- setup ---------------------------------------------------------------------------------------------------------
class Run:
    """Everything the stages share, built and validated before any work starts."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.dir = Path(cfg.paths.run_dir)
        _check_config(cfg)
        self.data = instantiate(cfg.data)
        self.data.check()
        self.space: SearchSpace = instantiate(cfg.space, in_channels=self.data.in_channels,
                                              num_classes=self.data.num_classes)
        self.budget = Budget(mflops=cfg.budget.mflops, params=cfg.budget.params)
        self.space.check_feasible(self.budget)
        self.reward = make_reward(cfg.reward)
        self.check_reward()
        self.fixed_arch = self._load_arch(cfg.arch) if cfg.arch else None
        # built now so that bad search hyper-parameters fail before training
        factory = instantiate(cfg.search.strategy, _partial_=True)
        extra = {}
        if getattr(factory.func, "multi_objective", False):
            if not self.reward.multi:
                raise ConfigError(f"search.strategy {factory.func.__name__} optimises several objectives: choose a "
                                  f"multi-objective reward such as reward=acc_mflops")
            extra["n_objectives"] = len(self.reward.objectives)
        self.strategy = factory(space=self.space, budget=self.budget, seed=cfg.seed, **extra)

    def check_reward(self) -> None:
        """The reward may name only metrics the method's evaluator produces, and the cost."""
        self.reward.check(list(Evaluator.metrics) + ["mflops", "params"])

    def _load_arch(self, path: str) -> Arch:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"arch: no such file '{p}' (expected a JSON arch such as a run's search/best.json)")
        arch = Arch.from_json(p.read_text(), where=str(p))
        return self.space.validate(arch, where=str(p))

    def trainer(self, stage: str, epochs: int, val: bool = False, distributed: bool = True) -> L.Trainer:
        return make_trainer(self.cfg, self.dir / stage, epochs, val=val, distributed=distributed)

    def device(self) -> torch.device:
        return device_of(self.cfg)


def device_of(cfg: DictConfig) -> torch.device:
    """Where search-time evaluation runs: the trainer's accelerator."""
    return torch.device("cuda" if cfg.trainer.get("accelerator") == "gpu" and torch.cuda.is_available() else "cpu")


def make_trainer(cfg: DictConfig, stage_dir: Path, epochs: int, val: bool = False,
                 distributed: bool = True) -> L.Trainer:
    """A Lightning trainer writing to ``stage_dir``: last.ckpt every epoch (atomically), the configured logger, rich
    progress. ``distributed=False`` keeps the accelerator but one device: DDP workers take part in supernet training
    only."""
    single = {} if distributed else {"devices": 1, "strategy": "auto"}
    callbacks = [SaveLast(stage_dir / "last.ckpt")]
    if cfg.progress:
        callbacks.append(L.pytorch.callbacks.RichProgressBar(leave=True))
    logger = instantiate(cfg.logger, save_dir=str(stage_dir)) if cfg.logger else False
    return instantiate(cfg.trainer, max_epochs=epochs, default_root_dir=str(stage_dir), logger=logger,
                       callbacks=callbacks, plugins=[AtomicCheckpointIO()], enable_progress_bar=cfg.progress,
                       enable_checkpointing=False,  # SaveLast writes the one checkpoint a stage resumes from
                       limit_val_batches=None if val else 0, num_sanity_val_steps=0, enable_model_summary=False,
                       **single)


def check_stages(cfg: DictConfig) -> None:
    bad = [s for s in cfg.stages if s not in STAGES]
    if bad:
        raise ConfigError(f"stages: unknown stage '{bad[0]}' (accepted: {', '.join(STAGES)})")


def _check_config(cfg: DictConfig) -> None:
    """Config errors name the key and what it accepts, before any work starts."""
    check_stages(cfg)
    for key in ("train.epochs", "retrain.epochs", "search.bn_batches", "search.bn_batch_size"):
        v = OmegaConf.select(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if "bn_" in key else 0):
            raise ConfigError(f"{key} must be a {'positive' if 'bn_' in key else 'non-negative'} integer, got {v!r}")
    w = cfg.train.warmup_epochs
    if not isinstance(w, int) or not 0 <= w <= cfg.train.epochs:
        raise ConfigError(f"train.warmup_epochs must be an integer in 0..train.epochs ({cfg.train.epochs}), got {w!r}")
    for key in ("budget.mflops", "budget.params"):
        v = OmegaConf.select(cfg, key)
        if v is not None and (not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"{key} must be a positive number or null, got {v!r}")
    if cfg.retrain.init not in ("fresh", "inherited"):
        raise ConfigError(f"retrain.init must be 'fresh' or 'inherited', got '{cfg.retrain.init}'")


def _optim(c: DictConfig) -> dict:
    return dict(lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov,
                schedule=c.schedule, label_smoothing=c.label_smoothing)


def _bct(c: DictConfig, head: torch.nn.Linear | None) -> dict:
    """BCT arguments of a training system: only with a gallery classifier, weighted by ``<group>.bct_weight``."""
    return {"bct_weight": float(c.get("bct_weight", 0.0)), "bct_head": head} if head is not None else {}


# -- stages --------------------------------------------------------------------------------------------------------
def _ddp_worker() -> bool:
    """True in the processes Lightning's DDP launcher starts for ranks other than 0."""
    return int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0


def train_supernet(run: Run, force: bool = False, bct_head: torch.nn.Linear | None = None) -> int:
    """Train the supernet; returns this process's global rank (only rank 0 goes on to the later stages).
    ``force`` skips the finished-already check (a DDP worker must join the fit rank 0 starts). ``bct_head``: the
    gallery model's classifier, for BCT training with weight ``train.bct_weight``."""
    stage_dir = run.dir / "train"
    if not force and (stage_dir / "done.json").exists():
        log.info("train: done already (%s)", stage_dir / "done.json")
        return 0
    c = run.cfg.train
    L.seed_everything(run.cfg.seed, workers=True, verbose=False)
    system = SupernetTraining(run.space.supernet(), run.space, seed=run.cfg.seed, warmup_epochs=c.warmup_epochs,
                              checkpoint_dir=str(stage_dir), **_optim(c), **_bct(c, bct_head))
    last = stage_dir / "last.ckpt"
    trainer = run.trainer("train", c.epochs)
    trainer.fit(system, datamodule=run.data, ckpt_path=str(last) if last.exists() else None)
    if trainer.global_rank == 0:
        artifacts.write_json(stage_dir / "done.json", {"epochs": c.epochs, "global_step": trainer.global_step,
                                                       "world_size": trainer.world_size})
    return trainer.global_rank


def load_supernet(run: Run) -> torch.nn.Module:
    path = run.dir / "train" / "last.ckpt"
    if not path.exists():
        raise NasxError(f"search needs a trained supernet at '{path}': run the train stage first "
                        f"(stages=[train,search,...]) or point resume= at a run that has one")
    supernet = run.space.supernet()
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    supernet.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return supernet


def make_evaluator(run: Run, calibrate: bool = True) -> Evaluator:
    """The classification evaluator of a run: its trained supernet, cached calibration and validation batches."""
    c = run.cfg.search
    run.data.setup("fit")
    return Evaluator(load_supernet(run).to(run.device()), run.data.calibration_batches(c.bn_batches, c.bn_batch_size),
                     list(run.data.val_dataloader()), device=run.device(), calibrate=calibrate)


def search(run: Run, evaluator=None) -> dict:
    """Single-objective search with ``evaluator`` (default: :func:`make_evaluator`), plot, best record."""
    evaluator = make_evaluator(run) if evaluator is None else evaluator
    out = run.dir / "search"
    plot = lambda gen, records: plot_search(records, out / "search.png", run.budget.mflops,  # noqa: E731
                                            title=f"{run.cfg.name}: {run.reward!r}")
    result = run_search(run.strategy, run.space, evaluator, run.reward, run.budget, out, progress=run.cfg.progress,
                        on_generation=plot)
    plot(None, result.records)
    return result.best


def chosen_arch(run: Run) -> tuple[Arch, dict | None]:
    """The arch to retrain and evaluate: ``arch=`` if given, else the search's best."""
    if run.fixed_arch is not None:
        return run.fixed_arch, None
    best_path = run.dir / "search" / "best.json"
    if not best_path.exists():
        raise NasxError(f"no searched arch at '{best_path}': run the search stage first or pass arch=<json file>")
    best = artifacts.read_json(best_path)
    return run.space.validate(Arch.from_dict(best["arch"]), where=str(best_path)), best


def retrain(run: Run) -> torch.nn.Module:
    arch, _ = chosen_arch(run)
    return train_standalone(run, arch, "retrain")


def train_standalone(run: Run, arch: Arch, stage: str, bct_head: torch.nn.Linear | None = None) -> torch.nn.Module:
    """Train ``arch`` as a static network in ``<run>/<stage>/`` (``retrain.*`` settings; BCT against ``bct_head``
    with ``retrain.bct_weight``); resumable, and skipped when ``done.json`` is there."""
    stage_dir = run.dir / stage
    c = run.cfg.retrain
    L.seed_everything(run.cfg.seed + 1, workers=True, verbose=False)
    source = load_supernet(run) if c.init == "inherited" else run.space.supernet()
    model = source.extract(arch)
    if (stage_dir / "done.json").exists():
        model.load_state_dict(torch.load(stage_dir / "model.pt", weights_only=True)["state_dict"])
        log.info("%s: done already (%s)", stage, stage_dir / "done.json")
        return model
    system = StandaloneTraining(model, checkpoint_dir=str(stage_dir), **_optim(c), **_bct(c, bct_head))
    last = stage_dir / "last.ckpt"
    trainer = run.trainer(stage, c.epochs, val=True, distributed=False)
    trainer.fit(system, datamodule=run.data, ckpt_path=str(last) if last.exists() else None)
    artifacts.torch_save({"arch": arch.to_dict(), "state_dict": model.state_dict()}, stage_dir / "model.pt")
    artifacts.write_json(stage_dir / "done.json", {"epochs": c.epochs, "arch": arch.to_dict()})
    return model


def evaluate(run: Run, model: torch.nn.Module | None = None) -> dict:
    arch, best = chosen_arch(run)
    run.data.setup("test")
    if model is None:
        path = run.dir / "retrain" / "model.pt"
        if not path.exists():
            raise NasxError(f"evaluate needs a retrained model at '{path}': run the retrain stage first")
        model = run.space.supernet().extract(arch)
        model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    model = model.to(run.device()).eval()
    to_dev = lambda loader: [(x.to(run.device()), y.to(run.device())) for x, y in loader]  # noqa: E731
    test = classification_metrics(model, to_dev(run.data.test_dataloader()))
    val = classification_metrics(model, to_dev(run.data.val_dataloader()))
    cost = run.space.cost(arch)
    results = {
        "experiment": run.cfg.name, "seed": run.cfg.seed, "space": run.space.name, "arch": arch.to_dict(),
        "arch_str": str(arch), "mflops": cost.mflops, "params": cost.params, "budget": str(run.budget),
        "reward": repr(run.reward),
        "search_reward": best["reward"] if best else None, "search_metrics": best["metrics"] if best else None,
        "retrain": {"test_top1": test["top1"], "test_top5": test["top5"], "val_top1": val["top1"],
                    "epochs": run.cfg.retrain.epochs, "init": run.cfg.retrain.init},
    }
    if (run.dir / "train" / "last.ckpt").exists():  # the same arch with inherited weights, for reference
        inherited = bn_recalibrate(load_supernet(run).extract(arch).to(run.device()), to_dev(
            run.data.calibration_batches(run.cfg.search.bn_batches, run.cfg.search.bn_batch_size)))
        results["supernet_test_top1"] = classification_metrics(inherited, to_dev(run.data.test_dataloader()))["top1"]
    artifacts.write_json(run.dir / "results.json", results)
    artifacts.write_text(run.dir / "report.md", report(run, results))
    return results


def report(run: Run, r: dict) -> str:
    describe = getattr(run.space, "describe", None)
    lines = [
        f"# nasx run: {r['experiment']}", "",
        f"- space: `{r['space']}`, budget: {r['budget']}, reward: `{r['reward']}`, seed: {r['seed']}",
        f"- arch: `{r['arch_str']}`",
    ]
    if describe:
        lines.append(f"- layers: {describe(run.space.validate(Arch.from_dict(r['arch'])))}")
    lines += ["", "| metric | value |", "|---|---|",
              f"| MFLOPs (multiply-accumulates) | {r['mflops']:.3f} |",
              f"| params | {r['params']:,} |"]
    if r["search_reward"] is not None:
        lines.append(f"| search reward (supernet, val) | {r['search_reward']:.4f} |")
    if "supernet_test_top1" in r:
        lines.append(f"| test top-1, inherited weights | {100 * r['supernet_test_top1']:.2f} % |")
    lines += [f"| test top-1, retrained ({r['retrain']['init']}, {r['retrain']['epochs']} epochs) | "
              f"{100 * r['retrain']['test_top1']:.2f} % |",
              f"| test top-5, retrained | {100 * r['retrain']['test_top5']:.2f} % |", ""]
    if (run.dir / "search" / "search.png").exists():
        lines += ["![search](search/search.png)", ""]
    return "\n".join(lines)


def _remove_empty_run_dir(run_dir: Path) -> None:
    """A run that failed validation leaves no directory behind: remove Hydra's files (``.hydra/``, the job log)
    and the directory if nothing else is in it. Never removes anything else."""
    if not run_dir.is_dir():
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    for f in run_dir.glob("*.log"):
        f.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


def start(cfg: DictConfig, build):
    """``build(cfg)`` validates and sets up a run. A bad config leaves no run directory behind; a fresh run records
    its composed config in ``config.yaml`` (resume reads it)."""
    run_dir = Path(cfg.paths.run_dir)
    fresh = not (run_dir / "config.yaml").exists()
    try:
        r = build(cfg)
    except NasxError:
        if fresh:
            _remove_empty_run_dir(run_dir)
        raise
    if fresh:
        artifacts.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    return r


def run(cfg: DictConfig) -> dict:
    """Run ``cfg.stages`` in ``cfg.paths.run_dir``. Returns the results (empty if evaluate is not a stage)."""
    if cfg.get("method", "spos") == "nss":  # network-space search has its own stages (nasx/nss.py)
        from nasx.nss import run_nss

        return run_nss(cfg)
    if cfg.get("method", "spos") == "cmp_nas":  # gallery model, BCT, retrieval rewards (nasx/cmp_nas.py)
        from nasx.cmp_nas import run_cmp_nas

        return run_cmp_nas(cfg)
    if cfg.get("method", "spos") == "mixpath":  # multi-objective search and K models (nasx/mixpath.py)
        from nasx.mixpath import run_mixpath

        return run_mixpath(cfg)
    if _ddp_worker():  # started by Lightning's DDP launcher: it only takes part in supernet training
        r = Run(cfg)
        if "train" in cfg.stages:
            train_supernet(r, force=True)
        return {}
    r = start(cfg, Run)
    results, model = {}, None
    for stage in STAGES:
        if stage not in cfg.stages:
            continue
        log.info("stage %s", stage)
        if stage == "train":
            if train_supernet(r) != 0:
                return {}  # a DDP worker: rank 0 alone searches, retrains and evaluates
        elif stage == "search":
            search(r)
        elif stage == "retrain":
            model = retrain(r)
        else:
            results = evaluate(r, model)
    return results
