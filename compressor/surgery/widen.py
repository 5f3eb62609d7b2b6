"""``grow_model``: the inverse of slicing. Two half-width seed models become one model of twice their
width, laid out as the target model the seeds were cut from.

Every prunable channel group of the target is split into two halves of equal size: seed A is the
target sliced to the first half of each group, seed B has the same architecture and stands for the
second half.  In the grown model a parameter element whose positions all lie in A's half (or in
units both seeds share: the image input, the class outputs, frozen groups) comes from A, likewise
for B; an element that reads one half and writes the other is an *off-diagonal* block, filled by
the caller (zeros by default).  With zero off-diagonal blocks, a model in eval mode made only of
per-channel operations computes exactly the sum of the two seeds' logits: that is the invariant
``check_growth`` measures.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from ..decision import Decision
from ..space import Space
from ..space.grouping import REACHES_OUTPUT
from .channels import tensor_named
from .slice import slice_model

# Labels of a parameter position: shared by both seeds, A's half, B's half, or dropped.
SHARED, A, B, DROP = 0, 1, 2, 3

BlockFill = Callable[[str, str, torch.Tensor], torch.Tensor]
"""``fill(param_name, block, like)`` -> a tensor shaped like ``like`` (a seed's parameter) for the
``block`` ``"ab"`` (rows of A, columns of B), ``"ba"``, or ``"b"`` (B's own block, asked for only
when there is no seed B)."""


class GrowError(RuntimeError):
    """The model cannot be widened; the message names the parameter or group and why."""


@dataclass
class Halves:
    """Which units of the target each seed stands for.

    Attributes:
        a, b: per prunable group, the target's units of each half (``b[g][i]`` takes the place of
            ``a[g][i]`` in seed B).
        dropped: per group with an odd number of free units, the unit the grown model leaves out.
    """

    a: dict[str, list[int]]
    b: dict[str, list[int]]
    dropped: dict[str, int]

    def seed_decision(self, space: Space) -> Decision:
        """The decision that cuts a seed's architecture out of the target."""
        return Decision({"channels": {g: sorted(kept + _pinned(space, g)) for g, kept in self.a.items()}})

    def grown_decision(self, space: Space) -> Decision:
        """The decision that cuts the grown architecture out of the target (drops odd units)."""
        return Decision({"channels": {g: sorted(self.a[g] + self.b[g] + _pinned(space, g)) for g in self.a}})


def _pinned(space: Space, group: str) -> list[int]:
    return np.flatnonzero(space["channels"].group(group).pinned).tolist()


def split_halves(space: Space) -> Halves:
    """First half of every prunable group's free units for seed A, second half for seed B.

    Groups normalised over their channels (LayerNorm...) are not split: the grown statistics
    would mix both seeds' channels.  Raises GrowError when no group can be split."""
    a, b, dropped = {}, {}, {}
    normalised = normalised_groups(space)
    for g in space["channels"].groups:
        if not g.prunable or g.name in normalised:
            continue
        free = np.flatnonzero(~g.pinned).tolist()
        half = len(free) // 2
        if half == 0:
            continue
        a[g.name], b[g.name] = free[:half], free[half:2 * half]
        if len(free) % 2:
            dropped[g.name] = free[-1]
    if not a:
        raise GrowError("no prunable channel group has two free units: nothing to grow "
                        "(`compress inspect` lists the groups and why they are frozen)")
    return Halves(a, b, dropped)


def seed_model(target: nn.Module, space: Space, halves: Halves) -> nn.Module:
    """The seed architecture: the target cut to half of every prunable group (its weights are the
    target's; re-initialise them to train a seed from scratch)."""
    return slice_model(target, space, halves.seed_decision(space))


