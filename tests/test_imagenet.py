"""ImageNet data module on tiny JPEG trees: the three validation layouts, splits, transforms, determinism, errors."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import scipy.io
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import compose
from nasx.data.imagenet import ImageNetDataModule, eval_transform, train_transform
from nasx.errors import ConfigError, DatasetError

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted: class index = position
COLOURS = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]  # class c is solid, brightest in channel c
SIZES = [(40, 30), (30, 40), (64, 48), (37, 53)]  # (width, height): landscape, portrait, larger, odd
VAL_CLASSES = [2, 0, 1, 1, 2, 0]  # class of ILSVRC2012_val_0000000{1..6}
ILSVRC_IDS = {WNIDS[0]: 2, WNIDS[1]: 3, WNIDS[2]: 1}  # devkit IDs deliberately not in wnid order
S = 16
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)


def _val_name(k: int) -> str:
    return f"ILSVRC2012_val_{k + 1:08d}"


def _write_meta(path: Path) -> None:
    """meta.mat as the devkit ships it: a (N, 1) struct array 'synsets', one non-leaf entry past ID 1000."""
    entries = [*ILSVRC_IDS.items(), ("n00001740", 1001)]
    synsets = np.zeros((len(entries), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for k, (wnid, i) in enumerate(entries):
        synsets[k, 0] = (np.array([[i]], dtype=np.uint16), np.array([wnid]), np.array([[int(i > 1000)]]))
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": synsets})


def make_imagenet(root: Path, layout: str = "prepared", devkit_dir: str = ".") -> Path:
    """3 classes x 4 train JPEGs of varied sizes, 6 official val JPEGs in ``layout``."""
    for c, wnid in enumerate(WNIDS):
        for k, size in enumerate(SIZES):
            _jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", size, COLOURS[c])
    for k, c in enumerate(VAL_CLASSES):
        sub = WNIDS[c] if layout == "prepared" else ""
        _jpeg(root / "val" / sub / f"{_val_name(k)}.JPEG", SIZES[k % 4], COLOURS[c])
    if layout == "devkit":
        gt = "".join(f"{ILSVRC_IDS[WNIDS[c]]}\n" for c in VAL_CLASSES)
        (root / devkit_dir).mkdir(parents=True, exist_ok=True)
        (root / devkit_dir / "ILSVRC2012_validation_ground_truth.txt").write_text(gt)
        _write_meta(root / devkit_dir / "meta.mat")
    elif layout == "kaggle":
        rows = [f"{_val_name(k)},{WNIDS[c]} 1 2 30 20 {WNIDS[c]} 0 0 9 9" for k, c in enumerate(VAL_CLASSES)]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    return root


def _dm(root: Path, **kwargs) -> ImageNetDataModule:
    kwargs = {"image_size": S, "batch_size": 4, "eval_batch_size": 5, "val_fraction": 0.25, **kwargs}
    return ImageNetDataModule(str(root), **kwargs)


def _test_labels(dm: ImageNetDataModule) -> dict[str, int]:
    ds = dm.dataset("test")
    return {Path(os.fsdecode(f)).stem: int(y) for f, y in zip(ds.files, ds.labels)}


def _colour_class(x: torch.Tensor) -> torch.Tensor:
    """The class whose colour a batch of solid images shows: its brightest channel."""
    return x.mean(dim=(2, 3)).argmax(dim=1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_imagenet(tmp_path_factory.mktemp("imagenet"))


def test_prepared_layout_shapes_labels_and_splits(prepared):
    dm = _dm(prepared)
    dm.check()
    assert (dm.in_channels, dm.num_classes, dm.classes) == (3, 3, WNIDS)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for x, y in loader:
            assert x.dtype == torch.float32 and x.shape == (len(y), 3, S, S) and y.dtype == torch.int64
            assert torch.equal(_colour_class(x), y)  # each image carries its class colour
    train, val = dm.dataset("train"), dm.dataset("val")
    assert (len(train), len(val)) == (9, 3)
    assert set(train.files).isdisjoint(val.files) and len(set(train.files) | set(val.files)) == 12
    assert _test_labels(dm) == {_val_name(k): c for k, c in enumerate(VAL_CLASSES)}
    assert set(_dm(prepared, seed=1).dataset("val").files) != set(val.files)  # the carve follows the seed


def test_train_batches_deterministic_per_seed_and_epoch(prepared):
    def first_batch(seed=0, epoch=0, num_workers=0):
        loader = _dm(prepared, seed=seed, num_workers=num_workers).train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning does before each training epoch
        return next(iter(loader))

    x, y = first_batch()
    assert torch.equal(x, first_batch()[0]) and torch.equal(y, first_batch()[1])
    assert torch.equal(x, first_batch(num_workers=2)[0])  # worker processes draw the same augmentation
    assert not torch.equal(x, first_batch(epoch=1)[0])
    assert not torch.equal(x, first_batch(seed=1)[0])


def test_lightning_sets_the_epoch(prepared):
    """A real fit: each epoch's batches are those of a loader set to that epoch."""
    seen = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

        def training_step(self, batch, _):
            seen.append(batch[0])
            return (self.w * batch[0].mean(dim=(2, 3))).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = _dm(prepared, batch_size=9)
    L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(Probe(), datamodule=dm)
    assert len(seen) == 2
    for epoch, x in enumerate(seen):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        assert torch.equal(x, next(iter(loader))[0])


