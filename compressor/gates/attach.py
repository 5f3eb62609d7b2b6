"""``attach_gates``: put every kind's gates into a model, and take them out again."""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..space import Space
from ..space.kinds import get_kind
from .modules import GateValues


class Gates:
    """Handle over the gates of one model.  ``set`` takes hard 0/1 or soft values per kind.

    Kinds attach through it: :meth:`parametrize` a weight, :meth:`hook` a module,
    :meth:`replace` a module (a residual owner rewritten with depth gates).  :meth:`remove`
    undoes all of it in reverse order."""

    def __init__(self, model: nn.Module, space: Space, cut: Collection[int] = ()) -> None:
        self.model = model
        self.space = space
        self.values = GateValues(space.sizes())
        for kind, choices in space.items():  # the model as it is: ones for most kinds
            start = torch.as_tensor(get_kind(kind).keep(choices, None), dtype=torch.float32)
            if not bool((start == 1).all()):
                self.values.set(kind, start)
        self.cut = set(cut)  # depth slots held at 0 whose branches are left out of the graph
        self.left_out: Callable[[str], bool] = lambda name: False  # set by the kind that leaves modules out
        # units whose every consumer contracts over them one column each: ``values.mix`` may
        # recombine them (set by the channels kind)
        self.mixable = np.zeros(space["channels"].size if "channels" in space else 0, dtype=bool)
        self._replaced: dict[str, nn.Module] = {}
        # (module, attribute, whether it was a non-persistent buffer), in registration order
        self._parametrized: list[tuple[nn.Module, str, bool]] = []
        self._hooks: list = []

    def set(self, values: Mapping[str, torch.Tensor | None]) -> None:
        """Gate values per kind (a kind left out, or given None, keeps its values)."""
        for kind, v in values.items():
            if v is not None:
                self.values.set(kind, v)

    def parametrize(self, module: nn.Module, attr: str, gate: nn.Module) -> None:
        """Register ``gate`` as the parametrization of ``module.attr`` (undone by :meth:`remove`)."""
        self._parametrized.append((module, attr, attr in module._non_persistent_buffers_set))
        parametrize.register_parametrization(module, attr, gate)

    def hook(self, handle) -> None:
        """Keep a hook handle to remove with the gates."""
        self._hooks.append(handle)

    def replace(self, name: str, new: nn.Module) -> None:
        """Put ``new`` where the module ``name`` is (the root itself for ``""``)."""
        self._replaced[name] = self.model.get_submodule(name) if name else self.model
        self.model = _set_module(self.model, name, new)

    def remove(self) -> nn.Module:
        """Detach every gate; the model computes exactly what it did before :func:`attach_gates`."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for module, name, transient in reversed(self._parametrized):
            if not parametrize.is_parametrized(module, name):
                continue  # several kinds parametrized it: the first removal took them all
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            if transient:  # remove_parametrizations registers a buffer back as persistent
                module._non_persistent_buffers_set.add(name)
        self._parametrized.clear()
        # Last rewritten, first restored: an owner rewritten inside another one (a residual inside
        # a residual block) is put back in the outer original only once that is back in place.
        for owner, original in reversed(self._replaced.items()):
            self.model = _set_module(self.model, owner, original)
        self._replaced.clear()
        return self.model


def attach_gates(model: nn.Module, space: Space, *, only: Mapping[str, Collection[str]] | None = None,
                 cut: Collection[int] = ()) -> Gates:
    """Gate ``model`` in place with every kind of ``space`` (in each kind's ``attach_order``).

    ``only``: per kind, the gate items (:meth:`ChoiceKind.gate_items`) to gate; kinds it leaves
    out get no gates (for checks).  ``cut``: depth slots whose value stays 0 while the gates are
    on: their branches are left out of the graph (with their modules), so they cost nothing.

    Returns the :class:`Gates` handle; use ``gates.model`` (the root itself may be replaced when
    the model's own forward holds a residual add).
    """
    if cut and only is not None:
        raise ValueError("attach_gates: cut and only do not combine (a check gates some items, a part cuts)")
    gates = Gates(model, space, cut)
    for kind in sorted(space, key=lambda k: get_kind(k).attach_order):
        items = None if only is None else set(only.get(kind, ()))
        if items is None or items:
            get_kind(kind).attach(gates, space[kind], items)
    return gates


def _set_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    root.set_submodule(name, new)
    return root
