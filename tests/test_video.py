"""Video data: Kinetics and Something-Something V2 fixture trees in their real formats (mp4 and webm written with PyAV)
read back; the frames chosen for training and test views; short, corrupt and unlabelled videos; moving digits.

Fixture frame i is flat grey at level 8 + 6·i, so a decoded frame tells its index (lossy codecs keep a flat frame
within ±1 level)."""
from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch._utils import ExceptionWrapper
from torch.utils.data import DataLoader

from conftest import compose
from nasx.data.decode import VideoFile, write_video
from nasx.data.kinetics import KineticsDataModule, clip_name
from nasx.data.moving_digits import DIRECTIONS, MovingDigitsDataModule
from nasx.data.ssv2 import SSV2DataModule
from nasx.data.video import MEAN, STD, Segments, StridedClip, average_views
from nasx.errors import ConfigError, DatasetError
from nasx.stages import build

N = 40  # frames of a fixture video
H, W = 32, 48  # landscape fixture frames
S = 16  # clip side
K_LABELS = ["abseiling", "air drumming", "zumba"]  # sorted: class index = position; "air drumming" is on disk as
K_FOLDERS = ["abseiling", "air_drumming", "zumba"]  # air_drumming (spaces spelled as underscores)
K_TRAIN_IDS = [["a_b-c_d-e_f", "abcdefghijk", "ABCDEFGHIJK"], ["-_-_-_-_-_-", "0123456789a", "b9876543210"],
               ["zz_top-1234", "q-w_e-r_t-y", "Z0Z0Z0Z0Z0Z"]]
K_VAL_IDS = ["val_abseil_", "val_drum_00", "val_zumba-0"]
SSV2_LABELS = {"Pushing something from left to right": "0", "Pushing something from right to left": "1",
               "Putting something on something": "2"}
SSV2_TEMPLATES = ["Pushing [something] from left to right", "Pushing [something] from right to left",
                  "Putting [something] on [something]"]


def levels(n: int = N, h: int = H, w: int = W, ramp: bool = False) -> np.ndarray:
    """Frames (n, h, w, 3): frame i flat at 8 + 6·i; with ``ramp``, plus a left-to-right ramp of 0..60."""
    x = np.broadcast_to((8 + 6 * np.arange(n, dtype=np.int64))[:, None, None, None], (n, h, w, 3)).copy()
    if ramp:
        x = x + np.linspace(0, 60, w).round().astype(np.int64)[None, None, :, None]
    return np.clip(x, 0, 255).astype(np.uint8)


def raw(x: torch.Tensor) -> torch.Tensor:
    """Normalised clips (..., 3, h, w) back to 0..255 levels."""
    return (x * STD + MEAN) * 255


def frame_index(x: torch.Tensor) -> list[int]:
    """The fixture frame indices a normalised clip (T, 3, h, w) shows."""
    return [round((float(v) - 8) / 6) for v in raw(x).mean(dim=(1, 2, 3))]


def make_kinetics(root: Path, n_frames: int = N) -> Path:
    """3 classes x 3 train clips (one listed but missing, one with unpadded times), 1 val clip per class."""
    (root / "annotations").mkdir(parents=True)
    rows = {"train": [], "val": []}
    for c, (label, folder) in enumerate(zip(K_LABELS, K_FOLDERS)):
        for k, yid in enumerate(K_TRAIN_IDS[c]):
            start, end = 10 * k + 1, 10 * k + 11
            rows["train"].append((label, yid, start, end))
            if (c, k) == (2, 2):
                continue  # listed, never downloaded
            name = f"{yid}_{start}_{end}.mp4" if (c, k) == (1, 1) else clip_name(yid, start, end)
            size = (W, H) if k != 2 else (H, W)  # one portrait clip per class
            path = root / "videos" / "train" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, levels(n_frames, size[1], size[0]))
        rows["val"].append((label, K_VAL_IDS[c], 0, 10))
        path = root / "videos" / "val" / folder / clip_name(K_VAL_IDS[c], 0, 10)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, levels(n_frames))
    for split, items in rows.items():
        text = "label,youtube_id,time_start,time_end,split,is_cc\n" + "".join(
            f'"{label}",{yid},{start},{end},{split},0\n' for label, yid, start, end in items)
        (root / "annotations" / f"{split}.csv").write_text(text)
    return root


