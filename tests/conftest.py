"""Shared fixtures: a tiny SPOS space and Hydra configs shrunk to run in seconds."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# Overrides that shrink any experiment to a seconds-long run on the embedded digits.
TINY = [
    "space.stage_repeats=[1,1,2,1]", "space.input_size=16", "train.epochs=2", "train.warmup_epochs=1",
    "retrain.epochs=1", "search.strategy.generations=3", "search.strategy.population=6",
    "search.strategy.top_k=3", "search.strategy.crossover_size=4", "search.bn_batches=2", "progress=false",
]


@pytest.fixture(scope="session")
def tiny_space():
    from nasx.spaces.shufflenet import ShuffleNetSpace

    return ShuffleNetSpace(name="tiny", stage_repeats=(2, 2, 2, 1), stage_channels=(16, 32, 64, 128),
                           stem_channels=8, last_channels=64, input_size=16, stem_stride=1, in_channels=1,
                           num_classes=10)


def compose(overrides: list[str], run_dir: Path):
    """The config the CLI would build, with ``paths.run_dir`` set (no Hydra runtime needed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=[*overrides, f"paths.run_dir={run_dir}"])
