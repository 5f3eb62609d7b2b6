"""Residual blocks: ``s + f(s)`` adds whose branch ``f`` depends on nothing but ``s``.

Each module that ran a same-shape tensor add during tracing is traced once more with
``torch.fx`` (its children kept as leaves, so their code and attributes stay theirs) and every
add ``a + b`` where one operand dominates the other is a block: removing ``f`` leaves exactly
the skip path and whatever follows the add.
"""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..errors import one_line

_ADD_TARGETS = {operator.add, operator.iadd, torch.add}


class _ChildrenAsLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:  # noqa: ARG002
        return True


def trace_owner(module: nn.Module) -> fx.GraphModule:
    """fx graph of ``module``'s own forward with every child module kept as one call."""
    graph = _ChildrenAsLeaves().trace(module)
    return fx.GraphModule(module, graph, class_name=type(module).__name__)


@dataclass
class ResidualBlock:
    """One removable residual branch.

    Attributes:
        name: ``"<owner>#<k>"``, k counting residual adds inside the owner module.
        owner: qualified name of the module whose forward holds the add.
        add_node: name of the add node in the owner's fx graph.
        branch_node: name of the branch operand node.
        modules: qualified names of the modules only the branch calls.
        params: qualified names of parameters the branch reads directly.
        stage: the stage: a run of consecutive blocks on the same residual stream (set by
            :func:`assign_stages`).
        branch_inputs: positions of the owner's forward arguments that only the branch reads
            (GC ViT's global query): removing the block leaves them unread.
    """

    name: str
    owner: str
    add_node: str
    branch_node: str
    modules: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    stage: str = ""
    branch_inputs: list[int] = field(default_factory=list)

    def contains(self, qualname: str) -> bool:
        """True if a module or parameter of this qualified name is inside the branch."""
        for m in self.modules + self.params:
            if qualname == m or qualname.startswith(m + "."):
                return True
        return False


def _identity_chain(node: fx.Node, gm: fx.GraphModule) -> set[fx.Node]:
    """``node`` and what it is an identity of (``nn.Identity`` shortcuts, dropout in eval...)."""
    chain = {node}
    while node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Identity) \
            and len(node.all_input_nodes) == 1:
        node = node.all_input_nodes[0]
        chain.add(node)
    return chain


def _branch_nodes(branch: fx.Node, skip: set[fx.Node]) -> set[fx.Node] | None:
    """Nodes computing ``branch`` from ``skip`` (and optional forward arguments); None if the
    branch reads another required input or does not reach ``skip``."""
    seen: set[fx.Node] = set()
    stack = [branch]
    reached_skip = False
    while stack:
        n = stack.pop()
        if n in skip:
            reached_skip = True
            continue
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            if not n.args:  # a required input other than the skip: not a residual branch of it
                return None
            continue  # an optional argument (attention mask...): the branch may read it
        stack.extend(n.all_input_nodes)
    return seen if reached_skip else None


def find_blocks(model: nn.Module, owners: list[str], costly: set[int] = frozenset()
                ) -> tuple[list[ResidualBlock], dict[str, str], dict[str, str]]:
    """Blocks inside the given owner modules; for owners that fx cannot trace, why; and the
    residual adds that are no block, by the name they would have had, with the reason.

    ``costly`` holds the ids of the modules that cost FLOPs when called: a branch calling one that
    code outside the branch calls too (CoaT's ``mlp2 = mlp3 = mlp4``) is no block, because the
    cost model prices a module, not one call of it."""
    blocks: list[ResidualBlock] = []
    skipped: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for owner in owners:
        mod = model.get_submodule(owner) if owner else model
        try:
            gm = trace_owner(mod)
        except Exception as exc:  # noqa: BLE001 - reported, the owner simply gets no depth gate
            skipped[owner] = one_line(exc, 160)
            continue
        k = 0
        live = live_nodes(gm.graph)
        for node in gm.graph.nodes:
            if node.op not in ("call_function", "call_method") or len(node.args) < 2:
                continue
            if not (node.target in _ADD_TARGETS or node.target in ("add", "add_", "__iadd__")):
                continue
            a, b = node.args[0], node.args[1]
            if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
                continue
            for skip, branch in ((a, b), (b, a)):
                nodes = _branch_nodes(branch, _identity_chain(skip, gm))
                if not nodes or any(u not in nodes and u is not node and u in live for n in nodes for u in n.users):
                    continue  # none, or the branch also feeds something past the add
                mods = sorted({_join(owner, n.target) for n in nodes if n.op == "call_module"})
                # an in-place op on a branch value (NF nets' ``out.mul_(self.skipinit_gain)``) is
                # no ancestor of the branch output, and its parameters still go with the branch
                dead = [u for n in nodes for u in n.users if u is not node and u not in live]
                attrs = [n for n in nodes if n.op == "get_attr"] + \
                    [a for u in dead for a in u.args if isinstance(a, fx.Node) and a.op == "get_attr"]
                params = sorted({_join(owner, n.target) for n in attrs})
                if not mods and not params:
                    continue
                # A child module also used outside the branch cannot go with it.
                outside = {n.target for n in gm.graph.nodes if n.op == "call_module" and n not in nodes}
                shared = [m for m in mods if m[len(owner) + 1 if owner else 0:] in outside]
                priced = [m for m in shared if any(id(s) in costly for s in model.get_submodule(m).modules())]
                if priced:
                    dropped[f"{owner}#{k}"] = f"its branch calls '{priced[0]}', which is also called " \
                        "outside the branch: the cost of one call of a shared module cannot be priced"
                else:
                    mods = [m for m in mods if m not in shared]
                    blocks.append(ResidualBlock(f"{owner}#{k}", owner, node.name, branch.name, mods, params,
                                                branch_inputs=_read_only_by(gm, nodes, live)))
                k += 1
                break
    return blocks, skipped, dropped


