"""Training a part of the model for an epoch: the optimizer state goes there and back.

A method may hand the trainer a smaller network for one epoch (:meth:`TrainHooks.epoch_network`:
scs trains only the units its draw switched on).  The trainer keeps one optimizer over the whole
model; for such an epoch it steps a copy over the part's parameters whose momentum is the whole
momentum at the part's positions, and puts it back afterwards, so the whole model's optimizer,
schedule and checkpoint never see the difference.  Whole-model positions outside the part do not
move during that epoch (no gradient, no weight decay, no momentum drift).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class EpochNetwork:
    """A network to train for one epoch in place of the whole model.

    ``pairs`` lists, for every parameter of ``module``, the whole model's parameter it stands
    for, with ``gather(whole_tensor) -> part_tensor`` and ``scatter(whole_tensor, part_tensor)``
    (in place) over its positions; a parameter shared by both appears with itself.  ``finish``
    runs at the end of the epoch: it writes the trained weights and buffers back.
    """

    module: nn.Module
    pairs: list[tuple[nn.Parameter, nn.Parameter, Callable, Callable]]
    finish: Callable[[], None]


def part_optimizer(opt: torch.optim.Optimizer, part: EpochNetwork) -> torch.optim.Optimizer:
    """An optimizer of ``opt``'s kind over ``part``'s parameters: same groups and settings, the
    momentum buffers gathered from ``opt``."""
    by_whole = {id(w): (p, gather) for w, p, gather, _ in part.pairs}
    groups = []
    for group in opt.param_groups:
        params = [by_whole[id(w)][0] for w in group["params"] if id(w) in by_whole]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    new = type(opt)(groups)
    for w, p, gather, _ in part.pairs:
        buf = opt.state.get(w, {}).get("momentum_buffer")
        if buf is not None:
            new.state[p]["momentum_buffer"] = gather(buf).clone()
    return new


def sync_lr(opt: torch.optim.Optimizer, part_opt: torch.optim.Optimizer) -> None:
    """The schedule steps ``opt``; the part follows its learning rates."""
    for whole, part in zip(opt.param_groups, part_opt.param_groups):
        part["lr"] = whole["lr"]


@torch.no_grad()
def return_state(opt: torch.optim.Optimizer, part_opt: torch.optim.Optimizer, part: EpochNetwork) -> None:
    """Scatter the part's momentum buffers back into ``opt``'s."""
    for w, p, _, scatter in part.pairs:
        buf = part_opt.state.get(p, {}).get("momentum_buffer")
        if buf is None:
            continue
        whole = opt.state[w].get("momentum_buffer")
        if whole is None:
            whole = opt.state[w]["momentum_buffer"] = torch.zeros_like(w)
        scatter(whole, buf)
