"""Cluttered digits (nasx/data/cluttered.py): deterministic bytes, balance, disjoint handwriting, atomic cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nasx.data import cluttered
from nasx.data.cluttered import ClutteredDigitsDataModule, Recipe, cache_name, fingerprint, generate, load_or_generate
from nasx.errors import ConfigError, DatasetError

# SHA-256 of generate(seed=0, n_train=200, n_test=100) with the default recipe, recipe version 1. It must be the
# same on every machine; if a deliberate recipe change alters it, bump cluttered.VERSION and update this.
GOLDEN = "c764174821eb70c04e02ff9a698e414499682f7e2cd9d44d413813a8d409771b"


@pytest.fixture(scope="module")
def small():
    return generate(0, 200, 100)


def test_bytes_are_deterministic_and_golden(small):
    again = generate(0, 200, 100)
    for key in small:
        assert torch.equal(small[key], again[key]), key
    assert fingerprint(small) == GOLDEN


def test_shapes_dtypes_and_seeds_differ(small):
    assert small["x_train"].shape == (200, 3, 32, 32) and small["x_train"].dtype == torch.uint8
    assert small["x_test"].shape == (100, 3, 32, 32) and small["y_test"].dtype == torch.int64
    other = generate(1, 200, 100)
    assert not torch.equal(small["x_train"], other["x_train"])
    assert not torch.equal(small["x_test"], other["x_test"])
    assert fingerprint(other) != GOLDEN
    # images use the whole range and are not near-constant
    assert small["x_train"].float().std() > 30


def test_test_split_does_not_depend_on_n_train(small):
    fewer = generate(0, 100, 100)
    assert torch.equal(fewer["x_test"], small["x_test"]) and torch.equal(fewer["y_test"], small["y_test"])


def test_exact_class_balance(small):
    assert small["y_train"].bincount(minlength=10).tolist() == [20] * 10
    assert small["y_test"].bincount(minlength=10).tolist() == [10] * 10
    # the labels are shuffled, not sorted by class
    assert not torch.equal(small["y_train"], small["y_train"].sort().values)


def test_source_pools_disjoint_and_used_by_their_split(small):
    images, labels = cluttered._source_digits()
    train, test = cluttered.source_pools(labels, 0, Recipe().test_per_class)
    assert not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(len(labels)))
    assert np.bincount(labels[test], minlength=10).tolist() == [Recipe().test_per_class] * 10
    assert set(small["src_train"].tolist()) <= set(train.tolist())
    assert set(small["src_test"].tolist()) <= set(test.tolist())
    # each image's source digit has the image's label
    assert (torch.from_numpy(labels)[small["src_train"]] == small["y_train"]).all()
    assert (torch.from_numpy(labels)[small["src_test"]] == small["y_test"]).all()
    # a class's pool is walked in rounds: 10 test images per class from 50 sources -> no source twice
    assert len(set(small["src_test"].tolist())) == 100


def test_bad_sizes_and_knobs_are_config_errors():
    with pytest.raises(ConfigError, match="n_train"):
        generate(0, 205, 100)
    with pytest.raises(ConfigError, match="data.rotation"):
        Recipe(rotation=-1)
    with pytest.raises(ConfigError, match="data.distractors"):
        ClutteredDigitsDataModule(distractors=(3, 1))


def test_cache_roundtrip_and_reuse(tmp_path, small, monkeypatch):
    data = load_or_generate(tmp_path, 0, 200, 100)
    path = tmp_path / cache_name(0, 200, 100, Recipe())
    assert path.is_file() and "v1" in path.name and "seed0" in path.name and "train200" in path.name
    assert fingerprint(data) == GOLDEN
    monkeypatch.setattr(cluttered, "generate", lambda *a, **k: pytest.fail("regenerated despite the cache"))
    assert fingerprint(load_or_generate(tmp_path, 0, 200, 100)) == GOLDEN
    # another recipe is another file
    assert cache_name(0, 200, 100, Recipe(noise=0.1)) != path.name


def _tmp_files(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def torn_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        load_or_generate(tmp_path, 0, 200, 100)
    assert not (tmp_path / cache_name(0, 200, 100, Recipe())).exists()
    assert _tmp_files(tmp_path) == []


def test_stale_tmp_from_a_killed_writer_is_removed(tmp_path):
    name = cache_name(0, 200, 100, Recipe())
    stale = tmp_path / f".{name}.k1ll3d.tmp"
    stale.write_bytes(b"left by kill -9")
    unrelated = tmp_path / ".other.pt.abc.tmp"
    unrelated.write_bytes(b"another target's")
    load_or_generate(tmp_path, 0, 200, 100)
    assert (tmp_path / name).is_file()
    assert not stale.exists() and unrelated.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_is_a_dataset_error_naming_the_file(tmp_path, damage):
    path = tmp_path / cache_name(0, 200, 100, Recipe())
    if damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    else:
        load_or_generate(tmp_path, 0, 200, 100)
        blob = path.read_bytes()
        path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DatasetError) as info:
        load_or_generate(tmp_path, 0, 200, 100)
    msg = str(info.value)
    assert str(path) in msg and "delete it" in msg and "\n" not in msg


def test_cache_of_another_recipe_under_this_name_is_a_dataset_error(tmp_path):
    load_or_generate(tmp_path, 0, 200, 100)
    wrong = tmp_path / cache_name(0, 200, 100, Recipe(noise=0.0))
    (tmp_path / cache_name(0, 200, 100, Recipe())).rename(wrong)
    with pytest.raises(DatasetError, match="delete it"):
        load_or_generate(tmp_path, 0, 200, 100, Recipe(noise=0.0))


def test_root_that_is_a_file_is_a_dataset_error(tmp_path):
    root = tmp_path / "file"
    root.write_text("x")
    dm = ClutteredDigitsDataModule(root=str(root), n_train=200, n_test=100)
    with pytest.raises(DatasetError, match="is a file"):
        dm.setup()


@pytest.mark.parametrize("size", [32, 16])
def test_datamodule_batches(tmp_path, size):
    dm = ClutteredDigitsDataModule(root=str(tmp_path), n_train=200, n_test=100, batch_size=32, image_size=size,
                                   seed=3, data_seed=0)
    assert (dm.in_channels, dm.num_classes) == (3, 10)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 3, size, size) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    xs, ys = dm.split("train")
    assert xs.mean(dim=(0, 2, 3)).abs().max() < 1e-3 and (xs.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
    sizes = {name: len(dm.split(name)[1]) for name in ("train", "val", "test")}
    assert sizes == {"train": 180, "val": 20, "test": 100}
    # the run seed does not change the data set (data_seed does)
    other = ClutteredDigitsDataModule(root=str(tmp_path), n_train=200, n_test=100, image_size=size, seed=4)
    other.setup()
    for name in ("train", "val", "test"):
        assert torch.equal(dm._raw[name][0], other._raw[name][0])


def test_config_composes(tmp_path):
    from hydra.utils import instantiate

    from conftest import compose

    cfg = compose(["data=cluttered_digits", f"paths.data_dir={tmp_path}", "data.n_train=200", "data.n_test=100",
                   "space.input_size=16", "seed=7"], tmp_path / "run")
    dm = instantiate(cfg.data)
    assert isinstance(dm, ClutteredDigitsDataModule)
    assert dm.image_size == 16 and dm.seed == 7 and dm.data_seed == 0
    assert dm.root == tmp_path / "cluttered_digits" and dm.recipe == Recipe()
