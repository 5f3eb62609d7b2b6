"""``fit_to_budget``: the largest decision that keeps the best-scoring units within a budget.

Every method ends here: ``prune`` ranks units by importance, ``scs`` by its gate logits.  Widths
are rounded up to multiples of ``round_to`` channels *inside* the search, so the rounded
decision is the one that meets the budget.
"""
from __future__ import annotations

import numpy as np
import torch

from .decision import Decision, round_up_group
from .errors import distinct_figures, figure_at_least
from .space import Space


class BudgetError(ValueError):
    """The budget cannot be met by any decision over the space."""


def normalise_by_group(space: Space, scores: np.ndarray) -> np.ndarray:
    """``scores`` divided by the mean score of each unit's group (a group whose mean is not
    positive is left as it is): scores of different layers become comparable."""
    s = np.asarray(scores, dtype=np.float64).copy()
    for g in space.groups:
        sl = slice(g.offset, g.offset + g.size)
        mean = s[sl].mean()
        if mean > 0:
            s[sl] /= mean
    return s


def fit_to_budget(space: Space, scores: np.ndarray, target: float, *, what: str = "flops",
                  round_to: int | None = None, removed_blocks: list[str] | tuple[str, ...] = (),
                  normalize: bool = False) -> Decision:
    """Remove the lowest-scoring removable units until the cost is at most ``target`` of the full
    model's (with ``removed_blocks`` gone).  Every prunable group keeps at least its best unit.

    Args:
        scores: one score per flat unit of ``space`` (higher = more worth keeping).
        target: kept fraction of FLOPs or params, in (0, 1).
        normalize: divide scores by their group's mean first (scores of different layers are
            then comparable, as in magnitude pruning).

    Raises:
        BudgetError: when even removing every removable unit leaves the cost above the budget.
    """
    if not 0 < target < 1:
        raise BudgetError(f"budget must be a fraction in (0, 1), got {target}")
    cost = space.cost.flops if what == "flops" else space.cost.params
    blocks = Decision({}, list(removed_blocks)).block_vector(space)
    full = float(cost())
    s = np.asarray(scores, dtype=np.float64).copy()
    removable = space.prunable_mask()
    groups = [g for g in space.groups if g.prunable and removable[g.offset:g.offset + g.size].any()]
    if normalize:
        s = normalise_by_group(space, s)
    for g in groups:
        sl = slice(g.offset, g.offset + g.size)
        free = np.flatnonzero(removable[sl])
        removable[g.offset + free[np.argmax(s[sl][free])]] = False  # the best unit always stays
    order = np.flatnonzero(removable)[np.argsort(s[removable], kind="stable")]

    def keep_after(k: int) -> np.ndarray:
        keep = np.ones(space.num_units, dtype=bool)
        keep[order[:k]] = False
        if round_to and round_to > 1:
            for g in groups:
                round_up_group(keep, g, round_to, s)
        return keep

    def fraction(keep: np.ndarray) -> float:
        return float(cost(torch.from_numpy(keep.astype(np.float64)), blocks)) / full

    smallest = fraction(keep_after(len(order)))
    if smallest > target:
        want, floor = distinct_figures(target, smallest)
        raise BudgetError(f"budget {want} of the {what} cannot be met: the smallest decision keeps {floor} "
                          f"(every removable channel removed; frozen groups and pinned outputs carry the rest): "
                          f"ask for at least {figure_at_least(smallest, floor)}")
    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if fraction(keep_after(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    keep = keep_after(lo)
    kept = {g.name: np.flatnonzero(keep[g.offset:g.offset + g.size]).tolist()
            for g in space.groups if g.prunable and not keep[g.offset:g.offset + g.size].all()}
    return Decision(kept, sorted(removed_blocks))
