"""Dead code under a decision: which residual blocks keep an op's result in use.

An op whose results are read only inside removable residual branches computes nothing once
those branches are gone (GC ViT computes a stage's global query once and only the attention of
some of its blocks reads it).  fvcore's jit trace and the ONNX graph drop such an op, so the cost
model prices it only while one of those blocks is kept.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class OpFlow:
    """The dataflow of one traced forward pass: per op, its module and the ops whose results it read.

    A tensor written in place counts as produced by the op that wrote it last.  Reads through
    another view of the same storage are not followed: an op they would make live has no reader
    on record, and an op without readers counts as always live."""

    def __init__(self) -> None:
        self.modules: list[str] = []
        self.inputs: list[tuple[int, ...]] = []
        self.outputs: set[int] = set()
        self.active = False  # recording (the labelled pass only)
        # module calls: [module, first op, last op, producer of each positional argument or -1]
        self.calls: list[list] = []
        self._open: list[int] = []
        self._producer: WeakIdKeyDictionary = WeakIdKeyDictionary()

    @property
    def current(self) -> int:
        """Index of the op recorded last."""
        return len(self.modules) - 1

    def record(self, module: str, args: tuple, kwargs: dict, out: Any) -> None:
        read = {self._producer[t] for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor) and t in self._producer}
        self.modules.append(module)
        self.inputs.append(tuple(sorted(read)))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._producer[t] = self.current

    def enter(self, module: str, args: tuple) -> None:
        """A call of ``module`` with positional ``args`` begins."""
        if self.active:
            producers = [self._producer.get(a, -1) if isinstance(a, torch.Tensor) else -1 for a in args]
            self._open.append(len(self.calls))
            self.calls.append([module, len(self.modules), -1, producers])

    def leave(self) -> None:
        """The innermost open call returns."""
        if self.active and self._open:
            self.calls[self._open.pop()][2] = self.current

    def mark_outputs(self, tensors: Iterable[torch.Tensor]) -> None:
        self.outputs = {self._producer[t] for t in tensors if t in self._producer}


def live_blocks(flow: OpFlow, blocks) -> dict[int, frozenset[str]]:
    """For each op that is live only while one of some blocks is kept, the names of those blocks
    (blocks that contain the op itself are left out: its cost already goes with them).  Ops not in
    the result are always live.  A reader is inside a block when its module is, or when it reads,
    during a call of the block's owner, an argument that only the branch reads.  Where a reader
    sits inside several blocks the op does not, the innermost one stands for them (exact unless the
    decision removes an inner block and keeps an outer one that holds no other reader)."""
    containing: dict[str, tuple] = {}

    def blocks_of(module: str) -> tuple:
        if module not in containing:
            containing[module] = tuple(b for b in blocks if b.contains(module))
        return containing[module]

    readers: list[list[int]] = [[] for _ in flow.modules]
    for i, read in enumerate(flow.inputs):
        for j in read:
            readers[j].append(i)
    # a read, inside a call of a block's owner, of an argument only the block's branch reads
    in_branch: dict[tuple[int, int], str] = {}
    by_owner: dict[str, list] = {}
    for b in blocks:
        if b.branch_inputs:
            by_owner.setdefault(b.owner, []).append(b)
    for module, first, last, producers in flow.calls:
        for b in by_owner.get(module, ()):
            for pos in b.branch_inputs:
                j = producers[pos] if pos < len(producers) else -1
                for r in readers[j] if j >= 0 else ():
                    if first <= r <= last:
                        in_branch[(j, r)] = b.name
    live: list[frozenset[str] | None] = [None] * len(flow.modules)  # None: always live
    for i in reversed(range(len(flow.modules))):
        if i in flow.outputs or not readers[i]:
            continue
        mine = {b.name for b in blocks_of(flow.modules[i])}
        acc: set[str] | None = set()
        for r in readers[i]:
            other = [b for b in blocks_of(flow.modules[r]) if b.name not in mine]
            if (i, r) in in_branch and in_branch[(i, r)] not in mine:
                acc.add(in_branch[(i, r)])
            elif other:
                acc.add(max(other, key=lambda b: len(b.owner)).name)
            elif live[r] is None:
                acc = None
                break
            else:
                acc |= live[r]
        if acc is not None and acc - mine:
            live[i] = frozenset(acc - mine)
    return {i: s for i, s in enumerate(live) if s is not None}