def grow_model(target: nn.Module, space: Space, halves: Halves, seed_a: nn.Module,
               seed_b: nn.Module | None = None, fill: BlockFill | None = None) -> nn.Module:
    """Return the target architecture (without dropped units) carrying both seeds' weights.

    ``space`` is the target's.  Elements only one seed owns are copied from it; elements both share
    are summed where they write the model's output units (a classifier's bias, so the logits are the
    sum of both heads) and averaged elsewhere (a frozen layer both seeds trained).  Off-diagonal
    blocks, and B's blocks when ``seed_b`` is None, come from ``fill`` (zeros when None).
    """
    labels, slots = _unit_labels_and_slots(space, halves)
    grown = slice_model(target, space, halves.grown_decision(space))
    sa, sb = _tensors(seed_a), _tensors(seed_b) if seed_b is not None else None
    done = set()
    for name, ps in space["channels"].param_slices.items():
        t = tensor_named(grown, name)
        if t is None:
            continue
        done.add(name)
        lab, slot = _param_positions(name, ps, t, labels, slots, space)
        new = _assemble(name, t, lab, slot, sa, sb, fill, writes_output=_writes_output(ps, space))
        _set(grown, name, new)
    for name, t in _tensors(grown).items():
        if name in done:
            continue
        a = sa.get(name)
        if a is None or a.shape != t.shape:
            raise GrowError(f"seed A has no tensor {name!r} of shape {tuple(t.shape)}")
        b = sb.get(name) if sb is not None else None
        value = a if b is None or not a.is_floating_point() else (a + b) / 2
        _set(grown, name, value.clone())
    return grown


# -- positions ---------------------------------------------------------------------------------

def _unit_labels_and_slots(space: Space, halves: Halves) -> tuple[np.ndarray, np.ndarray]:
    """Label of every flat unit (plus a last entry for -1, "not a unit": shared), and for B's
    units the flat unit of A's they stand in for (identity elsewhere)."""
    n = space["channels"].size
    labels = np.full(n + 1, SHARED, dtype=np.int64)
    partner = np.arange(n + 1)
    for name in halves.a:
        g = space["channels"].group(name)
        ua, ub = g.offset + np.asarray(halves.a[name]), g.offset + np.asarray(halves.b[name])
        labels[ua], labels[ub] = A, B
        partner[ub] = ua
        if name in halves.dropped:
            labels[g.offset + halves.dropped[name]] = DROP
    return labels, partner


def _param_positions(name, ps, tensor, labels, partner, space):
    """Per dim of the grown tensor: the label of each position and its slot in a seed's tensor."""
    lab, slot = [], []
    for d in range(tensor.dim()):
        units = _units_along(name, ps, d)
        if units is None:
            lab.append(np.full(tensor.shape[d], SHARED))
            slot.append(np.arange(tensor.shape[d]))
            continue
        u = np.where(units >= 0, units, len(labels) - 1)
        pl = labels[u]
        keep = pl != DROP
        u, pl = u[keep], pl[keep]
        # Slot in seed A: rank among A's and shared positions.  A position of B takes the slot of
        # the position of its partner unit with the same occurrence index.
        in_a = pl != B
        slot_a = np.cumsum(in_a) - 1
        occ = _occurrence(u)
        key_slot = {(int(uu), int(o)): int(s) for uu, o, s, m in zip(u, occ, slot_a, in_a) if m}
        try:
            s = np.array([slot_a[i] if in_a[i] else key_slot[(int(partner[u[i]]), int(occ[i]))]
                          for i in range(len(u))], dtype=np.int64)
        except KeyError:
            raise GrowError(f"'{name}': the two halves of its channel group do not have the same "
                            f"layout along dim {d}, so seed B cannot share seed A's architecture") from None
        if len(u) != tensor.shape[d] or (len(s) and s.max() + 1 != int(in_a.sum())):
            raise GrowError(f"'{name}' dim {d}: {tensor.shape[d]} positions after growth, the seeds "
                            f"have {int(in_a.sum())}; halves are not the same size")
        lab.append(pl)
        slot.append(s)
    return lab, slot


def _units_along(name, ps, d):
    if d in ps.dims:
        return ps.dims[d]
    if ps.dense is None:
        return None
    if (ps.dense == ps.dense.take([0], axis=d)).all():  # the units do not change along d
        return None
    other = tuple(i for i in range(ps.dense.ndim) if i != d)
    first = ps.dense.min(axis=other) if other else ps.dense
    last = ps.dense.max(axis=other) if other else ps.dense
    if (first != last).any():
        raise GrowError(f"'{name}': units vary along more than one dim at once; it cannot be widened")
    return first


