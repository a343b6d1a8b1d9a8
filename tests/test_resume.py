"""A run killed at any moment and resumed in its directory ends exactly as the uninterrupted run: the same weights bit
for bit, the same search history, the same best arch. Kills are simulated in-process (an exception from a Lightning
callback right after an epoch's checkpoint, or from the evaluator mid-generation); `experiments/reliability/
kill_resume.py` does the same with real `kill -9`s."""
from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import TINY, compose
from nasx import artifacts

pytestmark = pytest.mark.slow


class Killed(Exception):
    """Stands in for a kill (Lightning turns a real KeyboardInterrupt into sys.exit and ignores SIGINT after)."""


class KillAfterEpoch(L.Callback):
    """Dies at the end of epoch ``epoch``, after SaveLast wrote that epoch's last.ckpt."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Killed


def _run_killed_then_resumed(cfg_of, run_dir: Path, monkeypatch, epoch: int = 1) -> None:
    """Run the config, killed after ``epoch`` of its first fit; then resume it to the end."""
    import nasx.stages
    from nasx.runner import run

    original = nasx.stages.make_trainer
    calls = {"n": 0}

    def trainer_with_kill(*args, **kwargs):
        t = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            t.callbacks.append(KillAfterEpoch(epoch))
        return t

    monkeypatch.setattr(nasx.stages, "make_trainer", trainer_with_kill)
    with pytest.raises(Killed):
        run(cfg_of(run_dir))
    monkeypatch.setattr(nasx.stages, "make_trainer", original)
    run(cfg_of(run_dir))


def _state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _bit_identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_supernet_fit_killed_after_epoch_1_of_3_ends_with_bit_identical_weights(tmp_path, monkeypatch):
    """Before the fix, the resumed epoch replayed epoch 0's shuffle order and dropout drew from a fresh random
    state, so the weights (and every search after them) differed."""
    from nasx.runner import run

    def cfg(d):
        return compose(["experiment=quickstart", *TINY, "train.epochs=3", "stages=[train]", "space.dropout=0.2"], d)

    run(cfg(tmp_path / "whole"))
    _run_killed_then_resumed(cfg, tmp_path / "killed", monkeypatch)
    assert torch.load(tmp_path / "killed" / "train" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert _bit_identical(_state_dict(tmp_path / "whole" / "train" / "last.ckpt"),
                          _state_dict(tmp_path / "killed" / "train" / "last.ckpt"))


def test_a_retraining_killed_after_an_epoch_ends_with_the_same_model(tmp_path, monkeypatch):
    from nasx.runner import run

    base = ["experiment=quickstart", *TINY, "retrain.epochs=3"]
    run(compose([*base, "stages=[train,search]"], tmp_path / "whole"))
    (tmp_path / "killed").mkdir()
    for item in ("train", "search", "config.yaml"):
        (shutil.copytree if item != "config.yaml" else shutil.copy)(tmp_path / "whole" / item, tmp_path / "killed" / item)

    def cfg(d):
        return compose([*base, "stages=[retrain]"], d)

    run(cfg(tmp_path / "whole"))
    _run_killed_then_resumed(cfg, tmp_path / "killed", monkeypatch)
    whole = torch.load(tmp_path / "whole" / "retrain" / "model.pt", weights_only=True)["state_dict"]
    killed = torch.load(tmp_path / "killed" / "retrain" / "model.pt", weights_only=True)["state_dict"]
    assert _bit_identical(whole, killed)


def test_an_nss_space_search_killed_after_an_epoch_finds_the_same_space_probabilities(tmp_path, monkeypatch):
    """NSS's network-space search is a fit of the weights and of Θ (the Gumbel-softmax logits): a resumed one
    must end at the same Θ and the same weights."""
    from nasx.runner import run

    def cfg(d):
        return compose(["experiment=nss_digits", "train.epochs=3", "train.warmup_epochs=1", "train.targets=[1.0]",
                        "progress=false", "stages=[train]"], d)

    run(cfg(tmp_path / "whole"))
    _run_killed_then_resumed(cfg, tmp_path / "killed", monkeypatch)
    (whole_dir,) = [p for p in (tmp_path / "whole" / "train").iterdir() if p.is_dir()]
    killed_dir = tmp_path / "killed" / "train" / whole_dir.name
    assert artifacts.read_json(whole_dir / "space_probs.json") == artifacts.read_json(killed_dir / "space_probs.json")
    assert _bit_identical(_state_dict(whole_dir / "last.ckpt"), _state_dict(killed_dir / "last.ckpt"))


def test_a_mixpath_nsga2_search_killed_mid_generation_writes_the_same_history_and_front(tmp_path, monkeypatch):
    from nasx.evaluation import classification as evaluator_module
    from nasx.runner import run

    base = ["experiment=mixpath_digits", "train.epochs=1", "search.strategy.generations=3",
            "search.strategy.population=4", "search.bn_batches=1", "progress=false", "stages=[train,search]"]
    run(compose(base, tmp_path / "whole"))
    (tmp_path / "killed").mkdir()
    shutil.copytree(tmp_path / "whole" / "train", tmp_path / "killed" / "train")
    shutil.copy(tmp_path / "whole" / "config.yaml", tmp_path / "killed" / "config.yaml")

    original = evaluator_module.ClassificationEvaluator.evaluate
    calls = {"n": 0}

    def dying(self, arch):
        if calls["n"] == 11:  # generation 0 has 2n = 8 candidates: this is in generation 1
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, arch)

    monkeypatch.setattr(evaluator_module.ClassificationEvaluator, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        run(compose(base, tmp_path / "killed"))
    monkeypatch.setattr(evaluator_module.ClassificationEvaluator, "evaluate", original)
    run(compose(base, tmp_path / "killed"))
    for name in ("nsga2/history.jsonl", "random/history.jsonl", "front.json"):
        whole, killed = (tmp_path / d / "search" / name for d in ("whole", "killed"))
        assert whole.read_bytes() == killed.read_bytes(), name