def make_ssv2(root: Path, n_frames: int = N, videos: str = "20bn-something-something-v2") -> Path:
    """3 templates x 3 train videos, 3 validation videos, webm, JSONs under labels/."""
    (root / "labels").mkdir(parents=True)
    (root / videos).mkdir(parents=True, exist_ok=True)
    (root / "labels" / "something-something-v2-labels.json").write_text(json.dumps(SSV2_LABELS))
    entries = {"train": [], "validation": []}
    vid = 1000
    for split, per in (("train", 3), ("validation", 1)):
        for c, template in enumerate(SSV2_TEMPLATES):
            for _ in range(per):
                vid += 1
                entries[split].append({"id": str(vid), "label": template.replace("[something]", "a cup"),
                                       "template": template, "placeholders": ["a cup"]})
                write_video(root / videos / f"{vid}.webm", levels(n_frames))
    for split, items in entries.items():
        (root / "labels" / f"something-something-v2-{split}.json").write_text(json.dumps(items))
    return root


@pytest.fixture(scope="module")
def kinetics_root(tmp_path_factory) -> Path:
    return make_kinetics(tmp_path_factory.mktemp("kinetics"))


@pytest.fixture(scope="module")
def ssv2_root(tmp_path_factory) -> Path:
    return make_ssv2(tmp_path_factory.mktemp("ssv2"))


def kinetics(root: Path, **kwargs) -> KineticsDataModule:
    kwargs = {"frames": 4, "stride": 3, "image_size": S, "batch_size": 2, "eval_batch_size": 2, "val_fraction": 0.25,
              "test_clips": 2, "test_crops": 3, **kwargs}
    return KineticsDataModule(str(root), **kwargs)


def ssv2(root: Path, **kwargs) -> SSV2DataModule:
    kwargs = {"frames": 4, "image_size": S, "batch_size": 2, "eval_batch_size": 2, "val_fraction": 0.25, **kwargs}
    return SSV2DataModule(str(root), **kwargs)


# ---- frame indices --------------------------------------------------------------------------------------------------

def test_kinetics_train_clip_is_strided_from_a_uniform_start_and_test_clips_spread_evenly():
    s = StridedClip(frames=4, stride=8, clips=3)
    assert s.span == 25
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(2000):
        idx = s.train(100, g)
        assert np.diff(idx).tolist() == [8, 8, 8] and 0 <= idx[0] and idx[-1] <= 99
        starts.add(idx[0])
    assert min(starts) == 0 and max(starts) == 75 and len(starts) == 76  # every start in 0..N-span
    assert [v[0] for v in s.views(100)] == [12, 37, 62]  # centres of 3 bins of 0..75
    assert s.views(100, clips=1) == [[37, 45, 53, 61]]
    assert s.views(25) == [[0, 8, 16, 24]] * 3  # exactly one span: all clips coincide


