"""Self-distillation with voting teachers (SD-DARTS, arXiv 2302.05629; DESIGN 5.4).

The teacher of a sample is the model itself in the previous K epochs: the mean of the output
probabilities it gave that sample (kept per sample index, no gradient).  The term

    weight * KL(p_student || p_teacher)          (the paper's direction, temperature 1)

is added to the weight loss and to the architecture loss of a bilevel search once ``warmup``
epochs have passed.  Under DDP each process records the samples of its own shard; at the end of
an epoch the sums and counts are all-reduced, so every process holds the same teachers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistEnv


class VotingTeachers(nn.Module):
    """Per-sample output probabilities of the last ``k`` epochs (buffers, so they checkpoint).

    Example:
        >>> vt = VotingTeachers(num_samples=len(train_set), num_classes=10, k=2)
        >>> loss = vt.loss(logits, indices)          # 0 until a past epoch saw these samples
        >>> vt.record(logits, indices)               # this epoch's votes
        >>> vt.end_epoch(trainer.dist)               # the oldest epoch leaves, this one joins
    """

    def __init__(self, num_samples: int, num_classes: int, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"voting teachers need k >= 1 past epochs, got {k}")
        self.k = k
        self.register_buffer("past", torch.zeros(k, num_samples, num_classes))
        self.register_buffer("past_seen", torch.zeros(k, num_samples, dtype=torch.bool))
        self.register_buffer("now_sum", torch.zeros(num_samples, num_classes, dtype=torch.float64))
        self.register_buffer("now_count", torch.zeros(num_samples, dtype=torch.float64))

    @property
    def memory_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    @torch.no_grad()
    def record(self, logits: torch.Tensor, indices: torch.Tensor) -> None:
        """Add this step's probabilities of the samples ``indices`` to the running epoch."""
        idx = indices.to(self.now_sum.device)
        probs = F.softmax(logits.detach().float(), dim=1).to(self.now_sum.device, torch.float64)
        self.now_sum.index_add_(0, idx, probs)
        self.now_count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))

    def teacher(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean past probabilities, whether any past epoch saw the sample) for ``indices``."""
        idx = indices.to(self.past.device)
        seen = self.past_seen[:, idx].float()                          # (k, B)
        total = (self.past[:, idx] * seen.unsqueeze(-1)).sum(0)        # (B, C)
        n = seen.sum(0)
        return total / n.clamp(min=1).unsqueeze(-1), n > 0

    def loss(self, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``KL(p_student || p_teacher)`` summed over the samples that have a teacher, divided by
        the batch size (samples without one contribute nothing)."""
        p_t, valid = self.teacher(indices)
        p_t, valid = p_t.to(logits.device), valid.to(logits.device)
        log_s = F.log_softmax(logits.float(), dim=1)
        kl = (log_s.exp() * (log_s - p_t.clamp(min=1e-8).log())).sum(1)
        return (kl * valid).sum() / max(len(indices), 1)

    @torch.no_grad()
    def end_epoch(self, dist: DistEnv | None = None) -> None:
        """Make the running epoch the newest teacher (after summing it over processes)."""
        if dist is not None:
            dist.all_reduce_(self.now_sum)
            dist.all_reduce_(self.now_count)
        seen = self.now_count > 0
        mean = (self.now_sum / self.now_count.clamp(min=1).unsqueeze(-1)).float()
        self.past.copy_(torch.cat([self.past[1:], mean.unsqueeze(0)]))
        self.past_seen.copy_(torch.cat([self.past_seen[1:], seen.unsqueeze(0)]))
        self.now_sum.zero_()
        self.now_count.zero_()


def self_distill_term(teachers: VotingTeachers | None, logits: torch.Tensor, indices: torch.Tensor, *,
                      weight: float, active: bool, record: bool) -> torch.Tensor | None:
    """SD-DARTS's term on one level: ``weight x KL`` to the voting teachers while ``active`` (after
    the warm-up), None otherwise or without teachers; ``record`` adds these outputs to the epoch
    being collected."""
    if teachers is None:
        return None
    loss = weight * teachers.loss(logits, indices) if active else None
    if record:
        teachers.record(logits, indices)
    return loss
