"""``Decision``: which units of every channel group and which residual blocks are kept."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import distinct_figures
from .space import Space


@dataclass
class Decision:
    """Plain data: kept unit indices per group (groups not listed keep everything) and removed
    blocks.  Serialises to JSON.

    Example:
        >>> d = Decision(groups={"layer1.0.conv1": [0, 2, 5]}, removed_blocks=["layer2.1#0"])
        >>> Decision.from_json(d.to_json()) == d
        True
    """

    groups: dict[str, list[int]] = field(default_factory=dict)
    removed_blocks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"groups": {k: [int(i) for i in v] for k, v in self.groups.items()},
                "removed_blocks": list(self.removed_blocks)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Decision":
        unknown = set(d) - {"groups", "removed_blocks"}
        if unknown:
            raise ValueError(f"decision has unknown keys {sorted(unknown)}")
        return cls({k: [int(i) for i in v] for k, v in d.get("groups", {}).items()},
                   [str(b) for b in d.get("removed_blocks", [])])

    @classmethod
    def from_json(cls, text: str) -> "Decision":
        return cls.from_dict(json.loads(text))

    # -- views over a space ----------------------------------------------------------------------
    def validate(self, space: Space) -> None:
        """Raise ValueError if the decision names unknown groups/blocks or removes what cannot go."""
        names = {g.name: g for g in space.groups}
        for name, kept in self.groups.items():
            g = names.get(name)
            if g is None:
                raise ValueError(f"decision names unknown channel group {name!r}")
            kept_set = set(kept)
            if not kept_set:
                raise ValueError(f"decision keeps no unit of group {name!r}")
            if min(kept_set) < 0 or max(kept_set) >= g.size:
                raise ValueError(f"group {name!r} has {g.size} units; decision keeps {max(kept_set)}")
            removed = set(range(g.size)) - kept_set
            if removed and g.frozen:
                raise ValueError(f"group {name!r} is frozen ({g.frozen})")
            if removed and g.pinned[list(removed)].any():
                raise ValueError(f"group {name!r}: decision removes units that reach the model output")
        blocks = {b.name for b in space.blocks}
        for b in self.removed_blocks:
            if b not in blocks:
                raise ValueError(f"decision names unknown residual block {b!r}")

    def keep_vector(self, space: Space) -> torch.Tensor:
        """1/0 per flat unit of ``space``."""
        keep = torch.ones(space.num_units, dtype=torch.double)
        for g in space.groups:
            kept = self.groups.get(g.name)
            if kept is not None:
                mask = torch.zeros(g.size, dtype=torch.double)
                mask[list(kept)] = 1.0
                keep[g.offset:g.offset + g.size] = mask
        return keep

    def block_vector(self, space: Space) -> torch.Tensor:
        removed = set(self.removed_blocks)
        return torch.tensor([0.0 if b.name in removed else 1.0 for b in space.blocks], dtype=torch.double)

    def flops(self, space: Space) -> float:
        return float(space.cost.flops(self.keep_vector(space), self.block_vector(space)))

    def params(self, space: Space) -> float:
        return float(space.cost.params(self.keep_vector(space), self.block_vector(space)))

    def rounded(self, space: Space, multiple: int) -> "Decision":
        """Grow every changed group's kept count up to a multiple of ``multiple`` channels (of the
        group's first producer), adding back the lowest-numbered removed units first."""
        keep = self.keep_vector(space).numpy() > 0.5
        groups = {}
        for name in self.groups:
            g = space.group(name)
            round_up_group(keep, g, multiple)
            groups[name] = np.flatnonzero(keep[g.offset:g.offset + g.size]).tolist()
        return Decision(groups, list(self.removed_blocks))


def round_up_group(keep: np.ndarray, group, multiple: int, scores: np.ndarray | None = None) -> None:
    """In place on the space-wide 0/1 ``keep`` mask: grow ``group``'s kept count up to a multiple
    of ``multiple`` channels, adding back its best-scoring removed units (the lowest-numbered
    ones when ``scores`` is None)."""
    sl = keep[group.offset:group.offset + group.size]
    n = int(sl.sum())
    per_unit = int(group.channels[0]) if len(group.channels) else 1
    want = min(group.size, math.ceil(n * per_unit / multiple) * multiple // max(per_unit, 1))
    if want <= n:
        return
    removed = np.flatnonzero(~sl)
    if scores is not None:
        removed = removed[np.argsort(-scores[group.offset + removed], kind="stable")]
    sl[removed[: want - n]] = True


def random_decision(space: Space, ratio: float, *, blocks: bool = True, seed: int = 0,
                    block_fraction: float = 0.25) -> Decision:
    """A random decision that keeps about ``ratio`` of each prunable group (at least one unit)
    and, when ``blocks``, removes about ``block_fraction`` of the residual blocks."""
    rng = np.random.default_rng(seed)
    groups = {}
    for g in space.groups:
        if not g.prunable:
            continue
        free = np.flatnonzero(~g.pinned)
        n_keep = max(1, int(round(len(free) * ratio)))
        kept = set(rng.choice(free, size=min(n_keep, len(free)), replace=False).tolist())
        kept |= set(np.flatnonzero(g.pinned).tolist())
        groups[g.name] = sorted(kept)
    removed = []
    if blocks and space.blocks:
        n = int(round(len(space.blocks) * block_fraction))
        removed = sorted(rng.choice([b.name for b in space.blocks], size=n, replace=False).tolist())
    return Decision(groups, removed)


def decision_for_budget(space: Space, target: float, *, blocks: bool = True, seed: int = 0,
                        what: str = "flops") -> Decision:
    """A random decision whose cost is at most ``target`` times the full cost (bisection on the
    kept ratio; a quarter of the blocks go, more when channels alone cannot reach the budget).
    Raises ValueError if even the smallest decision is above the budget."""
    full = float(space.cost.flops() if what == "flops" else space.cost.params())
    measure = (lambda d: d.flops(space)) if what == "flops" else (lambda d: d.params(space))
    fractions = (0.25, 0.5, 0.75) if blocks and space.blocks else (0.0,)
    smallest = 1.0
    for fraction in fractions:
        def make(ratio: float) -> Decision:
            return random_decision(space, ratio, blocks=fraction > 0, seed=seed, block_fraction=fraction)

        floor = measure(make(0.0))
        smallest = min(smallest, floor / full)
        if floor > target * full:
            continue
        lo, hi, best = 0.0, 1.0, make(0.0)
        for _ in range(20):
            mid = (lo + hi) / 2
            d = make(mid)
            if measure(d) <= target * full:
                best, lo = d, mid
            else:
                hi = mid
        return best
    want, floor = distinct_figures(target, smallest)
    raise ValueError(f"budget {want} of the {what} cannot be met: the smallest decision keeps {floor}")
