"""Label tensors stored once per dim they vary along.

A label holds one atom per element of its tensor, but it mostly varies along one or two dims (the
channels of a feature map, the heads of an attention map): along the others it repeats.  The
tracer stores every label *compact*: an expanded view (stride 0) along each dim it is constant
along, so a label costs the size of its channel layout, not of its tensor.  The helpers here read
a compact label without materialising it.
"""
from __future__ import annotations

import numpy as np
import torch

_SMALL = 256  # labels up to this many elements are stored as they are


def compact(lab: torch.Tensor) -> torch.Tensor:
    """``lab`` (same shape and values) stored once along every dim it is constant along; a view
    into a larger label is copied (it would keep all of that one alive)."""
    if lab.untyped_storage().nbytes() > lab.numel() * lab.element_size() and not _is_expanded(lab):
        lab = lab.contiguous()
    if lab.numel() <= _SMALL:
        return lab
    core = lab
    for d in range(lab.dim()):
        if core.shape[d] <= 1:
            continue
        first = core.narrow(d, 0, 1)
        if core.stride(d) == 0:
            core = first
            continue
        origin = [0] * core.dim()
        probe = list(origin)
        probe[d] = core.shape[d] - 1
        if core[tuple(origin)] == core[tuple(probe)] and torch.equal(core, first.expand_as(core)):
            core = first
    if core.numel() == lab.numel():
        return lab
    return core.contiguous().expand(tuple(lab.shape))


def _is_expanded(lab: torch.Tensor) -> bool:
    return any(st == 0 and n > 1 for st, n in zip(lab.stride(), lab.shape))


def narrow_repeats(lab: torch.Tensor, keep: tuple[int, ...] = ()) -> torch.Tensor:
    """``lab`` narrowed to size 1 along every dim it repeats along (stride 0), except ``keep``."""
    for d in range(lab.dim()):
        if d not in keep and lab.stride(d) == 0 and lab.shape[d] > 1:
            lab = lab.narrow(d, 0, 1)
    return lab


def core(lab: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The stored part of ``lab`` (its stride-0 dims narrowed to size 1) and how many elements of
    ``lab`` each of its elements stands for."""
    small = narrow_repeats(lab)
    return small, lab.numel() // max(small.numel(), 1)


def narrow_shared(labs: list[torch.Tensor]) -> list[torch.Tensor]:
    """``labs`` (one shape) narrowed to size 1 along every dim all of them repeat along (stride 0):
    an elementwise result computed on these repeats along those dims too."""
    if not labs:
        return labs
    dims = [d for d in range(labs[0].dim()) if labs[0].shape[d] > 1
            and all(lab.stride(d) == 0 for lab in labs)]
    out = []
    for lab in labs:
        for d in dims:
            lab = lab.narrow(d, 0, 1)
        out.append(lab)
    return out


def flat_atoms(lab: torch.Tensor) -> np.ndarray:
    """Every atom ``lab`` holds, each position of its stored part once (1-D, may repeat)."""
    return core(lab)[0].reshape(-1).numpy()


def atom_counts(lab: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The distinct atoms of ``lab`` (-1 included) and how many elements hold each."""
    small, mult = core(lab)
    atoms, counts = np.unique(small.reshape(-1).numpy(), return_counts=True)
    return atoms.astype(np.int64), counts.astype(np.float64) * mult


def unlabelled(shape) -> torch.Tensor:
    """The label of a tensor that carries no prunable channel: -1 everywhere, stored once."""
    return torch.full((), -1, dtype=torch.int64).expand(tuple(shape))


def filled(shape, atom: int) -> torch.Tensor:
    """Every element of ``shape`` holds ``atom``, stored once."""
    return torch.full((), atom, dtype=torch.int64).expand(tuple(shape))


def has_atoms(lab: torch.Tensor) -> bool:
    """Whether any element of ``lab`` holds a prunable channel."""
    return bool((core(lab)[0] >= 0).any())
