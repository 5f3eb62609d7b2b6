"""``decide``: the largest decision that keeps the best-scoring slots of any kinds within a budget.

Every decision builder ends here: ``prune`` ranks units and kernel rings by importance, ``scs``
by its gate logits, the checks by random scores.  One bisection over the scores of every kind
given finds the fewest lowest-scoring slots whose removal meets the budget (each kind settles the
result: a unit stays in every group, kernel windows stay nested, widths are rounded up to
``round_to`` channels, so the settled decision is the one that meets the budget).  The budget left
over is then filled back by score per unit of cost: the removed slots that are worth the most
for what they cost come back while the budget allows.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from .decision import Decision
from .errors import distinct_figures, figure_at_least
from .space import Space
from .space.kinds import get_kind

Settle = Callable[[dict[str, np.ndarray]], None]


class BudgetError(ValueError):
    """The budget cannot be met by any decision over the space."""


class _Fit:
    """One budget fit: flat candidate order over the scored kinds, settling and costing keeps."""

    def __init__(self, space: Space, scores: Mapping[str, np.ndarray], what: str, round_to: int | None,
                 fixed: Decision, settle: Settle | None) -> None:
        self.space, self.what, self.round_to, self.extra = space, what, round_to, settle
        self.scores = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
        self.base = {k: fixed.keep(space)[k] > 0.5 for k in space}
        kinds, slots, values = [], [], []
        for kind, s in self.scores.items():
            free = np.flatnonzero(space[kind].free() & self.base[kind])
            kinds += [kind] * len(free)
            slots.append(free)
            values.append(s[free])
        order = np.argsort(np.concatenate(values) if values else np.zeros(0), kind="stable")
        self.kinds = np.asarray(kinds)[order] if kinds else np.zeros(0, dtype=str)
        self.slots = np.concatenate(slots)[order] if slots else np.zeros(0, dtype=np.int64)

    def keep_after(self, k: int) -> dict[str, np.ndarray]:
        """Everything but the ``k`` lowest-scoring candidates, settled."""
        keep = {kind: v.copy() for kind, v in self.base.items()}
        for kind in self.scores:
            keep[kind][self.slots[:k][self.kinds[:k] == kind]] = False
        return self.settled(keep)

    def settled(self, keep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for kind in self.scores:
            get_kind(kind).settle(self.space[kind], keep[kind], self.scores[kind], self.round_to)
        if self.extra is not None:
            self.extra(keep)
        return keep

    def values(self, keep: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v.astype(np.float64)) for k, v in keep.items()}

    def fraction(self, keep: dict[str, np.ndarray]) -> float:
        return float(self.space.cost.fraction(self.what, self.values(keep)))

    def marginal(self, keep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """d fraction / d slot value at ``keep``: a lower bound of what turning a slot on adds
        (every term is a product of sums with non-negative coefficients)."""
        values = {k: v.requires_grad_(True) for k, v in self.values(keep).items()}
        self.space.cost.fraction(self.what, values).backward()
        return {k: v.grad.numpy() for k, v in values.items()}


def decide(space: Space, scores: Mapping[str, np.ndarray], target: float, *, what: str = "flops",
           round_to: int | None = None, fixed: Decision | None = None, fill: bool = True,
           settle: Settle | None = None) -> Decision:
    """Remove the lowest-scoring free slots of the kinds in ``scores`` until the cost is at most
    ``target`` of the full model's, then fill what is left of the budget by score per unit of cost.

    Args:
        scores: per kind, one score per slot (higher = more worth keeping); kinds left out keep
            ``fixed``'s payload, or everything.
        target: kept fraction of FLOPs or params, in (0, 1].
        fixed: payloads of kinds decided elsewhere (blocks a method removed).
        settle: an extra step making a keep valid (in place), after the kinds' own.

    Raises:
        BudgetError: when even removing every candidate leaves the cost above the budget; the
            message gives both figures and the smallest reachable one.
    """
    if not 0 < target <= 1:
        raise BudgetError(f"budget must be a fraction in (0, 1), got {target}")
    one_of = [k for k in scores if get_kind(k).one_of]
    if one_of:
        raise ValueError(f"decide removes slots; {one_of[0]} keeps one option per site: use choose_options")
    fixed = fixed or Decision()
    fit = _Fit(space, scores, what, round_to, fixed, settle)
    n = len(fit.slots)
    smallest = fit.fraction(fit.keep_after(n))
    if smallest > target:
        want, floor = distinct_figures(target, smallest)
        raise BudgetError(f"budget {want} of the {what} cannot be met: the smallest decision keeps {floor} "
                          f"(everything removable removed; frozen sites and pinned outputs carry the rest): "
                          f"ask for at least {figure_at_least(smallest, floor)}")
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if fit.fraction(fit.keep_after(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    keep = fit.keep_after(lo)
    if fill:
        keep = _fill(fit, keep, target)
    payloads = {k: v for k, v in fixed.items() if k not in scores}
    return Decision({**payloads, **Decision.from_keep(space, {k: keep[k] for k in scores})})


def smallest_decision(space: Space, kinds: list[str], *, fixed: Decision | None = None,
                      round_to: int | None = None) -> Decision:
    """Every free slot of ``kinds`` removed and the result settled (the floor :func:`decide` refuses
    budgets below); other kinds keep ``fixed``'s payload, or everything."""
    fixed = fixed or Decision()
    fit = _Fit(space, {k: np.zeros(space[k].size) for k in kinds}, "flops", round_to, fixed, None)
    keep = fit.keep_after(len(fit.slots))
    payloads = {k: v for k, v in fixed.items() if k not in kinds}
    return Decision({**payloads, **Decision.from_keep(space, {k: keep[k] for k in kinds})})


