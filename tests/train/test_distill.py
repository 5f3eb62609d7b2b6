import pytest
import torch
import torch.nn.functional as F

from compressor.recipe import RunConfig, TrainConfig
from compressor.train import Stage, Trainer
from compressor.train.distill import Distillation, kd_loss


def test_kd_loss_is_hinton_kd():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    assert torch.allclose(kd_loss(s, t, y, alpha=0.0, temperature=4.0), F.cross_entropy(s, y))
    # by hand: (1 - a) CE + a T^2 sum_c p_t (log p_t - log p_s) / batch
    a, T = 0.9, 4.0
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    assert torch.allclose(kd_loss(s, t, y, alpha=a, temperature=T), (1 - a) * F.cross_entropy(s, y) + a * T * T * kl)
    # a student equal to its teacher pays only the CE part
    assert torch.allclose(kd_loss(t, t, y, alpha=0.5, temperature=2.0), 0.5 * F.cross_entropy(t, y))


def test_distillation_trains_the_student_only():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    before = [p.clone() for p in teacher.parameters()]
    data = torch.utils.data.TensorDataset(torch.randn(40, 3, 2, 2), torch.randint(0, 3, (40,)))
    kd = Distillation(teacher, alpha=0.9, temperature=4.0)
    Trainer(RunConfig(progress=False)).fit(student, Stage("kd", data, TrainConfig(epochs=1), 8, criterion=kd))
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert kd.steps == 5 and kd.teacher_seconds > 0


@pytest.mark.parametrize("alpha,temperature", [(-0.1, 4.0), (1.5, 4.0), (0.5, 0.0)])
def test_bad_settings(alpha, temperature):
    with pytest.raises(ValueError):
        Distillation(torch.nn.Linear(2, 2), alpha=alpha, temperature=temperature)
