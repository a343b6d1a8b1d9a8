"""Loggers: CSV (default), TensorBoard and W&B (offline) receive the supernet's training curves."""
from __future__ import annotations

import pytest

from conftest import TINY, compose


def test_tensorboard_logger_writes_the_training_curves(tmp_path):
    pytest.importorskip("tensorboard")  # the test extra installs it; logger=tensorboard needs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nasx.runner import run

    run(compose(["experiment=quickstart", *TINY, "logger=tensorboard", "stages=[train]", "train.epochs=1"], tmp_path))
    (events,) = list((tmp_path / "train" / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert any(t.startswith("train/loss") for t in tags), tags
    loss = acc.Scalars(next(t for t in tags if t.startswith("train/loss")))
    assert len(loss) >= 1 and all(0 < s.value < 10 for s in loss)