def test_ssv2_takes_one_frame_per_segment_random_in_training_middle_at_test():
    s = Segments(frames=4)
    g = torch.Generator().manual_seed(0)
    seen = [set() for _ in range(4)]
    for _ in range(500):
        for k, i in enumerate(s.train(40, g)):
            seen[k].add(i)
    assert [sorted(v) for v in seen] == [list(range(10 * k, 10 * k + 10)) for k in range(4)]
    assert s.views(40) == [[4, 14, 24, 34]]
    assert s.views(10) == [[0, 3, 5, 8]]  # segments 0-1, 2-4, 5-6, 7-9


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_decoding_returns_the_requested_frames_in_order(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    write_video(path, levels())
    video = VideoFile(path)
    assert (video.num_frames, video.height, video.width) == (N, H, W)  # WebM: counted from its packets
    frames = video.frames([0, 17, 17, 39, 3])
    assert frames.shape == (5, H, W, 3) and frames.dtype == np.uint8
    assert [round((f.mean() - 8) / 6) for f in frames] == [0, 17, 17, 39, 3]
    assert video.frames([5], 16, 24).shape == (1, 16, 24, 3)


def test_kinetics_items_shapes_and_chosen_frames(kinetics_root):
    dm = kinetics(kinetics_root)
    x, y = dm.dataset("val")[0]
    assert x.shape == (4, 3, S, S) and y.dtype == torch.int64
    # N=40, span 10: the single val view is the central clip, start 30·1/2 = 15
    assert frame_index(x) == [15, 18, 21, 24]
    xt, _ = dm.dataset("test")[0]
    assert xt.shape == (6, 4, 3, S, S)  # 2 clips x 3 crops
    assert [frame_index(v)[0] for v in xt] == [7, 7, 7, 22, 22, 22]  # starts 30·1/4, 30·3/4
    train = dm.dataset("train", train=True)
    for i in range(len(train)):
        idx = frame_index(train[i][0])
        assert np.diff(idx).tolist() == [3, 3, 3] and 0 <= idx[0] <= 30
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (2, 4, 3, S, S) and yb.shape == (2,)
    xb, _ = next(iter(dm.test_dataloader()))
    assert xb.shape == (2, 6, 4, 3, S, S) and dm.views == 6


def test_ssv2_items_shapes_and_chosen_frames(ssv2_root):
    dm = ssv2(ssv2_root)
    x, _ = dm.dataset("val")[0]
    assert x.shape == (4, 3, S, S) and frame_index(x) == [4, 14, 24, 34]
    xt, _ = dm.dataset("test")[0]
    assert xt.shape == (3, 4, 3, S, S) and dm.views == 3  # 1 temporal view x 3 crops
    assert all(frame_index(v) == [4, 14, 24, 34] for v in xt)
    train = dm.dataset("train", train=True)
    for e in range(3):
        train.set_epoch(e)
        idx = frame_index(train[0][0])
        assert all(10 * k <= i < 10 * k + 10 for k, i in enumerate(idx))


def test_training_items_depend_on_seed_epoch_and_index_only(kinetics_root):
    ds = kinetics(kinetics_root).dataset("train", train=True)
    first = [ds[i][0] for i in range(len(ds))]
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert any(not torch.equal(a, ds[i][0]) for i, a in enumerate(first))
    ds.set_epoch(0)
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))


def test_three_crops_cover_the_long_side(tmp_path):
    path = tmp_path / "ramp.mp4"
    write_video(path, levels(n=12, ramp=True))
    from nasx.data.video import VideoClipDataset
    ds = VideoClipDataset(tmp_path, np.array([b"ramp.mp4"]), torch.tensor([0]), StridedClip(2, 1, 1), S, "views",
                          crops=3)
    x = ds[0][0]
    assert x.shape == (3, 2, 3, S, S)
    ramp = [float(raw(v[0]).mean()) for v in x]  # the same frame, cropped left, centre, right
    assert ramp[0] < ramp[1] < ramp[2]


