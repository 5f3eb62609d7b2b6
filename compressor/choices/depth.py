"""The ``depth`` kind: residual blocks ``s + f(s)`` whose branch can go.

Sites are the blocks :mod:`compressor.space.blocks` finds with ``torch.fx`` in every module that
ran a same-shape add; a slot is a block.  Its gate scales the branch (``s + g * f(s)``) in the
owner's rewritten graph; surgery replaces the add by (a copy of) its skip operand.  In the cost
model a block scales the terms of the ops inside it, and an op whose result only blocks read is
live while one of them is kept (:mod:`compressor.space.liveness`).  Payload: the removed blocks'
names.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from ..gates.modules import DepthGate
from ..space.blocks import ResidualBlock, assign_stages, cut_branches, find_blocks, trace_owner
from ..space.cost import Term
from ..space.kinds import ChoiceKind, ChoiceSet, register_kind
from ..space.liveness import live_blocks


@dataclass(frozen=True)
class DepthChoices(ChoiceSet):
    """The removable residual blocks, and why other residual adds are not."""

    blocks: tuple[ResidualBlock, ...]
    dropped: Mapping[str, str] = field(default_factory=dict)  # add -> why it is no removable block
    skipped_owners: Mapping[str, str] = field(default_factory=dict)  # owner fx could not trace -> why
    live: Mapping[int, frozenset[str]] = field(default_factory=dict)  # op index -> blocks keeping it in use

    @property
    def size(self) -> int:
        return len(self.blocks)

    def items(self) -> list[str]:
        return [b.name for b in self.blocks]

    def free(self) -> np.ndarray:
        return np.ones(self.size, dtype=bool)

    def block(self, name: str) -> ResidualBlock:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no residual block named {name!r}")


@register_kind
class DepthKind(ChoiceKind):
    name = "depth"
    attach_order = 10  # owners are rewritten before any weight is parametrized
    cut_order = 90  # graphs are cut after the weights
    weight_scored = False  # a block is ranked by the loss its removal costs (importance.drop_loss)

    def find(self, found) -> DepthChoices:
        tr, model = found.trace, found.model
        owners = list(dict.fromkeys(m for m, _ in tr.add_sites))
        modules = dict(model.named_modules(remove_duplicate=False))
        costly = {id(modules[t.module]) for t in tr.costs if t.module in modules}
        blocks, skipped, dropped = find_blocks(model, owners, costly)
        group_of = np.concatenate([np.full(g.size, i) for i, g in enumerate(found.grouping.groups)]
                                  or [np.zeros(0, dtype=np.int64)])
        assign_stages(blocks, {name: {int(group_of[u]) for d in ps.dims.values() for u in d if u >= 0}
                               for name, ps in found.grouping.param_slices.items()})
        return DepthChoices(tuple(blocks), dropped, skipped, live_blocks(tr.flow, blocks))

    def refine_terms(self, choices: DepthChoices, terms: list[Term], what: str) -> list[Term]:
        index = {b.name: i for i, b in enumerate(choices.blocks)}
        members: dict[str, tuple[tuple[str, int], ...]] = {}
        out = []
        for t in terms:
            if t.module not in members:
                members[t.module] = tuple(("depth", i) for i, b in enumerate(choices.blocks) if b.contains(t.module))
            live = choices.live.get(t.op_index)
            live = tuple(("depth", index[n]) for n in sorted(live)) if live and all(n in index for n in live) else None
            out.append(t.with_(scale=t.scale + members[t.module], live=live) if members[t.module] or live else t)
        return out

    # -- payload -------------------------------------------------------------------------------------
    def keep(self, choices: DepthChoices, payload) -> np.ndarray:
        removed = set(payload or ())
        return np.array([0.0 if b.name in removed else 1.0 for b in choices.blocks])

    def payload(self, choices: DepthChoices, keep: np.ndarray) -> list[str] | None:
        return sorted(b.name for b, k in zip(choices.blocks, keep) if not k) or None

    def parse(self, raw: Any) -> list[str]:
        if not isinstance(raw, (list, tuple)) or not all(isinstance(b, str) for b in raw):
            raise ValueError("depth: expected a list of removed block names")
        return list(raw)

    def check(self, choices: DepthChoices, payload) -> None:
        names = set(choices.items())
        for b in payload:
            if b not in names:
                raise ValueError(f"decision names unknown residual block {b!r}")

    def summary(self, choices: DepthChoices, payload) -> dict[str, Any]:
        removed = set(payload or ())
        per_stage: dict[str, list[int]] = {}
        for b in choices.blocks:
            kept, total = per_stage.setdefault(b.stage, [0, 0])
            per_stage[b.stage] = [kept + (b.name not in removed), total + 1]
        return {"blocks_removed": sorted(removed), "depth_per_stage": {s: {"kept": k, "of": n}
                                                                       for s, (k, n) in per_stage.items()}}

    # -- gates and surgery ---------------------------------------------------------------------------
    def gate_items(self, choices: DepthChoices) -> list[str]:
        return sorted({b.owner for b in choices.blocks})

    def attach(self, gates, choices: DepthChoices, only: set[str] | None = None) -> None:
        """Owners of residual blocks become fx GraphModules with a :class:`DepthGate` on each
        branch; the branches of ``gates.cut`` blocks are left out of the graph with their modules."""
        cut_blocks = [choices.blocks[i] for i in sorted(gates.cut)]
        gates.left_out = lambda name: any(b.contains(name) for b in cut_blocks)
        by_owner: dict[str, list[int]] = {}
        for i, b in enumerate(choices.blocks):
            if (only is None or b.owner in only) and not gates.left_out(b.owner):
                by_owner.setdefault(b.owner, []).append(i)
        for owner, idxs in by_owner.items():
            original = gates.model.get_submodule(owner) if owner else gates.model
            gm = trace_owner(original)
            cut_here = [choices.blocks[i] for i in idxs if i in gates.cut]
            if cut_here:
                cut_branches(gm, cut_here)
                gm = fx.GraphModule(original, gm.graph, class_name=type(original).__name__)  # drops their modules
            nodes = {n.name: n for n in gm.graph.nodes}
            for i in idxs:
                if i in gates.cut:
                    continue
                b = choices.blocks[i]
                add, branch = nodes[b.add_node], nodes[b.branch_node]
                gm.add_submodule(f"depth_gate_{i}", DepthGate(gates.values, i))
                with gm.graph.inserting_after(branch):
                    gated = gm.graph.call_module(f"depth_gate_{i}", (branch,))
                add.args = tuple(gated if a is branch else a for a in add.args)
            gm.recompile()
            gates.replace(owner, gm)

    def cut(self, model: nn.Module, choices: DepthChoices, payload) -> nn.Module:
        removed = set(payload)
        by_owner: dict[str, list[ResidualBlock]] = {}
        for b in choices.blocks:
            if b.name in removed:
                by_owner.setdefault(b.owner, []).append(b)
        for owner, blocks in by_owner.items():
            mod = model.get_submodule(owner) if owner else model
            gm = trace_owner(mod)
            cut_branches(gm, blocks)
            gm.recompile()
            gm = fx.GraphModule(mod, gm.graph, class_name=type(mod).__name__)  # drops modules no longer called
            if owner:
                model.set_submodule(owner, gm)
            else:
                model = gm
        return model

    # -- checks and rules -----------------------------------------------------------------------------
    def sites_of_gate(self, choices: DepthChoices, item: str) -> list[str]:
        return [b.name for b in choices.blocks if b.owner == item]

    def modules(self, choices: DepthChoices, item: str) -> set[str]:
        b = choices.block(item)
        return {b.owner, *b.modules, *(p.rpartition(".")[0] for p in b.params)}

    def frozen(self, choices: DepthChoices) -> dict[str, str]:
        return dict(choices.dropped)

    def freeze(self, choices: DepthChoices, reasons: dict[str, str]) -> DepthChoices:
        """Frozen blocks are no blocks: they move to ``dropped`` with the reason."""
        if not reasons:
            return choices
        kept = tuple(b for b in choices.blocks if b.name not in reasons)
        return choices.replace(blocks=kept, dropped={**choices.dropped, **reasons})

    def sample(self, choices: DepthChoices, items: list[str], rng: np.random.Generator,
               share: Callable[[int], float]) -> list[str]:
        return sorted(items)

    def describe(self, space, choices: DepthChoices, verbose: bool = False) -> list[str]:
        lines = [f"residual blocks: {len(choices.blocks)}"]
        if choices.blocks:
            full_f, full_p = space.cost.full("flops"), space.cost.full("params")
            lines.append(f"  {'block':<44} {'stage':<24} {'FLOPs%':>7} {'params%':>7}")
            for i, b in enumerate(choices.blocks):
                off = {"depth": torch.ones(len(choices.blocks), dtype=torch.double).index_fill(0, torch.tensor([i]), 0)}
                df, dp = 1 - float(space.cost.flops(off)) / full_f, 1 - float(space.cost.params(off)) / full_p
                lines.append(f"  {b.name[:44]:<44} {b.stage[:24]:<24} {100 * df:>6.1f}% {100 * dp:>6.1f}%")
        if choices.dropped:
            lines += ["", "residual adds that are not removable blocks:"]
            lines += [f"  {name}: {why}" for name, why in choices.dropped.items()]
        if choices.skipped_owners:
            lines += ["", "modules with residual adds that fx could not trace (no depth gates there):"]
            lines += [f"  {owner or '<root>'}: {why}" for owner, why in choices.skipped_owners.items()]
        return lines


def stage_sizes(choices: DepthChoices) -> Counter:
    """Blocks per stage."""
    return Counter(b.stage for b in choices.blocks)
