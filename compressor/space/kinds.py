"""Kinds of choice: the plug-in contract every searchable dimension of a model follows.

A *kind* (``channels``, ``depth``, ``kernel``...) is one registered :class:`ChoiceKind`.  It says
how its sites are found in a trace, how it changes the cost terms, how its gate acts in the gated
model, how the dense model is cut, what its part of a decision looks like in JSON, and how its
slots are scored and settled when a budget is fitted.  A :class:`~compressor.space.Space` holds one
immutable :class:`ChoiceSet` per kind; gate values, costs and decisions are maps keyed by kind, so
code between the frontend and surgery never names a kind.

Every kind exposes its choice as *slots*: one value per slot, 1 = kept, 0 = removed (a soft value
between is a probability or a gate).  Register a new kind with :func:`register_kind`; docs/design.md
walks through a complete one.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .cost import Term
    from .space import Space, TraceFindings

Payload = Any  # a kind's part of a Decision: plain JSON data


class ChoiceSet:
    """The sites of one kind in one model.  Subclasses are frozen dataclasses: checks and rules
    return a new set (:meth:`replace`).  ``size`` is the number of slots."""

    @property
    def size(self) -> int:
        raise NotImplementedError

    def items(self) -> list[str]:
        """Names of the sites (what rules match and validation freezes)."""
        return []

    def free(self) -> np.ndarray:
        """True for every slot a decision may set to 0."""
        return np.zeros(self.size, dtype=bool)

    def replace(self, **changes) -> "ChoiceSet":
        return dataclasses.replace(self, **changes)


class ChoiceKind:
    """One kind of choice.  Subclasses set ``name`` and implement the methods below; the defaults
    are what a kind without that concern does (no gates, no surgery, no cost change...)."""

    name: ClassVar[str] = ""
    attach_order: ClassVar[int] = 50  # gates attach in this order (graph rewrites before weight masks)
    weight_scored: ClassVar[bool] = True  # importance of the weights ranks its slots (else a loss does: depth)
    rule_keys: ClassVar[tuple[str, ...]] = ()  # what a recipe rule may set for this kind
    one_of: ClassVar[bool] = False  # a site keeps exactly one of its slots (op), instead of any subset
    cut_order: ClassVar[int] = 50  # surgery runs in this order (weights before graph rewrites)

    # -- finding -----------------------------------------------------------------------------------
    def find(self, found: "TraceFindings") -> ChoiceSet:
        """The kind's sites in a traced model."""
        raise NotImplementedError

    # -- cost ----------------------------------------------------------------------------------------
    def refine_terms(self, choices: ChoiceSet, terms: list["Term"], what: str) -> list["Term"]:
        """The ``what`` ("flops" or "params") cost terms with this kind's slots worked in (factors,
        scales, liveness, terms of its own)."""
        return terms

    # -- decisions -----------------------------------------------------------------------------------
    def keep(self, choices: ChoiceSet, payload: Payload | None) -> np.ndarray:
        """0/1 per slot for ``payload``; for None the slots of the model as it is (everything kept,
        for most kinds; a choice of one option among several has its current option at 1)."""
        return np.ones(choices.size)

    def payload(self, choices: ChoiceSet, keep: np.ndarray) -> Payload | None:
        """The payload of a 0/1 slot vector; None when it changes nothing."""
        return None

    def check(self, choices: ChoiceSet, payload: Payload) -> None:
        """Raise ValueError naming the site when ``payload`` is not a valid decision here."""

    def parse(self, raw: Any) -> Payload:
        """A payload from JSON (raise ValueError on a wrong shape)."""
        return raw

    # -- gates and surgery ---------------------------------------------------------------------------
    def attach(self, gates: Any, choices: ChoiceSet, only: set[str] | None = None) -> None:
        """Put this kind's gates into ``gates.model`` (``only``: restrict to these gate items)."""

    def gate_items(self, choices: ChoiceSet) -> list[str]:
        """What ``attach(only=...)`` selects from (for the gates-at-one check)."""
        return []

    def sites_of_gate(self, choices: ChoiceSet, item: str) -> list[str]:
        """The sites to freeze when the gate item ``item`` alone changes the model at 1."""
        return [item]

    def cut(self, model: nn.Module, choices: ChoiceSet, payload: Payload) -> nn.Module:
        """Apply ``payload`` to the dense ``model`` (a copy the caller owns); return it."""
        return model

    # -- budgets ---------------------------------------------------------------------------------------
    def scores(self, model: nn.Module, choices: ChoiceSet,
               element: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """A score per slot (higher = more worth keeping) from ``element(weight)``, a per-element
        importance (squared magnitude, Taylor...), normalised so that scores of different sites
        and kinds compare: 1 is the average."""
        return np.ones(choices.size)

    def nested(self, choices: ChoiceSet) -> list[tuple[str, np.ndarray, list[int]]]:
        """Sites whose choice is how many of their slots to keep, in a fixed order (a kernel's
        rings, innermost first): ``(site, slots in keeping order, allowed kept counts)``.  A
        search over counts (tas) takes them as they are; empty for kinds without such sites."""
        return []

    def settle(self, choices: ChoiceSet, keep: np.ndarray, scores: np.ndarray, round_to: int | None) -> None:
        """Make a 0/1 slot vector valid in place (at least one unit per group, nested windows,
        widths rounded up to ``round_to`` channels...)."""

    # -- checks and rules -----------------------------------------------------------------------------
    def checkable(self, choices: ChoiceSet) -> list[str]:
        """The sites a random decision can change (checked for invariant 2)."""
        return [s for s in choices.items() if s not in self.frozen(choices)]

    def suspects(self, choices: ChoiceSet, items: list[str]) -> list[list[str]]:
        """Buckets of sites likely to break slicing alike, checked before the rest is bisected."""
        return []

    def frozen(self, choices: ChoiceSet) -> dict[str, str]:
        """Sites that cannot change, with the reason (what ``compress inspect`` lists)."""
        return {}

    def freeze(self, choices: ChoiceSet, reasons: dict[str, str]) -> ChoiceSet:
        """A new set with the named sites frozen for the given reasons."""
        return choices

    def sample(self, choices: ChoiceSet, items: list[str], rng: np.random.Generator, share: Callable[[int], float]
               ) -> Payload | None:
        """A random payload changing the named sites (``share(i)``: the fraction of site i to keep)."""
        return None

    def modules(self, choices: ChoiceSet, item: str) -> set[str]:
        """Names of the modules a site touches (what recipe rules match)."""
        return {item}

    def constrain(self, choices: ChoiceSet, item: str, rule: dict[str, Any]) -> ChoiceSet:
        """Apply a recipe rule's settings (keys of ``rule_keys``) to one site; raise ValueError
        naming what is wrong with a value."""
        return choices

    def describe(self, space: "Space", choices: ChoiceSet, verbose: bool = False) -> list[str]:
        """Lines for ``compress inspect`` (``verbose``: every site, not only the largest)."""
        return [f"{self.name}: {len(choices.items())} sites"]

    def summary(self, choices: ChoiceSet, payload: Payload | None) -> dict[str, Any]:
        """What the report says of a decision's payload."""
        return {}


_KINDS: dict[str, ChoiceKind] = {}


def register_kind(cls: type[ChoiceKind]) -> type[ChoiceKind]:
    """Class decorator: make a kind available by its ``name`` (an instance is kept)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _KINDS[cls.name] = cls()
    return cls


def unregister_kind(name: str) -> None:
    """Forget a kind (a plug-in registered for a while, as tests do)."""
    _KINDS.pop(name, None)


def get_kind(name: str) -> ChoiceKind:
    if name not in _KINDS:
        raise KeyError(f"unknown choice kind {name!r}; known: {', '.join(_KINDS)}")
    return _KINDS[name]


def kind_names() -> list[str]:
    """Registered kinds, in registration order."""
    return list(_KINDS)


def ones(choices: ChoiceSet) -> torch.Tensor:
    return torch.ones(choices.size, dtype=torch.double)
