"""Plain records the tracer emits; :mod:`compressor.space.space` turns them into groups."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ParamDim:
    """Positions along ``dim`` of parameter/buffer ``name`` carry the channel atoms ``atoms``."""

    name: str
    dim: int
    atoms: np.ndarray


@dataclass
class DenseParam:
    """Every element of a free-standing parameter carries its own atom (``atoms`` has its shape)."""

    name: str
    atoms: np.ndarray


@dataclass
class GateSite:
    """A consumer: zeroing ``name`` along ``dim`` at positions of a unit removes that unit's input."""

    name: str
    dim: int
    atoms: np.ndarray


@dataclass
class NormSite:
    """A normalisation over channels whose affine weight is ``name``: ``kind`` is
    ``layer_norm``/``group_norm``/``rms_norm``; ``atoms`` gives the channel of every weight position;
    ``groups`` is GroupNorm's group count (1 otherwise).  The gated model computes its statistics
    over kept channels only (:mod:`compressor.gates.norms`), which is what the sliced model does."""

    name: str
    kind: str
    atoms: np.ndarray
    groups: int = 1


@dataclass
class CostTerm:
    """``coef * prod(sum of keep(atom) over each factor)``; an atom of -1 always counts as kept.

    Factors are stored compressed as ``(atoms, counts)`` pairs.  ``op_index`` is the traced op
    that costs this.
    """

    op: str
    module: str
    coef: float
    factors: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    op_index: int = -1
    weight: str | None = None  # the parameter the op reads (conv/linear weight)


@dataclass
class Producer:
    """A tensor dimension whose channels come into being at one op (conv/linear outputs, free params)."""

    name: str
    atoms: np.ndarray


@dataclass
class Merge:
    """An op forced channels of several units together; kept to explain frozen groups."""

    op: str
    module: str
    atoms: np.ndarray


@dataclass
class ReshapeSite:
    """A view/reshape whose output spreads channels over ``varying`` dims (heads, shuffles).

    ``atoms`` holds the output labels with every other dim collapsed to size 1.  The kept part
    must stay a box for the reshape to be valid after slicing; module attributes equal to a
    changed size (``num_heads``...) are refreshed from it.
    """

    module: str
    shape: tuple
    varying: list[int]
    atoms: np.ndarray
    module_type: str = ""


@dataclass
class SplitSite:
    """A split into explicit sizes along a channel dim; ``atoms`` has one atom per position.
    Each part keeps its first position (so no part can vanish), and a list attribute of the
    module running it that held the old sizes gets the new ones when slicing."""

    module: str
    sizes: list[int]
    atoms: np.ndarray


@dataclass
class ParamOp:
    """An op that reads a named weight (a convolution): what kinds of choice over the op itself
    (its kernel window, its type) need to know.  ``attrs`` holds the op's arguments (``stride``,
    ``padding``, ``dilation``, ``groups``, ``transposed``); shapes are the traced ones."""

    op: str
    weight: str
    module: str
    op_index: int
    weight_shape: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    attrs: dict = field(default_factory=dict)