def test_ssv2_never_flips_and_kinetics_does(tmp_path):
    """A left-to-right ramp stays left-to-right in every SSV2 training item; Kinetics mirrors some."""
    def slopes(dm) -> set[bool]:
        ds, out = dm.dataset("train", train=True), set()
        for e in range(12):
            ds.set_epoch(e)
            for i in range(len(ds)):
                x = raw(ds[i][0])
                out.add(bool(x[..., S // 2:].mean() > x[..., :S // 2].mean()))
        return out

    root = tmp_path / "ssv2"
    make_ssv2(root, n_frames=8)
    for p in (root / "20bn-something-something-v2").iterdir():
        write_video(p, levels(8, ramp=True))
    assert slopes(ssv2(root, frames=2)) == {True}
    kroot = tmp_path / "kinetics"
    make_kinetics(kroot, n_frames=8)
    for p in (kroot / "videos").rglob("*.mp4"):
        write_video(p, levels(8, ramp=True))
    assert slopes(kinetics(kroot, frames=2, stride=1)) == {True, False}
    with pytest.raises(ConfigError, match="hflip"):  # not even configurable
        build(OmegaConf.create({"_target_": "nasx.data.ssv2.SSV2DataModule", "root": str(root), "hflip": True}),
              "data")


def test_average_views_averages_softmax_over_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 4 * 4, 5))
    x = torch.randn(3, 6, 2, 3, 4, 4)
    want = torch.stack([model(x[:, v]).softmax(-1) for v in range(6)]).mean(0)
    assert torch.allclose(average_views(model, x), want, atol=1e-6)


# ---- layouts --------------------------------------------------------------------------------------------------------

def test_kinetics_layout_classes_splits_and_missing_clips(kinetics_root, caplog):
    dm = kinetics(kinetics_root)
    with caplog.at_level(logging.WARNING, logger="nasx"):
        dm.setup()
    assert dm.classes == K_LABELS and dm.num_classes == 3
    assert "train.csv': 1 of 9 listed videos are missing" in caplog.text
    assert "zumba/Z0Z0Z0Z0Z0Z_000021_000031.mp4" in caplog.text
    train, val, test = (dm.dataset(s) for s in ("train", "val", "test"))
    names = lambda ds: {Path(f.decode()).name for f in ds.files}  # noqa: E731
    assert len(train) + len(val) == 8 and len(val) == 2 and not names(train) & names(val)
    assert "0123456789a_11_21.mp4" in names(train) | names(val)  # unpadded times, found by its 11-character id
    assert sorted(zip(test.labels.tolist(), [Path(f.decode()).parent.name for f in test.files])) == \
        [(0, "abseiling"), (1, "air_drumming"), (2, "zumba")]
    with pytest.raises(DatasetError, match=r"train\.csv': 1 of 9 listed videos are missing"):
        kinetics(kinetics_root, missing="error").setup()


@pytest.mark.parametrize("text, match", [
    ("label,youtube_id,time_start,split\nzumba,abcdefghijk,1,train\n", r"train\.csv' line 1: header lacks 'time_end'"),
    ("label,youtube_id,time_start,time_end,split\nzumba,abcdefghijk,1,1x,train\n", r"line 2: time_end"),
    ("label,youtube_id,time_start,time_end,split\nzumba,abcdefghijk\n", r"line 2: 2 fields"),
])
def test_kinetics_malformed_csv_names_file_and_line(tmp_path, text, match):
    root = make_kinetics(tmp_path / "k", n_frames=2)
    (root / "annotations" / "train.csv").write_text(text)
    with pytest.raises(DatasetError, match=match) as err:
        kinetics(root).setup()
    assert "\n" not in str(err.value)


def test_kinetics_val_label_unknown_to_train_names_the_line(tmp_path):
    root = make_kinetics(tmp_path / "k", n_frames=2)
    csv = root / "annotations" / "val.csv"
    csv.write_text(csv.read_text() + '"yodeling",yyyyyyyyyyy,0,10,val,0\n')
    with pytest.raises(DatasetError, match=r"val\.csv' line 5: label 'yodeling' is not a class"):
        kinetics(root).setup()


def test_ssv2_layout_classes_and_splits(ssv2_root):
    dm = ssv2(ssv2_root)
    dm.setup()
    assert dm.num_classes == 3 and dm.classes == list(SSV2_LABELS)
    train, val, test = (dm.dataset(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (7, 2, 3)
    assert sorted(test.labels.tolist()) == [0, 1, 2]
    assert {f.decode() for f in test.files} == {f"20bn-something-something-v2/{i}.webm" for i in (1010, 1011, 1012)}


def test_ssv2_missing_template_names_the_file_entry_and_template(tmp_path):
    root = make_ssv2(tmp_path / "s", n_frames=4)
    path = root / "labels" / "something-something-v2-train.json"
    entries = json.loads(path.read_text())
    entries[4]["template"] = "Spinning [something] that quickly stops spinning"
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError) as err:
        ssv2(root).setup()
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "entry 4 (id 1005)" in msg
    assert "'Spinning something that quickly stops spinning' is not in" in msg and "labels.json" in msg


@pytest.mark.parametrize("data, group", [("kinetics", "kinetics400"), ("kinetics", "kinetics600"), ("ssv2", "ssv2")])
def test_configs_read_the_fixture_trees(kinetics_root, ssv2_root, data, group, tmp_path):
    root = kinetics_root if data == "kinetics" else ssv2_root
    cfg = compose([f"data={group}", f"data.root={root}", "data.num_workers=0", "data.image_size=16",
                   "data.frames=2", "data.val_fraction=0.25"], tmp_path)
    dm = instantiate(cfg.data)
    dm.check()
    assert dm.num_classes == 3
    x, _ = dm.dataset("val")[0]
    assert x.shape == (2, 3, 16, 16)


# ---- short, corrupt and unreadable videos ----------------------------------------------------------------------------

def test_short_video_is_padded_looped_or_an_error(tmp_path):
    root = make_kinetics(tmp_path / "k", n_frames=5)  # span 10 > 5 frames
    assert frame_index(kinetics(root, short_clip="pad").dataset("val")[0][0]) == [0, 3, 4, 4]
    assert frame_index(kinetics(root, short_clip="loop").dataset("val")[0][0]) == [0, 3, 1, 4]
    with pytest.raises(DatasetError, match=r"\.mp4': 5 frames, shorter than the 10 a clip needs") as err:
        kinetics(root, short_clip="error").dataset("val")[0]
    assert "\n" not in str(err.value)
    sroot = make_ssv2(tmp_path / "s", n_frames=3)  # 4 segments > 3 frames
    assert frame_index(ssv2(sroot, short_clip="pad").dataset("val")[0][0]) == [0, 1, 2, 2]
    assert frame_index(ssv2(sroot, short_clip="loop").dataset("val")[0][0]) == [0, 1, 2, 0]
    with pytest.raises(DatasetError, match=r"\.webm': 3 frames, shorter than the 4"):
        ssv2(sroot, short_clip="error").dataset("test")[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_video_is_a_one_line_error_naming_the_file(tmp_path, damage):
    root = make_kinetics(tmp_path / "k", n_frames=8)
    dm = kinetics(root, frames=2, stride=2)
    ds = dm.dataset("test")
    path = root / ds.files[0].decode()
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a video at all" * 100, "truncated": data[:len(data) // 2],
                      "empty": b""}[damage])
    with pytest.raises(DatasetError) as err:
        ds[0]
    assert str(err.value).startswith(f"'{path}': cannot decode video") and "\n" not in str(err.value)
    # raised in a DataLoader worker, torch re-raises it in the main process with the worker's traceback as its
    # message (torch._utils.ExceptionWrapper, what the worker loop uses): still one line naming the file
    try:
        ds[0]
    except DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as err:
        wrapped.reraise()
    assert str(err.value).startswith(f"'{path}': cannot decode video") and "\n" not in str(err.value)


@pytest.mark.slow  # torch takes 5 s to shut a DataLoader down after a worker raised
def test_corrupt_video_in_a_dataloader_worker_is_one_line_naming_the_file(tmp_path):
    root = make_kinetics(tmp_path / "k", n_frames=8)
    ds = kinetics(root, frames=2, stride=2).dataset("test")
    path = root / ds.files[0].decode()
    path.write_bytes(b"garbage")
    it = iter(DataLoader(ds, batch_size=1, num_workers=1))
    with pytest.raises(DatasetError) as err:
        next(it)
    message = str(err.value)
    del err, it  # shut the worker down in this test, not in whichever test collects the garbage
    gc.collect()
    assert message.startswith(f"'{path}': cannot decode video") and "\n" not in message


def test_corrupt_video_is_skipped_with_a_warning_when_asked(tmp_path, caplog):
    root = make_kinetics(tmp_path / "k", n_frames=8)
    ds = kinetics(root, frames=2, stride=2, corrupt="skip").dataset("test")
    path = root / ds.files[0].decode()
    path.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="nasx"):
        x, y = ds[0]
    assert x.shape == (6, 2, 3, S, S) and int(y) == int(ds.labels[1])  # the next video stands in
    assert f"'{path}': cannot decode video" in caplog.text and "corrupt=skip" in caplog.text