def _fill(fit: _Fit, keep: dict[str, np.ndarray], target: float, max_tries: int = 4000) -> dict[str, np.ndarray]:
    """Turn removed candidates back on, best score per unit of marginal cost first, while the
    settled result stays within ``target`` (each tried against the exact cost)."""
    cost = fit.fraction(keep)
    grad = fit.marginal(keep)
    removed = [(k, int(s)) for k, s in zip(fit.kinds, fit.slots) if not keep[k][s]]
    ratio = [fit.scores[k][s] / max(grad[k][s], 1e-12) for k, s in removed]
    tries = 0
    for i in np.argsort(-np.asarray(ratio), kind="stable"):
        kind, slot = removed[i]
        if keep[kind][slot] or fit.scores[kind][slot] <= 0:
            continue
        trial = {k: v.copy() for k, v in keep.items()}
        trial[kind][slot] = True
        trial = fit.settled(trial)
        bound = cost + sum(float(grad[k][trial[k] & ~keep[k]].sum()) for k in trial)
        if bound > target:
            continue  # the true cost is at least the bound
        tries += 1
        new = fit.fraction(trial)
        if new <= target:
            keep, cost = trial, new
            grad = fit.marginal(keep)
        if tries >= max_tries:
            break
    return keep


def decision_for_budget(space: Space, target: float, *, blocks: bool = True, seed: int = 0,
                        what: str = "flops") -> Decision:
    """A random decision whose cost is at most ``target`` of the full cost: random scores over
    every kind but depth, with a quarter of the residual blocks removed (half, then three quarters,
    when the rest alone cannot reach the budget).  Raises :class:`BudgetError` if nothing can."""
    rng = np.random.default_rng(seed)
    scores = {k: rng.random(space[k].size) for k in space if k != "depth" and not get_kind(k).one_of}
    names = space["depth"].items() if blocks and "depth" in space else []
    order = rng.permutation(len(names))
    error: BudgetError | None = None
    for fraction in ((0.25, 0.5, 0.75) if names else (0.0,)):
        removed = sorted(names[i] for i in order[:int(round(len(names) * fraction))])
        try:
            return decide(space, scores, target, what=what, fixed=Decision({"depth": removed}), fill=False)
        except BudgetError as exc:
            error = exc
    raise error  # type: ignore[misc]


def choose_options(space: Space, kind: str, scores: np.ndarray, target: float, *, what: str = "flops",
                   fixed: Decision | None = None, at_least: float | None = None) -> Decision:
    """One option per site of a one-of-N ``kind`` (``op``) maximising the summed ``scores`` (one
    per slot, higher = better) with the cost at most ``target`` of the full model's (and, where
    one can, at least ``at_least``), the other kinds at ``fixed``: an integer linear program
    solved exactly by scipy's ``milp`` (HiGHS).

    The cost is linear in the kind's slots once the other kinds are fixed (each term carries at
    most one of them), so its coefficients are the cost's gradient there.  Raises
    :class:`BudgetError` when even the cheapest option everywhere misses the budget."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    fixed = fixed or Decision()
    choices, kd = space[kind], get_kind(kind)
    values = {k: v.clone() for k, v in fixed.values(space).items()}
    values[kind] = values[kind].clone().requires_grad_(True)
    cost = space.cost.fraction(what, values)
    cost.backward()
    coef = values[kind].grad.numpy()
    constant = float(cost.detach()) - float(coef @ values[kind].detach().numpy())
    sites = [s.slots for s in choices.sites]
    one_each = np.zeros((len(sites), choices.size))
    for i, slots in enumerate(sites):
        one_each[i, slots] = 1
    free = choices.free()
    bounds = Bounds(np.zeros(choices.size), np.where(free, 1.0, kd.keep(choices, fixed.get(kind))))
    smallest = constant + sum(coef[s].min() if free[s].all() else coef[s] @ bounds.ub[s] for s in sites)
    if smallest > target:
        want, floor = distinct_figures(target, smallest)
        raise BudgetError(f"budget {want} of the {what} cannot be met: the cheapest option at every {kind} site "
                          f"keeps {floor}: ask for at least {figure_at_least(smallest, floor)}")
    low = -np.inf if at_least is None else at_least - constant
    rows = [LinearConstraint(one_each, 1, 1)]
    own = choices.linear_rows() if hasattr(choices, "linear_rows") else []  # the kind's (DARTS: 2 edges a node)
    if own:
        a, b = zip(*own)
        rows.append(LinearConstraint(np.stack(a), np.asarray(b), np.asarray(b)))
    solve = lambda lo: milp(-np.asarray(scores, dtype=np.float64), integrality=np.ones(choices.size),  # noqa: E731
                            bounds=bounds, constraints=[*rows, LinearConstraint(coef[None], lo, target - constant)])
    result = solve(low)
    if result.x is None and at_least is not None:  # nothing in the band: the best under the budget
        result = solve(-np.inf)
    if result.x is None:
        raise BudgetError(f"budget {target:g} of the {what}: the solver found no choice ({result.message})")
    return Decision({**fixed, kind: kd.payload(choices, np.round(result.x))})
