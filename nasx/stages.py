"""The building blocks every method's stages are made of, in one place: the Lightning trainer of a stage, fits that
resume from ``last.ckpt``, the supernet, standalone and reference-model trainings, loading their weights back, the
chosen arch, and the classification evaluator. Methods compose these; none of them names a method."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from nasx import artifacts
from nasx.arch import Arch
from nasx.distributed import lightning_plugins
from nasx.errors import ConfigError, NasxError, one_line
from nasx.evaluation import ClassificationEvaluator
from nasx.losses import Loss, make_terms, needs_reference
from nasx.training.standalone import StandaloneTraining
from nasx.training.supernet import SupernetTraining

log = logging.getLogger("nasx")


def build(node, where: str, **kwargs):
    """``hydra.utils.instantiate(node, **kwargs)``, with a bad value a one-line error: a nasx error raised by the
    target comes out unwrapped, anything else the target refuses becomes a ConfigError naming the config group."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, NasxError):
            raise cause from None
        raise ConfigError(f"{where}: {one_line(cause) if cause is not None else ' '.join(str(e).split())}") from None


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


class RngState(L.Callback):
    """Keeps the global random state (torch CPU and CUDA, numpy, Python) in every checkpoint and restores it on resume:
    dropout and anything else that draws from it after a resume draws what the uninterrupted fit drew."""

    KEY = "nasx_rng_state"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        import random

        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()  # plain types: checkpoints load with weights_only
        checkpoint[self.KEY] = {"torch": torch.get_rng_state(),
                                "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                                "python": random.getstate(),
                                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        import random

        import numpy as np

        state = checkpoint.get(self.KEY)
        if state is None:  # a checkpoint written before nasx kept the random state
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def device_of(cfg: DictConfig) -> torch.device:
    """Where search-time evaluation runs: the trainer's accelerator."""
    return torch.device("cuda" if cfg.trainer.get("accelerator") == "gpu" and torch.cuda.is_available() else "cpu")


def make_trainer(cfg: DictConfig, stage_dir: Path, epochs: int, val: bool = False,
                 distributed: bool = True) -> L.Trainer:
    """A Lightning trainer writing to ``stage_dir``: last.ckpt every epoch (atomically), the configured logger, rich
    progress. ``distributed=False`` keeps the accelerator but one device: DDP workers take part in supernet training
    only."""
    single = {} if distributed else {"devices": 1, "strategy": "auto"}
    callbacks = [RngState(), SaveLast(stage_dir / "last.ckpt")]
    if cfg.progress:
        callbacks.append(L.pytorch.callbacks.RichProgressBar(leave=True))
    logger = build(cfg.logger, "logger", save_dir=str(stage_dir)) if cfg.logger else False
    return build(cfg.trainer, "trainer", max_epochs=epochs, default_root_dir=str(stage_dir), logger=logger,
                       callbacks=callbacks, plugins=[AtomicCheckpointIO(), *lightning_plugins()],
                       enable_progress_bar=cfg.progress,
                       enable_checkpointing=False,  # SaveLast writes the one checkpoint a stage resumes from
                       limit_val_batches=None if val else 0, num_sanity_val_steps=0, enable_model_summary=False,
                       **single)


def fit(run, system: L.LightningModule, stage_dir: Path, epochs: int, val: bool = False,
        distributed: bool = True) -> L.Trainer:
    """Fit ``system`` on the run's data, resuming from ``stage_dir/last.ckpt`` when a killed fit left one."""
    last = stage_dir / "last.ckpt"
    trainer = make_trainer(run.cfg, stage_dir, epochs, val=val, distributed=distributed)
    trainer.fit(system, datamodule=run.data, ckpt_path=str(last) if last.exists() else None)
    return trainer


def optim_kwargs(c: DictConfig) -> dict:
    """The SGD and schedule settings of a training config group (``train``, ``retrain``, ``gallery``)."""
    extra = {k: c[k] for k in ("optimizer", "warmup_steps") if c.get(k) is not None}
    if c.get("betas") is not None:
        extra["betas"] = tuple(c.betas)
    return dict(lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov, schedule=c.schedule,
                **extra)


def loss_of(c: DictConfig, group: str, reference=None) -> Loss:
    """The loss ``<group>.loss`` describes (:mod:`nasx.losses`). ``reference()`` gives the method's reference model;
    it is called only when an active term uses it."""
    where = f"{group}.loss"
    terms = make_terms(c.get("loss"), where)
    return Loss(terms, reference() if reference is not None and needs_reference(terms) else None, where)


def load_weights(module: torch.nn.Module, ckpt: Path, what: str) -> torch.nn.Module:
    """Load the ``model.*`` weights of a Lightning checkpoint into ``module``; a missing or unreadable file is a
    one-line error naming it."""
    if not ckpt.exists():
        raise NasxError(f"{what} needs '{ckpt}': run the stage that trains it first (stages=[train,...]) or point "
                        f"resume= at a run that has one")
    state = read_torch(ckpt)["state_dict"]
    module.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return module


def read_torch(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: name it and say how to recover
        raise NasxError(f"'{path}' is unreadable ({type(e).__name__}); delete it and its stage restarts") from None


def finished(stage_dir: Path, stage: str) -> bool:
    """Whether a stage wrote its ``done.json`` (then it is skipped, and the log says so)."""
    if (stage_dir / "done.json").exists():
        log.info("%s: done already (%s)", stage, stage_dir / "done.json")
        return True
    return False


# -- supernet ------------------------------------------------------------------------------------------------------
def train_supernet(run, loss: Loss | None = None) -> None:
    """Train the run's supernet with uniform path sampling (``train.*``) into ``<run>/train/``; skipped when
    ``done.json`` is there. A DDP worker started by rank 0's fit never finds it (rank 0 writes it after the fit), so it
    joins the fit; one started later for the search (nasx.distributed) finds it and skips too."""
    stage_dir = run.dir / "train"
    if finished(stage_dir, "train"):
        return
    c = run.cfg.train
    L.seed_everything(run.cfg.seed, workers=True, verbose=False)
    system = SupernetTraining(run.space.supernet(), run.space, seed=run.cfg.seed, warmup_epochs=c.warmup_epochs,
                              checkpoint_dir=str(stage_dir), loss=loss or loss_of(c, "train"), **optim_kwargs(c))
    trainer = fit(run, system, stage_dir, c.epochs)
    if trainer.global_rank == 0:
        artifacts.write_json(stage_dir / "done.json", {"epochs": c.epochs, "global_step": trainer.global_step,
                                                       "world_size": trainer.world_size})


def load_supernet(run) -> torch.nn.Module:
    """The trained supernet of ``<run>/train/last.ckpt``."""
    return load_weights(run.space.supernet(), run.dir / "train" / "last.ckpt", "search")


def classification_evaluator(run, supernet: torch.nn.Module | None = None,
                             calibrate: bool = True) -> ClassificationEvaluator:
    """Top-1/top-5/loss of candidates on the validation split, BN recalibrated on ``search.bn_batches`` fixed
    training batches."""
    c = run.cfg.search
    run.data.setup("fit")
    supernet = load_supernet(run) if supernet is None else supernet
    return ClassificationEvaluator(supernet, run.data.calibration_batches(c.bn_batches, c.bn_batch_size),
                                   list(run.data.val_dataloader()), device=run.device, calibrate=calibrate)


# -- standalone models ---------------------------------------------------------------------------------------------
def chosen_arch(run) -> tuple[Arch, dict | None]:
    """The arch to retrain and evaluate: ``arch=`` if given, else the search's best (with its record)."""
    if run.fixed_arch is not None:
        return run.fixed_arch, None
    best_path = run.dir / "search" / "best.json"
    if not best_path.exists():
        raise NasxError(f"no searched arch at '{best_path}': run the search stage first or pass arch=<json file>")
    best = read_artifact(best_path)
    return run.space.validate(Arch.from_dict(best["arch"], where=str(best_path)), where=str(best_path)), best


def read_artifact(path: Path):
    """A JSON artifact; a corrupt one is a one-line error naming it."""
    try:
        return artifacts.read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise NasxError(f"'{path}' is not valid JSON ({type(e).__name__}); delete it and its stage restarts") from None


def train_standalone(run, arch: Arch, stage: str, loss: Loss | None = None) -> None:
    """Train ``arch`` as a static network in ``<run>/<stage>/`` with the ``retrain.*`` settings (from scratch, or
    from the supernet's weights with ``retrain.init=inherited``); resumable, and skipped when ``done.json`` is
    there. Writes ``model.pt`` (the arch and its weights)."""
    stage_dir = run.dir / stage
    if finished(stage_dir, stage):
        return
    c = run.cfg.retrain
    L.seed_everything(run.cfg.seed + 1, workers=True, verbose=False)
    source = load_supernet(run) if c.init == "inherited" else run.space.supernet()
    model = source.extract(arch)
    system = StandaloneTraining(model, checkpoint_dir=str(stage_dir), loss=loss or loss_of(c, "retrain"),
                                **optim_kwargs(c))
    fit(run, system, stage_dir, c.epochs, val=True, distributed=False)
    artifacts.torch_save({"arch": arch.to_dict(), "state_dict": model.state_dict()}, stage_dir / "model.pt")
    artifacts.write_json(stage_dir / "done.json", {"epochs": c.epochs, "arch": arch.to_dict()})


def load_model(run, arch: Arch, stage: str) -> torch.nn.Module:
    """The static model of ``arch`` trained in ``<run>/<stage>/model.pt``."""
    path = run.dir / stage / "model.pt"
    if not path.exists():
        raise NasxError(f"evaluate needs a retrained model at '{path}': run the {stage.split('/')[0]} stage first")
    model = run.space.supernet().extract(arch)
    model.load_state_dict(read_torch(path)["state_dict"])
    return model


# -- reference model (CMP-NAS's gallery, REG-NAS's old model) --------------------------------------------------------
def reference_model(run, group: str, build) -> torch.nn.Module:
    """A method's reference model, frozen: loaded from ``<group>.checkpoint`` if given, else trained once as a
    classifier with the group's settings into ``<run>/<group>/model.pt`` and reused from there. ``build()`` makes
    the untrained model. A DDP worker only loads it: rank 0 trains it before the supernet's fit starts the workers."""
    g = run.cfg[group]
    path = Path(g.checkpoint) if g.get("checkpoint") else run.dir / group / "model.pt"
    if path.exists():
        model = build()
        model.load_state_dict(read_torch(path)["state_dict"])
        return model.eval().requires_grad_(False)
    if g.get("checkpoint"):
        raise ConfigError(f"{group}.checkpoint: no such file '{path}' (a run's {group}/model.pt)")
    if run.is_ddp_worker:
        raise NasxError(f"DDP worker: '{path}' is missing; rank 0 trains the {group} model before the workers start")
    stage = run.dir / group
    L.seed_everything(run.cfg.seed + 2, workers=True, verbose=False)  # its initial weights are the seed's too
    model = build()
    system = StandaloneTraining(model, checkpoint_dir=str(stage), loss=loss_of(g, group), **optim_kwargs(g))
    fit(run, system, stage, g.epochs, val=True, distributed=False)
    artifacts.torch_save({"state_dict": model.state_dict()}, path)
    return model.eval().requires_grad_(False)