def test_bad_video_options_are_config_errors(tmp_path):
    for kwargs in ({"short_clip": "stretch"}, {"corrupt": "ignore"}, {"test_crops": 5}, {"frames": 0},
                   {"jitter": [0.5, 1.0]}, {"stride": 0}):
        with pytest.raises(ConfigError):
            kinetics(tmp_path, **kwargs)
    with pytest.raises(DatasetError, match="Kinetics not found"):
        kinetics(tmp_path / "nowhere").check()


# ---- moving digits --------------------------------------------------------------------------------------------------

def small_moving(**kwargs) -> MovingDigitsDataModule:
    kwargs = {"image_size": 16, "frames": 4, "n_train": 1200, "n_test": 600, **kwargs}
    dm = MovingDigitsDataModule(**kwargs)
    dm.setup()
    return dm


def test_moving_digits_shapes_determinism_and_balance():
    a, b = small_moving(), small_moving()
    assert torch.equal(a._raw["train"][0], b._raw["train"][0])
    assert not torch.equal(a._raw["train"][0], small_moving(data_seed=1)._raw["train"][0])
    x, y = a.split("train")
    assert x.shape == (1080, 4, 1, 16, 16) and x.dtype == torch.float32 and y.max() <= 9
    assert (a.in_channels, a.num_classes) == (1, 10)
    d = small_moving(labels="direction", directions=8)
    assert d.num_classes == 8
    counts = torch.cat([d._raw[s][1] for s in ("train", "val")]).bincount()
    assert counts.tolist() == [150] * 8  # exactly balanced over the generated clips
    xb, _ = next(iter(d.train_dataloader()))
    assert xb.shape == (64, 4, 1, 16, 16)
    with pytest.raises(ConfigError, match="data.speed"):
        MovingDigitsDataModule(image_size=16, speed=(1, 8))