def test_calibration_batches_fixed_and_unaugmented(prepared):
    dm = _dm(prepared)
    a, b = dm.calibration_batches(3, batch_size=4), _dm(prepared).calibration_batches(3, batch_size=4)
    assert len(a) == 3 and all(x.shape == (4, 3, S, S) for x, _ in a)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert len(dm.calibration_batches(4, batch_size=4)) == 4  # 16 > 9 train images: walks the split again
    train = dm.dataset("train")  # unaugmented: each image is the eval transform of a train image
    items = [train[i][0] for i in range(len(train))]
    assert all(any(torch.equal(img, t) for t in items) for x, _ in a for img in x)


def test_max_per_class(prepared):
    dm = _dm(prepared, max_per_class=1, val_fraction=0.4)
    assert (len(dm.dataset("train")), len(dm.dataset("val"))) == (2, 1)
    assert _test_labels(dm) == {_val_name(k): VAL_CLASSES[k] for k in range(3)}  # the first by name of each class


@pytest.mark.parametrize("devkit_dir", [".", "devkit/data", "ILSVRC2012_devkit_t12/data"])
def test_devkit_layout_matches_prepared(tmp_path, prepared, devkit_dir):
    root = make_imagenet(tmp_path, "devkit", devkit_dir)
    meta = scipy.io.loadmat(root / devkit_dir / "meta.mat")["synsets"]  # read back as the real devkit file reads
    assert meta.shape == (4, 1) and meta[0, 0]["ILSVRC2012_ID"].shape == (1, 1) and meta[0, 0]["WNID"][0] == WNIDS[0]
    dm = _dm(root)
    assert _test_labels(dm) == _test_labels(_dm(prepared))
    x, y = next(iter(dm.test_dataloader()))
    assert torch.equal(_colour_class(x), y)


def test_kaggle_layout_matches_prepared(tmp_path, prepared):
    assert _test_labels(_dm(make_imagenet(tmp_path, "kaggle"))) == _test_labels(_dm(prepared))


def test_eval_transform_values_and_geometry(prepared):
    colour = np.array(COLOURS[0])
    expected = torch.tensor((colour / 255 - MEAN) / STD, dtype=torch.float32).view(1, 3, 1, 1)
    x = eval_transform(torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 30, 40), S)
    assert x.shape == (3, S, S) and torch.allclose(x, expected[0], atol=1e-5)
    x, y = next(iter(_dm(prepared).test_dataloader()))  # the JPEG round trip moves a solid colour by a level or two
    assert torch.allclose(x[y == 0], expected.expand(int((y == 0).sum()), 3, S, S), atol=0.05)
    # left half black, right half white, 30x40 (h x w): resized to 18x24 (round(16 / 0.875) = 18), cols 4..19 kept
    half = torch.zeros(3, 30, 40, dtype=torch.uint8)
    half[:, :, 20:] = 255
    x = eval_transform(half, S)
    assert (x[:, :, :7] < 0).all() and (x[:, :, 9:] > 0).all()