def _read_only_by(gm: fx.GraphModule, nodes: set[fx.Node], live: set[fx.Node]) -> list[int]:
    """Positions of the forward arguments whose every live use is one of ``nodes``."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return [i for i, p in enumerate(placeholders)
            if any(u in live for u in p.users) and all(u in nodes for u in p.users if u in live)]


def live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes the output depends on."""
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    live, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(n.all_input_nodes)
    return live


def cut_branches(gm: fx.GraphModule, blocks: list[ResidualBlock]) -> None:
    """Remove the branch of each of ``blocks`` (all of one owner) from ``gm``, that owner's
    :func:`trace_owner` graph (node names shift on a re-trace): the add becomes a copy of its
    skip operand, and every node the output no longer needs goes.  The caller recompiles."""
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    for b in blocks:
        add = nodes[b.add_node]
        skip = next(a for a in add.args if a is not nodes[b.branch_node])
        # A fresh tensor, as the add made: ops after it may work in place (``out += x;
        # relu_(out)``), and must not overwrite the block's input, which autograd or the
        # caller may still need.  onnxruntime drops the copy (an Identity node).
        with graph.inserting_before(add):
            fresh = graph.call_method("clone", (skip,))
        add.replace_all_uses_with(fresh)
        graph.erase_node(add)
    # what the output no longer depends on, the removed branches' shape asserts included
    # (``eliminate_dead_code`` keeps those as impure)
    live = live_nodes(graph)
    for node in reversed(list(graph.nodes)):
        if node not in live and node.op != "placeholder" and not node.users:
            graph.erase_node(node)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def assign_stages(blocks: list[ResidualBlock], param_groups: dict[str, set[int]]) -> None:
    """Name each block's stage: a run of consecutive blocks whose branches read and write the same
    residual stream.  The stream of a block is the set of channel groups its parameters share with
    parameters outside it (its internal widths belong to it alone).  ``param_groups`` maps every
    parameter name to the channel groups its dimensions span.  Blocks whose stream has no channel
    group fall back to their owner's parent module."""
    def stream(b: ResidualBlock) -> frozenset[int]:
        mine: set[int] = set()
        others: set[int] = set()
        for p, groups in param_groups.items():
            (mine if b.contains(p) else others).update(groups)
        return frozenset(mine & others)

    def parent(b: ResidualBlock) -> str:
        return b.owner.rsplit(".", 1)[0] if "." in b.owner else ""

    runs: list[list[ResidualBlock]] = []
    key = None
    for b in blocks:
        k = stream(b) or parent(b)
        if not runs or k != key:
            runs.append([])
        runs[-1].append(b)
        key = k
    per_parent = Counter(parent(run[0]) for run in runs)
    for run in runs:
        first, last = run[0].owner, run[-1].owner
        if per_parent[parent(run[0])] == 1 and parent(run[0]):
            name = parent(run[0])
        else:
            name = first if first == last else f"{first}-{last.rsplit('.', 1)[-1]}"
        for b in run:
            b.stage = name