def test_moving_digits_move_in_their_label_direction():
    dm = small_moving(labels="direction", directions=8)
    clips, direction = dm._raw["train"][0][:, :, 0], dm._raw["train"][1]
    for k in range(50):
        dy, dx = DIRECTIONS[8][int(direction[k])]
        speeds = {s for s in (1, 2, 3)
                  if all(torch.equal(clips[k, t + 1], clips[k, t].roll((s * dy, s * dx), (0, 1))) for t in range(3))}
        assert len(speeds) == 1


def _fit_accuracy(x_tr, y_tr, x_te, y_te, channels: int, classes: int, epochs: int = 20) -> float:
    """Test accuracy of a small translation-invariant CNN (circular conv, global max pool) trained with Adam."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(channels, 32, 5, padding=2, padding_mode="circular"), nn.ReLU(),
                        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, classes))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(y_tr), generator=g)
        for i in perm.split(100):
            loss = nn.functional.cross_entropy(net(x_tr[i]), y_tr[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((net(x_te).argmax(1) == y_te).float().mean())


def test_a_single_frame_cannot_beat_chance_on_direction_but_two_frames_can():
    dm = small_moving(labels="direction")
    (x_tr, y_tr), (x_te, y_te) = dm.split("train"), dm.split("test")
    g = torch.Generator().manual_seed(1)

    def one_frame(x):  # a random frame of each clip
        return x[torch.arange(len(x)), torch.randint(0, x.shape[1], (len(x),), generator=g)]

    single = _fit_accuracy(one_frame(x_tr), y_tr, one_frame(x_te), y_te, 1, 4)
    two = _fit_accuracy(x_tr[:, :2].flatten(1, 2), y_tr, x_te[:, :2].flatten(1, 2), y_te, 2, 4)
    chance, sigma = 0.25, (0.25 * 0.75 / len(y_te)) ** 0.5
    assert single < chance + 3 * sigma, single  # within binomial noise of chance (600 test clips: < 0.303)
    assert two > 0.9, two


@pytest.mark.parametrize("data", ["moving_digits", "joint_image_video"])
def test_video_data_with_an_image_space_is_a_one_line_config_error(tmp_path, data):
    from nasx.runner import run

    cfg = compose([f"data={data}", "progress=false"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"gives video clips \(B, T, C, H, W\) and space .*ShuffleNetSpace takes "
                                          r"images") as err:
        run(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