def test_train_transform_shapes_and_fallback():
    img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    a = train_transform(img, S, torch.Generator().manual_seed(0))
    assert a.shape == (3, S, S) and torch.equal(a, train_transform(img, S, torch.Generator().manual_seed(0)))
    strip = torch.randint(0, 256, (3, 1, 100), dtype=torch.uint8)  # no random crop fits: central fallback
    assert train_transform(strip, S, torch.Generator().manual_seed(0)).shape == (3, S, S)


def _error(dm: ImageNetDataModule, exc=DatasetError) -> str:
    with pytest.raises(exc) as info:
        dm.setup()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_layout_errors(tmp_path):
    assert "expected train/<wnid>/*.JPEG" in _error(_dm(tmp_path / "missing"))
    (tmp_path / "train").mkdir()
    assert "no class directories" in _error(_dm(tmp_path))
    (tmp_path / "train" / WNIDS[0]).mkdir()
    assert f"'{tmp_path / 'train' / WNIDS[0]}' holds no images" in _error(_dm(tmp_path))
    _jpeg(tmp_path / "train" / WNIDS[0] / "a.JPEG", (8, 8), COLOURS[0])
    assert "validation directory missing" in _error(_dm(tmp_path))
    _jpeg(tmp_path / "val" / "x.JPEG", (8, 8), COLOURS[0])
    assert "LOC_val_solution.csv" in _error(_dm(tmp_path))  # flat val/ without labels
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    assert "meta.mat is missing" in _error(_dm(tmp_path))
    _jpeg(tmp_path / "val" / "n99999999" / "y.JPEG", (8, 8), COLOURS[0])
    assert "no class directory 'n99999999'" in _error(_dm(tmp_path))


@pytest.mark.parametrize("lines, expected", [
    (["2", "3", "x", "3", "1", "2"], "line 3: expected an integer ILSVRC2012_ID, got 'x'"),
    (["2", "3", "1", "1001", "1", "2"], "line 4: ILSVRC2012_ID 1001 is not a leaf class"),
    (["2", "3", "1"], "3 lines for 6 images"),
])
def test_ground_truth_errors_name_file_and_line(tmp_path, lines, expected):
    root = make_imagenet(tmp_path, "devkit")
    gt = root / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("\n".join(lines) + "\n")
    message = _error(_dm(root))
    assert f"'{gt}'" in message and expected in message


def test_ground_truth_wnid_outside_train(tmp_path):
    root = make_imagenet(tmp_path, "devkit")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n" * 6)
    for p in (root / "train" / WNIDS[2]).iterdir():  # ID 1 is WNIDS[2]
        p.unlink()
    (root / "train" / WNIDS[2]).rmdir()
    assert f"line 1: wnid '{WNIDS[2]}' has no class directory" in _error(_dm(root))


def test_kaggle_errors_name_file_and_line(tmp_path):
    root = make_imagenet(tmp_path, "kaggle")
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines[:3], f"{lines[3].split(',')[0]},n12345678 1 2 3 4", *lines[4:]]) + "\n")
    message = _error(_dm(root))
    assert f"'{csv}' line 4: wnid 'n12345678' has no class directory" in message
    csv.write_text("\n".join(lines[:-1]) + "\n")
    assert "no row for 1 images" in _error(_dm(root))


def test_config_errors(tmp_path):
    for kwargs in ({"val_fraction": 0.0}, {"max_per_class": 0}, {"image_size": 0}, {"num_workers": -1}):
        with pytest.raises(ConfigError):
            _dm(tmp_path, **kwargs)
    root = make_imagenet(tmp_path)
    assert "leaves the train or val split empty" in _error(_dm(root, val_fraction=0.01), ConfigError)


def test_hydra_config_instantiates(tmp_path):
    cfg = compose(["data=imagenet", "space=shufflenet_spos", "paths.data_dir=/datasets", "seed=3"], tmp_path)
    dm = instantiate(cfg.data)
    assert isinstance(dm, ImageNetDataModule)
    assert (dm.root, dm.image_size, dm.seed, dm.num_workers) == (Path("/datasets/imagenet"), 224, 3, 4)
