"""Knowledge distillation from a frozen teacher (Hinton et al. 2015), usable by every training stage.

    loss = (1 - a) * CE(z, y) + a * T^2 * KL(softmax(z_t / T) || softmax(z / T))     (batch mean)

``a = 0.9, T = 4`` are TAS's CIFAR constants, ``a = 0.5, T = 4`` its ImageNet ones (DESIGN 5.2).
The teacher runs in eval mode without gradients, on the student's device, memory format and
autocast; under DDP every process runs its own copy (it has no gradients to synchronise).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..gates.outputs import first_output


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *, alpha: float,
            temperature: float) -> torch.Tensor:
    """Hinton KD: ``(1 - alpha) * CE + alpha * T^2 * KL(teacher || student)`` at temperature T."""
    t = temperature
    ce = F.cross_entropy(student.float(), targets)
    if alpha == 0:
        return ce
    kl = F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


class Distillation:
    """A training criterion ``(inputs, outputs, targets) -> loss`` distilling from ``teacher``.

    Example:
        >>> kd = Distillation(original, alpha=0.9, temperature=4.0)
        >>> trainer.fit(small, train_set, cfg, stage="finetune", batch_size=64, criterion=kd)
        >>> kd.teacher_seconds                       # wall time spent in teacher forwards
    """

    def __init__(self, teacher: nn.Module, *, alpha: float, temperature: float) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be positive, got {temperature}")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature
        self.teacher_seconds = 0.0
        self.steps = 0

    def prepare(self, device: torch.device, channels_last: bool) -> None:
        """Move the teacher where the student trains (the trainer calls this)."""
        self.teacher.to(device)
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self.teacher.eval()

    def __call__(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher_out = first_output(self.teacher(inputs))
        self.teacher_seconds += time.perf_counter() - t0
        self.steps += 1
        return kd_loss(outputs, teacher_out, targets, alpha=self.alpha, temperature=self.temperature)

    def summary(self) -> dict[str, float]:
        return {"alpha": self.alpha, "temperature": self.temperature, "teacher_seconds": self.teacher_seconds,
                "teacher_ms_per_step": 1000 * self.teacher_seconds / max(self.steps, 1)}
