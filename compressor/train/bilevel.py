"""Bilevel optimisation of architecture parameters on a held-out split (DARTS, Liu et al. 2019).

    weights w:  min_w L_train(w, alpha)                  (the trainer's weight step)
    arch alpha: min_alpha L_val(w*(alpha), alpha)        (:meth:`ArchitectureStep.step`)

First order uses ``grad_alpha L_val(w, alpha)``.  Second order unrolls one virtual SGD step of
the weights, ``w' = w - xi * (grad_w L_train + momentum * buffer + wd * w)`` with the weight
optimizer's own learning rate ``xi``, momentum buffers and weight decay, and corrects the
gradient by a finite-difference Hessian-vector product:

    g = grad_alpha L_val(w', alpha) - xi * (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / (2 eps)
    w+- = w +- eps * grad_w' L_val(w', alpha),   eps = 0.01 / ||grad_w' L_val(w', alpha)||

The architecture optimizer is Adam (lr 1e-3, betas (0.5, 0.999), weight decay 1e-3: TAS and
DARTS).  Under DDP the architecture gradient is averaged over processes before the step.
Operation search (mixed ops, DESIGN 5.5) can reuse this unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .distributed import DistEnv

Loss = Callable[[], torch.Tensor]


def banded_cost_loss(expected: torch.Tensor, current: float, target: float, band: float) -> torch.Tensor:
    """TAS's cost loss (Dong & Yang 2019) on a differentiable ``expected`` cost fraction, steered
    by the ``current`` (argmax) architecture's: ``-log E`` below ``target - band`` (grow),
    ``+log E`` above ``target`` (shrink), 0 inside the band."""
    if current < target - band:
        return -torch.log(expected)
    if current > target:
        return torch.log(expected)
    return expected * 0


class ArchitectureStep:
    """One optimizer over architecture parameters, stepped on held-out batches.

    Example:
        >>> arch = ArchitectureStep([alpha], lr=1e-3, order=2)
        >>> arch.step(lambda: loss_on(val_batch), lambda: loss_on(train_batch), weights=optimizer)
    """

    def __init__(self, params: list[nn.Parameter], *, lr: float = 1e-3, betas: tuple[float, float] = (0.5, 0.999),
                 weight_decay: float = 1e-3, order: int = 1, dist: DistEnv | None = None) -> None:
        if order not in (1, 2):
            raise ValueError(f"bilevel order must be 1 or 2, got {order}")
        self.params = list(params)
        self.order = order
        self.dist = dist or DistEnv()
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=betas, weight_decay=weight_decay)

    def step(self, val_loss: Loss, train_loss: Loss | None = None, *,
             weights: torch.optim.Optimizer | None = None) -> float:
        """Set the architecture gradient (first or second order), average it over processes and
        take one Adam step.  ``weights`` is the weight optimizer (second order reads its learning
        rates, momentum buffers and weight decay).  Returns the held-out loss."""
        if self.order == 2:
            if train_loss is None or weights is None:
                raise ValueError("second-order bilevel steps need the training loss and the weight optimizer")
            loss, grads = self.second_order_gradient(val_loss, train_loss, weights)
        else:
            loss = val_loss()
            grads = list(torch.autograd.grad(loss, self.params, allow_unused=True))
        for p, g in zip(self.params, grads):
            p.grad = torch.zeros_like(p) if g is None else g.detach()
            if self.dist.enabled:
                self.dist.all_reduce_(p.grad).div_(self.dist.world_size)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def second_order_gradient(self, val_loss: Loss, train_loss: Loss,
                              weights: torch.optim.Optimizer) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """``(L_val(w'), d/d alpha L_val(w'(alpha), alpha))`` by DARTS's unrolled step; the weights
        are left exactly as they were."""
        ws, lrs, moms, wds, bufs = _weight_state(weights, {id(p) for p in self.params})
        saved = [w.detach().clone() for w in ws]
        g_train = torch.autograd.grad(train_loss(), ws, allow_unused=True)
        with torch.no_grad():
            for w, g, lr, mom, wd, buf in zip(ws, g_train, lrs, moms, wds, bufs):
                v = (torch.zeros_like(w) if g is None else g) + wd * w
                if buf is not None:
                    v = v + mom * buf
                w.sub_(lr * v)
        loss = val_loss()
        grads = torch.autograd.grad(loss, [*self.params, *ws], allow_unused=True)
        d_alpha, d_w = grads[:len(self.params)], grads[len(self.params):]
        norm = torch.sqrt(sum(((g.float() ** 2).sum() for g in d_w if g is not None), torch.zeros(())))
        eps = 0.01 / max(float(norm), 1e-12)

        # xi is the unrolled step's learning rate; a group with another rate scales its part of the
        # direction by lr / xi, so the product below is the exact Hessian-vector term
        xi = max(lrs, default=0.0)
        scale = [lr / xi if xi > 0 else 0.0 for lr in lrs]

        def alpha_grad_at(sign: float) -> tuple[torch.Tensor | None, ...]:
            with torch.no_grad():
                for w, w0, g, r in zip(ws, saved, d_w, scale):
                    w.copy_(w0 if g is None else w0 + sign * eps * r * g)
            return torch.autograd.grad(train_loss(), self.params, allow_unused=True)

        plus, minus = alpha_grad_at(1.0), alpha_grad_at(-1.0)
        with torch.no_grad():
            for w, w0 in zip(ws, saved):
                w.copy_(w0)
        out: list[torch.Tensor | None] = []
        for da, gp, gm in zip(d_alpha, plus, minus):
            if da is None and gp is None:
                out.append(None)
                continue
            hv = (gp - gm) / (2 * eps) if gp is not None and gm is not None else 0.0
            out.append((da if da is not None else 0.0) - xi * hv)
        return loss, out

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def _weight_state(opt: torch.optim.Optimizer, exclude: set[int]):
    """Per weight of ``opt`` (architecture parameters excluded): the tensor, its group's learning
    rate, momentum and weight decay, and its momentum buffer (None before the first step)."""
    ws, lrs, moms, wds, bufs = [], [], [], [], []
    for group in opt.param_groups:
        for p in group["params"]:
            if id(p) in exclude or not p.requires_grad:
                continue
            ws.append(p)
            lrs.append(float(group["lr"]))
            moms.append(float(group.get("momentum", 0.0)))
            wds.append(float(group.get("weight_decay", 0.0)))
            bufs.append(opt.state.get(p, {}).get("momentum_buffer"))
    return ws, lrs, moms, wds, bufs
