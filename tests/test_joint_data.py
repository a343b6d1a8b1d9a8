"""Joint multi-data-set training [seed: VIM-NAS]: image-only first epochs, then one data set per step drawn in
proportion to its size as a pure function of (seed, step), one head per data set, and a resumed fit that sees the
same data sets and batches as an uninterrupted one."""
from __future__ import annotations

import hashlib
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from scipy.stats import chisquare
from torch import nn

from conftest import compose
from nasx.data.digits import DigitsDataModule
from nasx.data.joint import JointBatch, JointBatchSampler, JointDataModule, draw_dataset
from nasx.data.moving_digits import MovingDigitsDataModule
from nasx.errors import ConfigError
from nasx.models.multihead import MultiHead
from nasx.stages import RngState, SaveLast
from nasx.training.joint import JointTraining
from nasx.training.optim import SlicedSGD, param_groups


def sampler(sizes=(1000, 3000, 6000), batch_sizes=(10, 10, 10), image=0, image_only_epochs=0, steps=None, seed=0,
            rank=0, world_size=1) -> JointBatchSampler:
    steps = steps or sum(n // (b * world_size) for n, b in zip(sizes, batch_sizes))
    return JointBatchSampler(sizes, batch_sizes, image, image_only_epochs, steps, seed, rank, world_size)


def epoch_batches(s: JointBatchSampler, epoch: int) -> list[tuple[int, tuple[int, ...]]]:
    s.set_epoch(epoch)
    return [(batch[0][0], tuple(i for _, i, _ in batch)) for batch in s]


# ---- the sampler ----------------------------------------------------------------------------------------------------

def test_draw_is_a_pure_function_of_seed_and_step():
    sizes = (5, 7, 11)
    first = [draw_dataset(0, step, sizes) for step in range(500)]
    assert first == [draw_dataset(0, step, sizes) for step in range(500)]
    assert first != [draw_dataset(1, step, sizes) for step in range(500)]
    assert [sampler(sizes=(50, 70, 110), batch_sizes=(5, 5, 5)).dataset_at(s) for s in range(500)] == first


def test_data_sets_are_drawn_in_proportion_to_their_size():
    sizes = np.array([1000, 3000, 6000])
    counts = Counter(draw_dataset(seed=0, step=s, sizes=sizes.tolist()) for s in range(30000))
    observed = np.array([counts[d] for d in range(3)])
    expected = 30000 * sizes / sizes.sum()
    assert chisquare(observed, expected).pvalue > 0.01, observed
    assert np.abs(observed / 30000 - sizes / sizes.sum()).max() < 0.01
    # the test has the power to tell: the same counts are far from equal proportions
    assert chisquare(observed, np.full(3, 10000)).pvalue < 1e-6


def test_first_epochs_train_the_image_data_set_only():
    s = sampler(image=1, image_only_epochs=2)
    for epoch in (0, 1):
        assert {d for d, _ in epoch_batches(s, epoch)} == {1}
    assert {d for d, _ in epoch_batches(s, 2)} == {0, 1, 2}
    assert len(epoch_batches(s, 0)) == len(s) == 100 + 300 + 600  # every epoch has the same steps


def test_each_step_is_one_data_set_and_each_pass_a_permutation():
    s = sampler(sizes=(40, 120, 240), batch_sizes=(4, 8, 16), image_only_epochs=1)
    image_epoch = epoch_batches(s, 0)  # 10 + 15 + 15 = 40 steps of 4 images: 4 passes over the 40 images
    assert all(d == 0 and len(idx) == 4 for d, idx in image_epoch)
    for p in range(4):
        assert sorted(i for _, idx in image_epoch[10 * p:10 * p + 10] for i in idx) == list(range(40))
    joint = epoch_batches(s, 1)
    for d, (n, b) in enumerate(((40, 4), (120, 8), (240, 16))):
        mine = [idx for dd, idx in joint if dd == d]
        assert all(len(idx) == b for idx in mine)
        first_pass = [i for idx in mine[:n // b] for i in idx]
        assert len(set(first_pass)) == len(first_pass) and max(first_pass) < n


def test_ddp_ranks_draw_the_same_data_sets_and_disjoint_samples():
    r0, r1 = (sampler(sizes=(400, 800), batch_sizes=(10, 10), rank=r, world_size=2) for r in (0, 1))
    a, b = epoch_batches(r0, 3), epoch_batches(r1, 3)
    assert len(a) == len(b) == 20 + 40
    assert [d for d, _ in a] == [d for d, _ in b]
    assert all(not set(x) & set(y) for (_, x), (_, y) in zip(a, b))


def test_an_epoch_is_the_same_whatever_ran_before_it():
    s = sampler(image_only_epochs=1)
    for e in range(3):
        epoch_batches(s, e)
    assert epoch_batches(sampler(image_only_epochs=1), 2) == epoch_batches(s, 2)


# ---- the data module and training ----------------------------------------------------------------------------------

class Frames(nn.Module):
    """A tiny video backbone: (B, T, C, H, W) -> (B, 16) from the first frame and the last-minus-first difference."""

    def __init__(self, channels: int = 1, features: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, features, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.cat([x[:, 0], x[:, -1] - x[:, 0]], 1)).relu().amax((2, 3))


def joint(seed: int = 0, **kwargs) -> JointDataModule:
    return JointDataModule({"digits": DigitsDataModule(image_size=8, batch_size=32, seed=seed),
                            "motion": MovingDigitsDataModule(image_size=8, frames=3, n_train=300, n_test=50,
                                                             batch_size=32, labels="direction", digit_size=4,
                                                             seed=seed)},
                           seed=seed, **kwargs)


class Record(L.Callback):
    """Each training step's data set and a digest of its batch."""

    def __init__(self):
        self.steps: list[tuple[int, int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        digest = hashlib.sha256(batch.x.numpy().tobytes() + batch.y.numpy().tobytes()).hexdigest()[:16]
        self.steps.append((trainer.global_step, batch.dataset, digest))


class Killed(Exception):
    pass


class KillAfterEpoch(L.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Killed


def _fit(tmp_path, epochs: int, callbacks: list, ckpt: str | None = None) -> JointTraining:
    L.seed_everything(0, verbose=False)
    dm = joint(image_only_epochs=1)
    dm.setup()
    system = JointTraining(MultiHead(Frames(), 16, dm.num_classes), dm.names, lr=0.05)
    fit_with(system, dm, tmp_path, epochs, callbacks, ckpt)
    return system


def fit_with(system, dm, tmp_path, epochs: int, callbacks: list, ckpt: str | None) -> None:
    """Fit on the CPU with nasx's resume callbacks (RNG state, last.ckpt after every epoch), from ``ckpt`` if given."""
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                        callbacks=[RngState(), SaveLast(tmp_path / "last.ckpt"), *callbacks])
    trainer.fit(system, datamodule=dm, ckpt_path=ckpt)


def test_resumed_joint_fit_sees_the_same_data_sets_and_batches(tmp_path):
    whole = Record()
    uninterrupted = _fit(tmp_path / "a", 3, [whole])
    first, second = Record(), Record()
    with pytest.raises(Killed):
        _fit(tmp_path / "b", 3, [first, KillAfterEpoch(1)])
    resumed = _fit(tmp_path / "b", 3, [second], ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert first.steps + second.steps == whole.steps
    steps_per_epoch = len(whole.steps) // 3
    assert {d for _, d, _ in whole.steps[:steps_per_epoch]} == {0}  # epoch 1 of 3: images only
    assert {d for _, d, _ in whole.steps[steps_per_epoch:]} == {0, 1}
    assert [s for s, _, _ in second.steps] == list(range(2 * steps_per_epoch, 3 * steps_per_epoch))
    for (k, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_step_updates_only_its_data_sets_head():
    dm = joint(image_only_epochs=0)
    dm.setup()
    model = MultiHead(Frames(), 16, dm.num_classes)
    system = JointTraining(model, dm.names, lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd = SlicedSGD(param_groups(model, 4e-5), lr=0.1, momentum=0.9)  # what configure_optimizers builds
    x, y = dm.datamodules[1].split("train")
    loss, _ = system.objective(x[:8], y[:8], 1)
    loss.backward()
    assert model.heads[0].weight.grad is None and model.heads[1].weight.grad is not None
    sgd.step()
    after = model.state_dict()
    assert torch.equal(after["heads.0.weight"], before["heads.0.weight"])
    assert not torch.equal(after["heads.1.weight"], before["heads.1.weight"])
    assert not torch.equal(after["backbone.conv.weight"], before["backbone.conv.weight"])


def test_gradient_accumulation_across_steps_is_refused(tmp_path):
    dm = joint(image_only_epochs=0)
    system = JointTraining(MultiHead(Frames(), 16, (10, 4)), ["digits", "motion"])
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=2,
                        default_root_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        trainer.fit(system, datamodule=dm)


def test_batches_carry_their_data_set_and_images_become_one_frame_videos():
    dm = joint(image_only_epochs=0)
    dm.setup()
    loader = dm.train_dataloader()
    seen = {}
    for batch in loader:
        batch = dm.on_after_batch_transfer(batch, 0)
        assert isinstance(batch, JointBatch)
        seen.setdefault(batch.dataset, tuple(batch.x.shape))
        if len(seen) == 2:
            break
    assert seen == {0: (32, 1, 1, 8, 8), 1: (32, 3, 1, 8, 8)}
    for d, val in enumerate(dm.val_dataloader()):  # one loader per data set, in name order
        batch = dm.on_after_batch_transfer(next(iter(val)), d)
        assert batch.dataset == d and batch.x.dim() == 5


def test_joint_image_video_config_trains_one_head_per_data_set(tmp_path):
    cfg = compose(["data=joint_image_video", "space.input_size=8", "data.steps_per_epoch=6",
                   "data.datasets.moving_digits.n_train=200", "data.datasets.moving_digits_motion.n_train=200",
                   "data.datasets.moving_digits.frames=2", "data.datasets.moving_digits_motion.frames=2"], tmp_path)
    dm = instantiate(cfg.data)
    dm.check()
    assert dm.names == ["digits", "moving_digits", "moving_digits_motion"]
    assert dm.num_classes == (10, 10, 4) and dm.in_channels == 1
    record = Record()
    system = JointTraining(MultiHead(Frames(), 16, dm.num_classes), dm.names, lr=0.05)
    L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[record],
              default_root_dir=str(tmp_path)).fit(system, datamodule=dm)
    assert len(record.steps) == 18
    assert {d for _, d, _ in record.steps[:6]} == {0}  # max_epochs // 3 = 1 image-only epoch


def test_bad_joint_configs_are_config_errors():
    digits = DigitsDataModule(image_size=8)
    with pytest.raises(ConfigError, match="image_dataset must be one of digits"):
        JointDataModule({"digits": digits}, image_dataset="imagenet")
    with pytest.raises(ConfigError, match="datasets is empty"):
        JointDataModule({})
    with pytest.raises(ConfigError, match="share their input channels"):
        rgb = DigitsDataModule(image_size=8)
        rgb.in_channels = 3
        JointDataModule({"digits": digits, "rgb": rgb}).check()
    with pytest.raises(ConfigError, match="fewer than one batch"):
        sampler(sizes=(100, 5), batch_sizes=(10, 10))
    with pytest.raises(ConfigError, match="image_only_epochs"):
        JointDataModule({"digits": digits}, image_only_epochs=-1)


def test_worker_processes_load_the_same_batches(tmp_path):
    """The joint loader pickles to DataLoader workers: same data sets, same batches as loading in-process."""
    def batches(workers: int) -> list[tuple[int, str]]:
        dm = joint(image_only_epochs=0, num_workers=workers, steps_per_epoch=8)
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        return [(b.dataset, hashlib.sha256(b.x.numpy().tobytes()).hexdigest()) for b in loader]

    assert batches(1) == batches(0)


def test_kinetics_and_ssv2_train_jointly_from_their_fixture_trees(tmp_path):
    from test_video import kinetics, make_kinetics, make_ssv2, ssv2

    dm = JointDataModule({"k400": kinetics(make_kinetics(tmp_path / "k", n_frames=12), frames=2, batch_size=2),
                          "ssv2": ssv2(make_ssv2(tmp_path / "s", n_frames=12), frames=2, batch_size=2)},
                         image_only_epochs=0, images_as_videos=False)
    dm.check()
    assert dm.num_classes == (3, 3) and dm.in_channels == 3 and dm.video
    dm.setup()
    loader = dm.train_dataloader()
    assert len(loader) == 3 + 3  # 6 and 7 training videos in batches of 2
    seen = {}
    for batch in loader:
        seen.setdefault(batch.dataset, tuple(batch.x.shape))
    assert seen == {0: (2, 2, 3, 16, 16), 1: (2, 2, 3, 16, 16)}
