"""Data modules: deterministic splits, normalisation, device-side augmentation, CIFAR pickle format and errors."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nasx.data import (CIFARDataModule, DigitsDataModule, TensorPairDataset, collate_pair, load_cifar_batch,
                       shift_images)
from nasx.errors import DatasetError

N_PER_FILE = 20


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(seed=0)
    dm.setup()
    return dm


def _raw_indices(dm):
    """Maps each split back to row numbers of load_digits via the (unique enough) raw 8x8 images."""
    from sklearn.datasets import load_digits
    images, _ = load_digits(return_X_y=True)
    lookup = {}
    for i, row in enumerate(images):
        lookup.setdefault(row.tobytes(), []).append(i)
    small = DigitsDataModule(seed=dm.seed, val_fraction=dm.val_fraction, image_size=8)
    small.setup()
    out = {}
    for name in ("train", "val", "test"):
        x = (small._raw[name][0] * 16).round().view(-1, 64).double().numpy()
        out[name] = sorted(i for row in x for i in [lookup[row.tobytes()].pop()])
    return out


def test_digits_shapes_labels_and_interface(digits):
    assert (digits.in_channels, digits.num_classes) == (1, 10)
    assert DigitsDataModule().in_channels == 1  # before setup
    sizes = {}
    for name in ("train", "val", "test"):
        x, y = digits.split(name)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 32, 32) and y.shape == (len(x),)
        assert int(y.min()) >= 0 and int(y.max()) <= 9
        sizes[name] = len(y)
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797) and sizes["val"] == round(0.1 * (1797 - sizes["test"]))


def test_digits_splits_disjoint_cover_and_seeded(digits):
    idx = _raw_indices(digits)
    assert sorted(idx["train"] + idx["val"] + idx["test"]) == list(range(1797))
    again = DigitsDataModule(seed=0)
    for name in ("train", "val", "test"):
        assert torch.equal(again.split(name)[0], digits.split(name)[0])
    other = DigitsDataModule(seed=1)
    assert not torch.equal(other.split("test")[1], digits.split("test")[1])


def test_val_is_carved_from_train_not_test(digits):
    wider = DigitsDataModule(seed=0, val_fraction=0.3)
    a, b = _raw_indices(digits), _raw_indices(wider)
    assert a["test"] == b["test"]
    assert sorted(a["train"] + a["val"]) == sorted(b["train"] + b["val"])
    assert len(b["val"]) > len(a["val"])


def test_normalisation_uses_train_statistics(digits):
    x, _ = digits.split("train")
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    raw_val = digits._raw["val"][0]
    expected = (raw_val - digits.mean.view(1, -1, 1, 1)) / digits.std.view(1, -1, 1, 1)
    assert torch.allclose(digits.split("val")[0], expected)


def test_dataloader_fetches_whole_batches_via_getitems(digits):
    class NoSingleItems(TensorPairDataset):
        def __getitem__(self, i):
            raise AssertionError("DataLoader fell back to per-item fetching")

    x, y = digits._raw["test"]
    ds = NoSingleItems(x, y, digits.mean, digits.std)
    xb, yb = next(iter(DataLoader(ds, batch_size=7, collate_fn=collate_pair)))
    assert xb.shape == (7, 1, 32, 32) and torch.equal(yb, y[:7])
    loader = digits.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(digits._raw["train"][1]) // 64
    assert all(b[0].shape == (64, 1, 32, 32) for b in batches)
    first = [b[1] for b in digits.train_dataloader()]
    assert all(torch.equal(p, q) for p, q in zip(first, [b[1] for b in batches]))  # seeded shuffle
    assert not torch.equal(batches[0][1], digits.split("train")[1][:64])  # but shuffled
    val = list(digits.val_dataloader())
    assert torch.equal(torch.cat([b[0] for b in val]), digits.split("val")[0])


def _augment(dm, x, training=True):
    dm.trainer = SimpleNamespace(training=training, global_rank=0)
    try:
        return dm.on_after_batch_transfer((x, torch.zeros(len(x), dtype=torch.long)), 0)[0]
    finally:
        dm.trainer = None


def test_augmentation_only_in_training_and_reproducible(digits):
    x, _ = digits.split("train")
    x = x[:64]
    assert torch.equal(digits.on_after_batch_transfer((x, None), 0)[0], x)  # no trainer
    assert torch.equal(_augment(digits, x, training=False), x)
    out = _augment(digits, x)
    assert out.shape == x.shape and not torch.equal(out, x)
    fresh = DigitsDataModule(seed=0)
    fresh.setup()
    assert not torch.equal(_augment(fresh, x), _augment(fresh, x))  # the counter advances per batch
    replay = DigitsDataModule(seed=0)
    replay.setup()
    assert torch.equal(_augment(replay, x), out)  # same seed and counter, same draws
    assert torch.equal(_augment(DigitsDataModule(seed=0, augment=False), x), x)


def test_shift_never_wraps_around(digits):
    x = torch.zeros(3, 1, 8, 8)
    x[:, :, :, -1] = 1.0  # bright right border column
    moved = shift_images(x, torch.tensor([0, 0, 1]), torch.tensor([1, -2, 0]))
    assert moved[0].sum() == 0  # pushed out on the right, nothing appears on the left
    assert torch.equal(moved[1, 0, :, -3], torch.ones(8)) and moved[1, 0, :, -2:].sum() == 0
    assert torch.equal(moved[2, 0, 1:, -1], torch.ones(7)) and moved[2, 0, 0, -1] == 0
    big = torch.full((256, 1, 32, 32), -1.0)
    big[:, :, :, -1] = 5.0
    out = _augment(digits, big)
    assert (out[:, :, :, :29] != 5.0).all()  # shift=2: column 31 can reach 29 at most, never the left edge
    fill = -digits.mean / digits.std
    assert torch.isclose(out, fill).any()  # uncovered pixels are black, not wrapped content


def test_calibration_batches_fixed_and_unaugmented(digits):
    digits.trainer = SimpleNamespace(training=True, global_rank=0)
    try:
        a = digits.calibration_batches(3, batch_size=16)
    finally:
        digits.trainer = None
    b = digits.calibration_batches(3, batch_size=16)
    assert len(a) == 3 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    train_x, _ = digits.split("train")
    rows = {r.numpy().tobytes() for r in train_x}
    xs = torch.cat([p[0] for p in a])
    assert all(r.numpy().tobytes() in rows for r in xs)  # exact train images, not augmented
    assert len({r.numpy().tobytes() for r in xs}) == 48  # without replacement
    many = digits.calibration_batches(30, batch_size=64)  # more than the split: wraps around
    assert len(many) == 30 and many[-1][0].shape == (64, 1, 32, 32)
    assert not torch.equal(DigitsDataModule(seed=3).calibration_batches(1, 16)[0][1], a[0][1])


class _Probe(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = {"train": [], "val": []}

    def training_step(self, batch, _):
        self.seen["train"].append(batch[0].clone())
        return (self.w * batch[0].mean()).sum()

    def validation_step(self, batch, _):
        self.seen["val"].append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_augments_training_batches_only():
    dm = DigitsDataModule(seed=0, batch_size=32)
    probe = _Probe()
    L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu").fit(probe, datamodule=dm)
    train_x = {r.numpy().tobytes() for r in dm.split("train")[0]}
    assert len(probe.seen["train"]) == 2
    assert any(r.numpy().tobytes() not in train_x for r in probe.seen["train"][0])
    assert torch.equal(probe.seen["val"][0], dm.split("val")[0][:512])


# --- CIFAR -------------------------------------------------------------------------------------------


def _images(n, offset):
    g = np.random.default_rng(offset)
    return g.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _dump(path, d, str_keys):
    d = {(k if str_keys else k.encode()): v for k, v in d.items()}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_cifar10(root, str_keys=False):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        img = _images(N_PER_FILE, i)
        _dump(d / name, {"batch_label": f"batch {i}".encode(), "labels": [int(v) for v in (np.arange(20) + i) % 10],
                         "data": img.reshape(N_PER_FILE, 3072), "filenames": [b"x.png"] * N_PER_FILE}, str_keys)
    _dump(d / "batches.meta", {"label_names": [b"c%d" % k for k in range(10)], "num_vis": 3072}, str_keys)
    return d


def write_cifar100(root):
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for i, name in enumerate(["train", "test"]):
        n = 5 * N_PER_FILE if name == "train" else N_PER_FILE
        _dump(d / name, {"data": _images(n, 10 + i).reshape(n, 3072), "fine_labels": list(range(n)),
                         "coarse_labels": [k % 20 for k in range(n)]}, str_keys=False)
    return d


def test_cifar_batch_pixel_layout(tmp_path):
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 10, 20, 30  # R, G, B planes
    data[1, 1024 + 5 * 32 + 7] = 200  # green, row 5, column 7
    _dump(tmp_path / "b", {"data": data, "labels": [3, 4]}, str_keys=False)
    x, y = load_cifar_batch(tmp_path / "b")
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 32, 32) and y.tolist() == [3, 4] and y.dtype == torch.int64
    assert [int(x[0, c].unique()) for c in range(3)] == [10, 20, 30]
    assert x[1, 1, 5, 7] == 200 and int(x[1].sum()) == 200


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar10_loads_real_layout(tmp_path, str_keys):
    write_cifar10(tmp_path, str_keys)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        dm = CIFARDataModule(str(root), batch_size=16)
        assert (dm.in_channels, dm.num_classes) == (3, 10)
        dm.check()
        dm.setup()
        x, y = dm.split("train")
        assert x.shape == (90, 3, 32, 32) and len(dm.split("val")[1]) == 10 and len(dm.split("test")[1]) == 20
        assert abs(float(x.mean())) < 1e-4 and torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)
    raw_test = torch.from_numpy(_images(N_PER_FILE, 5))
    assert torch.equal(dm._raw["test"][0], raw_test)  # test = test_batch, pixels unchanged
    train_raw = {r.numpy().tobytes() for r in torch.cat([dm._raw["train"][0], dm._raw["val"][0]])}
    assert train_raw == {r.tobytes() for i in range(5) for r in _images(N_PER_FILE, i)}
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (16, 3, 32, 32)
    out = _augment(dm, batch[0])
    assert out.shape == batch[0].shape and not torch.equal(out, batch[0])


def test_cifar100_labels_and_resize(tmp_path):
    write_cifar100(tmp_path)
    fine = CIFARDataModule(tmp_path, variant="cifar100", image_size=16)
    coarse = CIFARDataModule(tmp_path / "cifar-100-python", variant="cifar100", label="coarse")
    assert (fine.num_classes, coarse.num_classes) == (100, 20)
    assert fine.split("test")[0].shape == (20, 3, 16, 16)
    assert coarse.split("test")[1].tolist() == list(range(20))
    assert sorted(torch.cat([fine.split("train")[1], fine.split("val")[1]]).tolist()) == list(range(100))


def test_cifar_errors_name_path_file_and_key(tmp_path):
    def raises(dm, match, *, on_check):
        with pytest.raises(DatasetError, match=match) as info:
            dm.check() if on_check else dm.setup()
        assert "\n" not in str(info.value)

    raises(CIFARDataModule(tmp_path / "nope"), r"CIFAR-10 not found at '.*nope': expected .*cifar-10-batches-py/",
           on_check=True)
    d = write_cifar10(tmp_path)
    (d / "data_batch_3").unlink()
    raises(CIFARDataModule(tmp_path), r"missing: '.*data_batch_3'", on_check=True)
    (d / "data_batch_3").write_bytes(b"not a pickle at all")
    CIFARDataModule(tmp_path).check()  # cheap: existence only
    raises(CIFARDataModule(tmp_path), r"data_batch_3': not a CIFAR python pickle", on_check=False)
    _dump(d / "data_batch_3", {"data": _images(N_PER_FILE, 2).reshape(N_PER_FILE, 3072)}, str_keys=False)
    raises(CIFARDataModule(tmp_path), r"data_batch_3': missing key 'labels'", on_check=False)
    _dump(d / "data_batch_3", {"data": np.zeros((N_PER_FILE, 3000), np.uint8), "labels": [0] * N_PER_FILE},
          str_keys=False)
    raises(CIFARDataModule(tmp_path), r"data_batch_3': key 'data' has shape \(20, 3000\)", on_check=False)
    _dump(d / "data_batch_3", {"data": _images(N_PER_FILE, 2).reshape(N_PER_FILE, 3072), "labels": [10] * 20},
          str_keys=False)
    raises(CIFARDataModule(tmp_path), r"data_batch_3': key 'labels' holds labels outside 0..9", on_check=False)
    write_cifar100(tmp_path / "c100")
    CIFARDataModule(tmp_path / "c100", variant="cifar100").check()
    raises(CIFARDataModule(tmp_path, variant="cifar100"), r"CIFAR-100 not found at .*cifar-100-python/\{train,test\}",
           on_check=True)


def test_a_fit_augments_the_same_whatever_ran_before_it_in_the_process():
    """Retraining after another fit in the same process (or in a resumed run) sees the same augmented batches."""
    import lightning as L

    from nasx.data.digits import DigitsDataModule

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[0].sum().item())
            return (self.w * 0).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(dm):
        m = Recorder()
        L.seed_everything(0, verbose=False)
        L.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(m, datamodule=dm)
        return m.seen

    dm = DigitsDataModule(seed=0)
    first = fit(dm)
    second = fit(dm)  # same process, same data module, after another fit
    assert first == second
    assert fit(DigitsDataModule(seed=1)) != first


def test_the_in_memory_shuffle_is_a_function_of_seed_and_epoch_and_keeps_the_dataloader_order():
    """A resumed fit must draw epoch e's order without having drawn epochs 0..e-1 (SeededShuffle.set_epoch); and the
    order is the one torch's seeded shuffling DataLoader gave before, so earlier results still reproduce."""
    import torch
    from torch.utils.data import DataLoader

    from nasx.data.memory import SeededShuffle

    n, seed = 53, 7
    loader = DataLoader(list(range(n)), batch_size=n, shuffle=True, generator=torch.Generator().manual_seed(seed))
    expected = [next(iter(loader)).tolist() for _ in range(4)]
    for epoch in (3, 0, 2, 1):  # any order of set_epoch calls: no hidden state
        sampler = SeededShuffle(n, seed)
        sampler.set_epoch(epoch)
        assert list(sampler) == expected[epoch]
    assert expected[0] != expected[1] and sorted(expected[2]) == list(range(n))
