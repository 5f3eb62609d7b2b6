import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from compressor.recipe import RunConfig, TrainConfig
from compressor.train import CheckpointError, Stage, Trainer, load_checkpoint, save_checkpoint
from compressor.train.schedule import lr_factor


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def test_schedules():
    cos = lr_factor(TrainConfig(epochs=10, warmup_epochs=1), steps_per_epoch=10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(99) < 0.01
    step = lr_factor(TrainConfig(epochs=10, schedule="step", milestones=[0.5, 0.75], gamma=0.1), 10)
    assert step(49) == 1.0 and step(50) == pytest.approx(0.1) and step(75) == pytest.approx(0.01)


def test_training_learns_and_logs(tmp_path):
    model = _model()
    trainer = Trainer(RunConfig(progress=False), log_dir=tmp_path)
    hist = trainer.fit(model, Stage("base", _data(), TrainConfig(epochs=4, lr=0.1), 16, val_set=_data(32, seed=1)))
    assert len(hist) == 4 and hist[-1].train_loss < hist[0].train_loss
    lines = (tmp_path / "base.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss") and len(lines) == 5


class _Interrupt(Exception):
    pass


def _interrupt_at(epoch, step):
    def cb(stage, e, s):
        if (e, s) == (epoch, step):
            raise _Interrupt

    return cb


def test_resume_is_exact(tmp_path):
    """Interrupted in the middle of epoch 2, resumed in a fresh trainer: bit-identical weights."""
    cfg = TrainConfig(epochs=3, lr=0.1, warmup_epochs=0.5)
    full = _model()
    Trainer(RunConfig(progress=False, seed=3)).fit(full, Stage("s", _data(), cfg, 16))
    part = _model()
    ckpt = tmp_path / "s.pt"
    with pytest.raises(_Interrupt):
        Trainer(RunConfig(progress=False, seed=3), callbacks=(_interrupt_at(1, 2),)).fit(
            part, Stage("s", _data(), cfg, 16, checkpoint=ckpt))
    assert load_checkpoint(ckpt)["epoch"] == 1
    torch.manual_seed(12345)  # whatever happened in between must not matter
    resumed = _model()
    Trainer(RunConfig(progress=False, seed=3)).fit(resumed, Stage("s", _data(), cfg, 16, checkpoint=ckpt, resume=True))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_bf16_autocast_on_cpu():
    model = _model()
    hist = Trainer(RunConfig(progress=False, amp="bf16", channels_last=True)).fit(
        model, Stage("amp", _data(), TrainConfig(epochs=1, grad_clip=1.0), 16))
    assert math.isfinite(hist[0].train_loss)
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        Trainer(RunConfig(amp="fp16", device="cpu"))


def test_checkpoint_errors(tmp_path):
    path = save_checkpoint({"format": 1, "x": torch.ones(3)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert not (tmp_path / "c.pt.tmp").exists()
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_arch_step_gets_held_out_batches():
    from compressor.train import TrainHooks

    class Bilevel(TrainHooks):
        has_arch_step = True

        def __init__(self):
            self.seen = []

        def arch_step(self, held_out, batch):
            assert len(held_out) == len(batch) == 3  # (x, y, sample indices)
            self.seen.append(held_out[0][:, 0, 0, 0].clone())

    hooks = Bilevel()
    held_out = _data(20, seed=7)
    Trainer(RunConfig(progress=False)).fit(_model(), Stage("bi", _data(), TrainConfig(epochs=1), 16, val_set=held_out,
                                                           hooks=hooks))
    assert len(hooks.seen) == 6  # one per weight step; the 20 held-out images cycle
    values = set(torch.cat(hooks.seen).tolist())
    assert values <= set(held_out.tensors[0][:, 0, 0, 0].tolist())


def test_a_last_batch_of_one_is_dropped_in_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    trainer = Trainer(RunConfig(progress=False))
    history = trainer.fit(model, Stage("bn", _data(17), TrainConfig(epochs=1), 16))  # 16 + 1
    assert len(history) == 1 and len(trainer.loader(_data(17), 16, shuffle=True)) == 1
    assert len(trainer.loader(_data(17), 16, shuffle=False)) == 2  # evaluation sees every sample
