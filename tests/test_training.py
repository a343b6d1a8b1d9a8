"""Supernet training updates only the sampled path: no momentum drift, no weight decay elsewhere."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from nasx.arch import step_rng
from nasx.training.optim import SlicedSGD, param_groups


def _step(supernet, opt, arch, seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(supernet(x, arch), y).backward()
    opt.step()


def test_unsampled_weights_and_their_momentum_do_not_move(tiny_space):
    torch.manual_seed(0)
    supernet = tiny_space.supernet().train()
    opt = SlicedSGD(param_groups(supernet, weight_decay=0.1), lr=0.1, momentum=0.9, nesterov=True)
    _step(supernet, opt, None)  # warm-up step: every block at full width, so every weight has momentum now
    assert all(p in opt.state for p in supernet.parameters())

    arch = tiny_space.sample(random.Random(3))
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    bufs = {n: opt.state[p]["momentum_buffer"].clone() for n, p in supernet.named_parameters()}
    _step(supernet, opt, arch, seed=1)
    params = dict(supernet.named_parameters())

    c = arch.choices()
    for i, blocks in enumerate(supernet.layers):
        mid = tiny_space.mids[i][c[2 * i + 1]]
        for b, block in enumerate(blocks):
            for name, p in block.named_parameters():
                full = f"layers.{i}.{b}.{name}"
                if b != c[2 * i]:  # a block not on the path: bit-for-bit unchanged, momentum too
                    assert torch.equal(p, before[full]), full
                    assert torch.equal(opt.state[p]["momentum_buffer"], bufs[full]), full
                    continue
                # the sampled block: the rows of mid-width ops beyond the sampled width keep value and momentum
    checked = 0
    for i, blocks in enumerate(supernet.layers):
        mid = tiny_space.mids[i][c[2 * i + 1]]
        block = blocks[c[2 * i]]
        for k, (op, (kind, out)) in enumerate(zip(block.main.ops, block.main._plan)):
            if out != "mid" or kind not in ("conv", "bn"):
                continue
            p = op.weight
            full = f"layers.{i}.{c[2 * i]}.main.ops.{k}.weight"
            if mid < p.shape[0]:
                assert torch.equal(p[mid:], before[full][mid:]), full
                assert torch.equal(opt.state[p]["momentum_buffer"][mid:], bufs[full][mid:]), full
                checked += 1
            assert not torch.equal(p[:mid], before[full][:mid]), full
    assert checked > 0
    # shared layers on every path moved
    assert not torch.equal(params["stem.0.weight"], before["stem.0.weight"])
    assert not torch.equal(params["classifier.1.weight"], before["classifier.1.weight"])  # (dropout, linear)


def test_sliced_columns_of_a_pointwise_conv_keep_their_state(tiny_space):
    torch.manual_seed(0)
    supernet = tiny_space.supernet().train()
    opt = SlicedSGD(param_groups(supernet, weight_decay=0.1), lr=0.1, momentum=0.9)
    _step(supernet, opt, None)
    arch = tiny_space.arch([0, 0] * (len(tiny_space.genes) // 2))  # shuffle3 at the narrowest width everywhere
    unit = supernet.layers[1][0]  # a stride-1 unit: main = pw(in->mid), dw(mid), pw(mid->out)
    pw_in, pw_out = unit.main.ops[0].weight, unit.main.ops[5].weight
    mid = tiny_space.mids[1][0]
    w_in, w_out = pw_in.detach().clone(), pw_out.detach().clone()
    _step(supernet, opt, arch, seed=2)
    assert torch.equal(pw_in[mid:], w_in[mid:]) and not torch.equal(pw_in[:mid], w_in[:mid])
    assert torch.equal(pw_out[:, mid:], w_out[:, mid:]) and not torch.equal(pw_out[:, :mid], w_out[:, :mid])


def test_sliced_sgd_is_plain_sgd_when_nothing_is_sliced():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    b = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    b.load_state_dict(a.state_dict())
    oa = SlicedSGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    for _ in range(5):
        x = torch.randn(6, 5)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_training_system_samples_the_same_arch_for_the_same_step(tiny_space):
    from nasx.training.supernet import SupernetTraining

    s1 = SupernetTraining(tiny_space.supernet(), tiny_space, seed=7, warmup_epochs=0)
    s2 = SupernetTraining(tiny_space.supernet(), tiny_space, seed=7, warmup_epochs=0)
    assert [s1.sampled_arch(k) for k in range(10)] == [s2.sampled_arch(k) for k in range(10)]
    assert s1.sampled_arch(3) == tiny_space.sample(step_rng(7, 3))
    warm = SupernetTraining(tiny_space.supernet(), tiny_space, seed=7, warmup_epochs=1)
    assert warm.sampled_arch(3) is None  # epoch 0 < warmup_epochs: all blocks, widest


def test_non_finite_loss_stops_with_a_checkpoint_and_a_message(tiny_space, tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from nasx.errors import NonFiniteLossError
    from nasx.training.supernet import SupernetTraining

    system = SupernetTraining(tiny_space.supernet(), tiny_space, seed=0, lr=1e30, checkpoint_dir=str(tmp_path))
    x = torch.randn(64, 1, 16, 16) * 1e6
    loader = DataLoader(TensorDataset(x, torch.randint(0, 10, (64,))), batch_size=16)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step \d+ .*checkpoint written to"):
        trainer.fit(system, loader)
    assert (tmp_path / "nonfinite.ckpt").exists()
