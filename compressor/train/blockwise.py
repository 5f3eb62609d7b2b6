"""Blockwise distillation of candidate operations (DNA, Li et al. CVPR 2020; LANA, Molchanov et al.
ECCV 2022): every candidate at every site learns to reproduce the original operation's output
from the original's input at that site, all sites in parallel, on the trained original's own
activations.

    for each step:  run the original (every mixed op at ``itself``), recording each site's input x_s
                    and output y_s;  loss = sum_s sum_o ||o(x_s) - y_s||^2 / (|y_s| var(y_s))
                    one Adam step on the candidates' weights
    score of (s, o) = its mean normalised loss over the last quarter of the steps

A score of 0 is a perfect copy (``itself``); 1 is as good as predicting the output's mean.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ContextManager

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


class Recorder:
    """Forward hooks capturing each mixed op's input and its original operation's output."""

    def __init__(self, mixed: dict[str, nn.Module]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, m in mixed.items():
            self.handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: self._input(n, args)))
            self.handles.append(m.ops[0].register_forward_hook(lambda mod, args, out, n=name: self._output(n, out)))

    def _input(self, name: str, args: tuple) -> None:
        self.inputs[name] = args[0].detach()

    def _output(self, name: str, out: torch.Tensor) -> None:
        self.outputs[name] = out.detach()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def distill_candidates(net: nn.Module, mixed: dict[str, nn.Module], batches: Iterator[torch.Tensor], *,
                       steps: int, lr: float, autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                       progress: bool = False) -> dict[str, np.ndarray]:
    """Train the candidates (``mixed[site].ops[1:]``) of every site; return per site the score of
    each option (``itself`` first, 0).  ``net`` runs with every mixed op at ``itself``; its own
    weights do not move."""
    params = [p for m in mixed.values() for op in m.ops[1:] for p in op.parameters()]
    opt = torch.optim.Adam(params, lr=lr) if params else None
    tail = max(1, steps // 4)
    sums = {name: np.zeros(len(m.ops)) for name, m in mixed.items()}
    recorder = Recorder(mixed)
    was = net.training
    net.eval()  # the original's own activations: its batch norms as trained
    try:
        for step in tqdm(range(steps), desc="distilling candidates", leave=False, disable=not progress):
            with torch.no_grad(), autocast():
                net(next(batches))
            losses = {name: _candidate_losses(m, recorder.inputs[name], recorder.outputs[name])
                      for name, m in mixed.items()}
            if step >= steps - tail:  # one device-to-host copy per step, not one per candidate
                flat = torch.cat([v.detach() for v in losses.values()]).cpu().numpy() if losses else np.zeros(0)
                at = 0
                for name, v in losses.items():
                    sums[name][1:] += flat[at:at + v.numel()]
                    at += v.numel()
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                sum(v.sum() for v in losses.values()).backward()
                opt.step()
    finally:
        recorder.remove()
        net.train(was)
    return {name: s / tail for name, s in sums.items()}


def _candidate_losses(mixed: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each candidate's (``mixed.ops[1:]``) mean squared error to ``y``, normalised by ``y``'s variance."""
    y = y.float()
    scale = y.var().clamp_min(1e-12)
    return torch.stack([(op(x).float() - y).pow(2).mean() / scale for op in mixed.ops[1:]]) if len(mixed.ops) > 1 \
        else y.new_zeros(0)