def _occurrence(units: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same unit."""
    order = np.argsort(units, kind="stable")
    su = units[order]
    starts = np.r_[0, np.flatnonzero(np.diff(su)) + 1]
    run = np.arange(len(su)) - np.repeat(starts, np.diff(np.r_[starts, len(su)]))
    occ = np.empty_like(run)
    occ[order] = run
    return occ


def _writes_output(ps, space: Space) -> bool:
    groups = space["channels"].groups
    pinned = np.concatenate([g.pinned for g in groups]) if groups else np.zeros(0, bool)
    for units in list(ps.dims.values()) + ([ps.dense.ravel()] if ps.dense is not None else []):
        u = units[units >= 0]
        if len(u) and pinned[u].any():
            return True
    return False


# -- values ------------------------------------------------------------------------------------

def _assemble(name, like, lab, slot, sa, sb, fill, *, writes_output):
    a = sa.get(name)
    if a is None:
        raise GrowError(f"seed A has no tensor {name!r}")
    idx = np.ix_(*slot)
    has_a = np.zeros(like.shape, dtype=bool)
    has_b = np.zeros(like.shape, dtype=bool)
    for d, pl in enumerate(lab):
        shape = [1] * like.dim()
        shape[d] = len(pl)
        has_a |= (pl == A).reshape(shape)
        has_b |= (pl == B).reshape(shape)
    b = sb.get(name) if sb is not None else None
    if sb is not None and (b is None or b.shape != a.shape):
        raise GrowError(f"seeds A and B differ at {name!r}")

    def spread(t):
        return t[tuple(torch.as_tensor(i) for i in idx)]

    def block(kind):
        got = fill(name, kind, a) if fill is not None else torch.zeros_like(a)
        if got.shape != a.shape:
            raise GrowError(f"fill returned {tuple(got.shape)} for {name!r} block {kind}, want {tuple(a.shape)}")
        return spread(got)

    out = spread(a).clone()
    only_b = has_b & ~has_a
    if only_b.any():
        out[torch.as_tensor(only_b)] = spread(b if b is not None else block("b"))[torch.as_tensor(only_b)]
    shared = ~has_a & ~has_b
    if b is not None and shared.any() and a.is_floating_point():
        both = spread(a + b if writes_output else (a + b) / 2)
        out[torch.as_tensor(shared)] = both[torch.as_tensor(shared)]
    mixed = has_a & has_b
    if mixed.any():
        row = _row_labels(lab, like.dim())
        for kind, rows in (("ab", A), ("ba", B)):
            sel = mixed & row.__eq__(rows)
            if sel.any():
                out[torch.as_tensor(sel)] = block(kind)[torch.as_tensor(sel)]
    return out


def _row_labels(lab, ndim):
    """The half an element writes: the label of its first dim that lies in a half (dim 0 is the
    output of convs and linears)."""
    row = np.zeros([len(pl) for pl in lab], dtype=np.int64)
    for d in reversed(range(ndim)):
        shape = [1] * ndim
        shape[d] = len(lab[d])
        pl = lab[d].reshape(shape)
        row = np.where((pl == A) | (pl == B), pl, row)
    return row


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v.detach() for k, v in model.named_parameters()}
    out.update({k: v.detach() for k, v in model.named_buffers()})
    return out


def _set(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    module = model.get_submodule(mod_name)
    old = module._parameters.get(attr)
    if old is not None:
        module._parameters[attr] = nn.Parameter(value.to(old.dtype).clone(), requires_grad=old.requires_grad)
    else:
        module._buffers[attr] = value.to(module._buffers[attr].dtype).clone()


def shared_groups(space: Space, halves: Halves) -> dict[str, str]:
    """Channel groups both seeds hold whole although they are not the class outputs (frozen groups
    included), with the reason: where they exist, the grown model cannot be the sum of its
    seeds (both seeds' layers write into one set of channels)."""
    out = {}
    normalised = normalised_groups(space)
    for g in space["channels"].groups:
        if g.name in halves.a or g.frozen == REACHES_OUTPUT:
            continue
        out[g.name] = g.frozen or normalised.get(g.name) or "fewer than two free units"
    return out


def normalised_groups(space: Space) -> dict[str, str]:
    """Groups some normalisation computes statistics over (LayerNorm, GroupNorm, RMSNorm, the
    inputs of a standardised weight), with the reason: pruning them is exact, growing them is not
    (the statistics would mix the seeds)."""
    ch = space["channels"]
    group_of = ch.unit_group()
    out = {}
    sites = [(s.name, s.kind, s.units) for s in ch.norm_sites]
    sites += [(s.name, "weight standardisation", s.units) for s in ch.gate_sites
              if s.name in ch.standardised and s.dim != 0]  # rows are normalised over their inputs
    for name, kind, units in sites:
        for gi in np.unique(group_of[units[units >= 0]]).tolist():
            out.setdefault(ch.groups[gi].name, f"normalised over its channels by {kind} ({name})")
    return out


def growth_gap(target: nn.Module, space: Space, halves: Halves, seed_a: nn.Module, seed_b: nn.Module,
               x: torch.Tensor) -> float:
    """Max relative difference between the grown model's output (zero off-diagonal blocks) and
    the sum of the seeds' outputs, in eval mode: 0 up to rounding where growth is exact."""
    grown = grow_model(target, space, halves, seed_a, seed_b).eval()
    with torch.no_grad():
        want = _logits(copy.deepcopy(seed_a).eval()(x)) + _logits(copy.deepcopy(seed_b).eval()(x))
        got = _logits(grown(x))
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def first_divergence(grown: nn.Module, seed_a: nn.Module, seed_b: nn.Module, x: torch.Tensor,
                     tol: float = 1e-4) -> str | None:
    """Where growth stops being exact: the first module, in the order modules finish, whose output
    in ``grown`` is neither the seeds' outputs side by side (the same values in any layout, compared
    by power sums) nor their elementwise sum; ``None`` if there is none. Eval mode, no gradients."""
    sig_a, sig_b = _signatures(seed_a, x), _signatures(seed_b, x)
    found = []

    def check(name, module, _args, out):
        y, a, b = _first_tensor(out), sig_a.get(name), sig_b.get(name)
        if found or y is None or a is None or b is None:
            return
        if y.numel() == a[0] + b[0]:
            s = _power_sums(y)
            ok = all(abs(s[k] - a[1][k] - b[1][k]) <= tol * (s[k + 3] + a[1][k + 3] + b[1][k + 3]) for k in range(3))
        elif a[2] is not None and b[2] is not None and y.shape == a[2].shape == b[2].shape:
            want = a[2] + b[2]
            ok = float((y.double() - want).abs().max()) <= tol * float(want.abs().max().clamp_min(1e-12))
        else:
            return
        if not ok:
            found.append(f"'{name}' ({type(module).__name__}) gives neither the seeds' outputs side by "
                         "side nor their sum")

    _run_hooked(grown, x, check)
    return found[0] if found else None


def _signatures(model: nn.Module, x: torch.Tensor, keep: int = 1 << 20) -> dict[str, tuple]:
    """Per module (first call): (numel, power sums, the output itself when at most ``keep`` elements)."""
    sigs = {}

    def record(name, _module, _args, out):
        y = _first_tensor(out)
        if y is not None and name not in sigs:
            sigs[name] = (y.numel(), _power_sums(y), y.double() if y.numel() <= keep else None)

    _run_hooked(model, x, record)
    return sigs


def _run_hooked(model: nn.Module, x: torch.Tensor, hook) -> None:
    """One eval-mode forward without gradients, ``hook(name, module, args, output)`` on every submodule."""
    handles = [m.register_forward_hook(partial(hook, n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()


def _power_sums(y: torch.Tensor) -> tuple[float, ...]:
    v = y.detach().double().flatten()
    return tuple(float((v ** k).sum()) for k in (1, 2, 3)) + tuple(float((v.abs() ** k).sum()) for k in (1, 2, 3))


def _first_tensor(out):
    y = _logits(out)
    return y if isinstance(y, torch.Tensor) and y.is_floating_point() else None


def _logits(out):
    from ..gates.outputs import first_output

    return first_output(out)
