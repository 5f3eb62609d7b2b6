"""Run a model once under a dispatch mode and follow every channel through every aten op.

Each tensor met during the forward pass gets a *label tensor* of the same shape holding, per
element, the atom of the channel it belongs to (-1 for "no prunable channel").  Op rules
(:mod:`compressor.space.rules`) compute output labels and join atoms that must be removed
together in a :class:`~compressor.space.dsu.DisjointSets`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import one_line
from .dsu import DisjointSets
from .functions import FunctionMode
from .labels import atom_counts, compact, core, flat_atoms, narrow_repeats, unlabelled
from .liveness import OpFlow
from .records import (
    CostTerm,
    DenseParam,
    GateSite,
    Merge,
    NormSite,
    ParamDim,
    ParamOp,
    Producer,
    ReshapeSite,
    SplitSite,
)
from .standardise import StandardisedStep, fallback_label


class TraceError(RuntimeError):
    """The model could not be traced; the message names the module and the op."""


class Trace:
    """Everything learned from one forward pass; filled in by :class:`LabelMode` and the rules."""

    def __init__(self, model: nn.Module) -> None:
        self.ds = DisjointSets()
        self.labels: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.param_t: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.param_names: dict[int, str] = {}
        self.name_tensors(model)
        self.module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.module_types = {n: type(m).__name__ for n, m in model.named_modules(remove_duplicate=False)}
        self.module_stack: list[str] = []
        self.add_sites: list[tuple[str, int]] = []  # (innermost module, op index) of tensor adds
        self.param_dims: list[ParamDim] = []
        self._layouts: dict[tuple[str, int], np.ndarray] = {}  # first layout of each parameter dim
        self.dense_params: dict[str, DenseParam] = {}
        self.gate_sites: list[GateSite] = []
        self.norm_sites: list[NormSite] = []
        self.costs: list[CostTerm] = []
        self.param_ops: list[ParamOp] = []  # convolutions reading a named weight
        self.producers: list[Producer] = []
        self.merges: list[Merge] = []
        self.pinned: np.ndarray = np.zeros(0, dtype=np.int64)  # output + box-pinned atoms
        self.output_pinned: np.ndarray = np.zeros(0, dtype=np.int64)  # atoms of the model's outputs
        self.reshapes: list[ReshapeSite] = []
        self.splits: list[SplitSite] = []
        self.box_pinned: list[np.ndarray] = []
        self._reshape_bytes = 0  # memory held by ``reshapes``, re-rooted past the budget
        self._reshape_budget = 64 * 2**20
        self.op_count = 0
        self.flow = OpFlow()
        self.functions: list[str] = []  # torch-level functions being run (outermost first)
        self.norm_depth = 0  # > 0 inside a normalisation whose statistics the gates will mask
        # tensors of a weight standardisation (see :mod:`.standardise`), the weights found standardised,
        # and a depth > 0 while the aten ops of one of its steps run unlabelled
        self.standardised: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.standardised_params: set[str] = set()
        self.quiet = 0

    def name_tensors(self, model: nn.Module) -> None:
        """Name every parameter and buffer of ``model`` (again after a call that replaced buffers)."""
        self.param_names = {}
        for name, t in [*model.named_parameters(remove_duplicate=False),
                        *model.named_buffers(remove_duplicate=False)]:
            self.param_names.setdefault(id(t), name)
        self._param_refs = [*model.parameters(), *model.buffers()]  # keeps the ids unique

    # -- where we are -------------------------------------------------------------------------
    @property
    def module(self) -> str:
        return self.module_stack[-1] if self.module_stack else ""

    # -- labels -------------------------------------------------------------------------------
    def param_name(self, t: Any) -> str | None:
        return self.param_names.get(id(t)) if isinstance(t, torch.Tensor) else None

    def label(self, t: torch.Tensor) -> torch.Tensor:
        """Label tensor of ``t``; a free-standing parameter gets one fresh atom per element."""
        lab = self.labels.get(t)
        if lab is not None and lab.shape == t.shape:
            return lab
        step: StandardisedStep | None = self.standardised.get(t)
        if step is not None:
            lab = fallback_label(self, step, t)
            self.labels[t] = lab
            return lab
        name = self.param_name(t)
        if name is not None and t.is_floating_point():
            atoms = self.ds.new(t.numel()).reshape(tuple(t.shape))
            self.dense_params[name] = DenseParam(name, atoms)
            self.producers.append(Producer(name, atoms.ravel()))
            lab = torch.from_numpy(atoms)
        else:
            lab = unlabelled(t.shape)
        self.labels[t] = lab
        return lab

    def label_whole(self, t: torch.Tensor) -> torch.Tensor:
        """Like :meth:`label`, for an op that ties every element of ``t`` into one unit anyway:
        a parameter met for the first time gets one atom for all its elements."""
        name = self.param_name(t)
        if name is None or t in self.labels or not t.is_floating_point() or t in self.standardised:
            return self.label(t)
        atoms = np.broadcast_to(self.fresh(1, name), tuple(t.shape))
        self.dense_params[name] = DenseParam(name, atoms)
        self.labels[t] = lab = torch.from_numpy(atoms[(0,) * t.dim()].reshape((1,) * t.dim())).expand(t.shape)
        return lab

    def set_label(self, t: Any, lab: torch.Tensor | None) -> None:
        if isinstance(t, torch.Tensor) and lab is not None:
            if tuple(lab.shape) != tuple(t.shape):
                raise TraceError(f"label shape {tuple(lab.shape)} != tensor shape {tuple(t.shape)}")
            self.labels[t] = compact(lab)

    def fresh(self, n: int, name: str) -> np.ndarray:
        atoms = self.ds.new(n)
        self.producers.append(Producer(name, atoms))
        return atoms

    # -- joining ------------------------------------------------------------------------------
    def reduce_rows(self, rows: np.ndarray, op: str) -> np.ndarray:
        """Join the atoms of each row of a 2-D array; return one root per row (-1 if unlabeled)."""
        if rows.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        rows = rows.reshape(rows.shape[0], -1)
        if rows.shape[1] == 0:
            return np.full(rows.shape[0], -1, dtype=np.int64)
        rep = rows.max(axis=1)
        self.ds.union(np.broadcast_to(rep[:, None], rows.shape), rows)
        out = np.full(rows.shape[0], -1, dtype=np.int64)
        has = rep >= 0
        out[has] = self.ds.find(rep[has])
        if rows.shape[1] > 1 and has.any():
            distinct = np.unique(rows[rows >= 0])
            if len(distinct) > has.sum():
                self.merges.append(Merge(op, self.module, distinct))
        return out

    def vector(self, lab: torch.Tensor, dim: int, op: str) -> np.ndarray:
        """One atom per index of ``dim`` (joining whatever the other dims hold there)."""
        dim = dim % lab.dim() if lab.dim() else dim
        lab = narrow_repeats(lab, keep=(dim,))  # a dim the label repeats along adds nothing to a row
        arr = lab.movedim(dim, 0).reshape(lab.shape[dim], -1).numpy()
        return self.reduce_rows(arr, op)

    def merge_all(self, labs: list[torch.Tensor], op: str) -> int:
        flat = np.concatenate([flat_atoms(lab) for lab in labs]) if labs else np.zeros(0, np.int64)
        root = self.ds.union_all(flat)
        distinct = np.unique(flat[flat >= 0])
        if len(distinct) > 1:
            self.merges.append(Merge(op, self.module, distinct))
        return root

    def record_reshape(self, out: torch.Tensor) -> None:
        lab = self.labels.get(out)
        if lab is None or lab.dim() == 0:
            return
        arr = core(lab)[0].numpy()  # constant along a dim of the label <=> along it here
        if arr.max(initial=-1) < 0:
            return
        site = self._reshape_site(self.module, tuple(out.shape), self._roots(arr, set()),
                                  self.module_types.get(self.module, ""))
        if site is None:
            return
        self.reshapes.append(site)
        self._reshape_bytes += site.atoms.nbytes
        if self._reshape_bytes > self._reshape_budget:
            # Atoms joined since a site was recorded may make it constant along more dims:
            # re-root them all, so the sites' memory stays in proportion to what they hold.
            shrunk = [self._reshape_site(r.module, r.shape, self._roots(r.atoms, set()), r.module_type)
                      for r in self.reshapes]
            self.reshapes = [r for r in shrunk if r is not None]
            self._reshape_bytes = sum(r.atoms.nbytes for r in self.reshapes)
            self._reshape_budget = max(self._reshape_budget, 2 * self._reshape_bytes)

    @staticmethod
    def _reshape_site(module: str, shape: tuple, arr: np.ndarray, module_type: str) -> ReshapeSite | None:
        """The site of a reshape to ``shape`` whose labels (dims of size 1 repeat) are ``arr``;
        None if the channels vary along no dim."""
        varying = [d for d in range(arr.ndim)
                   if arr.shape[d] > 1 and not (arr == arr.take([0], axis=d)).all()]
        if not varying:
            return None
        small = arr
        for d in range(arr.ndim):
            if d not in varying:
                small = small.take([0], axis=d)
        return ReshapeSite(module, shape, varying, np.ascontiguousarray(small), module_type)

    def record_split(self, x: torch.Tensor, dim: int, sizes: list[int]) -> None:
        """A split with explicit sizes along ``dim``: if channels vary along it, pruning changes the
        sizes (refreshed at slicing) and each part must keep one channel.  A split along a dim
        that carries no channels (spatial, tokens) is left alone: pruning cannot change it."""
        lab = self.label(x)
        if lab.dim() == 0 or lab.shape[dim] == 0 or lab.stride(dim) == 0 \
                or bool((lab == lab.narrow(dim, 0, 1)).all()):
            return
        vec = self.vector(lab, dim, "split")
        if (vec < 0).all():
            return
        starts = np.cumsum([0] + sizes[:-1])
        firsts = vec[starts[np.asarray(sizes) > 0]]
        self.box_pinned.append(firsts[firsts >= 0])
        self.splits.append(SplitSite(self.module, list(sizes), vec))

    def enforce_boxes(self) -> None:
        """Make the kept part of every recorded reshape a box for any decision: along some dim,
        each position holds one unit (or nothing prunable).  Coarsen where that fails."""
        pinned: set[int] = set()
        for _ in range(len(self.reshapes) + 1):
            changed = False
            for site in self.reshapes:
                if len(site.varying) < 2:
                    continue
                roots = self._roots(site.atoms, pinned)
                if any(_rows_constant(roots, d) for d in site.varying):
                    continue
                d = max(site.varying, key=lambda k: roots.shape[k])
                rows = np.moveaxis(roots, d, 0).reshape(roots.shape[d], -1)
                mixed = (rows < 0).any(axis=1) & (rows >= 0).any(axis=1)
                if mixed.any():  # part of the row can never go: neither can the rest
                    pin = np.unique(rows[mixed][rows[mixed] >= 0])
                    pinned.update(int(r) for r in pin)
                    self.box_pinned.append(pin)
                self.reduce_rows(rows[~mixed], f"reshape to {site.shape} in '{site.module}'")
                changed = True
            if not changed:
                return

    def _roots(self, atoms: np.ndarray, pinned: set[int]) -> np.ndarray:
        roots = np.where(atoms >= 0, self.ds.find(np.maximum(atoms, 0)), -1)
        if pinned:
            roots = np.where(np.isin(roots, list(pinned)), -1, roots)
        return roots

    # -- records ------------------------------------------------------------------------------
    def param_dim(self, t: Any, dim: int, atoms: np.ndarray) -> None:
        """Record that ``dim`` of parameter ``t`` is laid out as ``atoms``.  A parameter used
        again (one module applied to two tensors) ties the new layout to the first one entry by
        entry: row i of the weight serves channel i of both tensors, so they go together."""
        name = self.param_name(t)
        if name is None:
            return
        atoms = np.asarray(atoms, dtype=np.int64)
        first = self._layouts.setdefault((name, dim), atoms)
        if first is not atoms:
            if first.shape != atoms.shape:
                raise TraceError(f"parameter '{name}' is used with {len(first)} and {len(atoms)} channels "
                                 f"along dim {dim}")
            self.ds.union(first, atoms)
        self.param_dims.append(ParamDim(name, dim, atoms))

    def gate_site(self, t: Any, dim: int, atoms: np.ndarray) -> None:
        name = self.param_name(t)
        if name is not None:
            self.gate_sites.append(GateSite(name, dim, np.asarray(atoms, dtype=np.int64)))

    def norm_site(self, t: Any, kind: str, atoms: np.ndarray, groups: int = 1) -> None:
        name = self.param_name(t)
        if name is not None:
            self.norm_sites.append(NormSite(name, kind, np.asarray(atoms, dtype=np.int64), groups))

    def cost(self, op: str, coef: float, *factors: np.ndarray | torch.Tensor, weight: str | None = None) -> None:
        packed = []
        for f in factors:
            if isinstance(f, torch.Tensor):
                packed.append(atom_counts(f))
            else:
                atoms, counts = np.unique(np.asarray(f).reshape(-1), return_counts=True)
                packed.append((atoms.astype(np.int64), counts.astype(np.float64)))
        self.costs.append(CostTerm(op, self.module, float(coef), packed, op_index=self.flow.current, weight=weight))


Rule = Callable[[Trace, Any, tuple, dict, Any], None]
_ADDS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)


class LabelMode(TorchDispatchMode):
    """Dispatch mode that runs every op normally, then lets its rule label the outputs."""

    def __init__(self, trace: Trace, rules: Callable[[Any], Rule]) -> None:
        super().__init__()
        self.trace = trace
        self.rules = rules

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tr = self.trace
        tr.op_count += 1
        tr.flow.record(tr.module, args, kwargs, out)
        if tr.quiet:
            return out
        if func in _ADDS and len(args) >= 2 and isinstance(args[1], torch.Tensor) \
                and isinstance(args[0], torch.Tensor) and args[0].shape == args[1].shape:
            tr.add_sites.append((tr.module, tr.op_count))
        try:
            self.rules(func)(tr, func, args, kwargs, out)
        except TraceError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with the module and op named
            raise TraceError(
                f"cannot follow channels through {func} in module '{tr.module or '<root>'}': "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return out


def run_trace(model: nn.Module, example_inputs: tuple, rules: Callable[[Any], Rule]) -> tuple[Trace, Any]:
    """Run ``model(*example_inputs)`` in eval mode: once plainly, then under :class:`LabelMode`."""
    tr = Trace(model)

    def pre(mod, args):
        name = tr.module_names.get(id(mod))
        if name is not None:
            tr.module_stack.append(name)
            tr.flow.enter(name, args)

    def post(mod, args, out):
        if tr.module_names.get(id(mod)) is not None and tr.module_stack:
            tr.module_stack.pop()
            tr.flow.leave()

    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post)
    try:
        with torch.no_grad():
            # A plain pass first: state a model builds on its first call (ConViT's relative
            # indices) is then a buffer in every trace, whether the model ran before or not.
            model(*example_inputs)
        tr.name_tensors(model)
        tr.flow.active = True
        with torch.no_grad(), FunctionMode(tr), LabelMode(tr, rules):
            out = model(*example_inputs)
        tr.flow.active = False
    except TraceError:
        raise
    except Exception as exc:
        shapes = ", ".join(str(tuple(x.shape)) for x in example_inputs if isinstance(x, torch.Tensor))
        raise TraceError(f"the model's own forward pass failed in module '{tr.module or '<root>'}' "
                         f"on input {shapes}: {one_line(exc, 1000)}") from exc
    finally:
        h1.remove()
        h2.remove()
    tr.enforce_boxes()
    leaves = [t for t in _tensors(out)]
    tr.flow.mark_outputs(leaves)
    if leaves:
        tr.pinned = np.unique(np.concatenate([flat_atoms(tr.label(t)) for t in leaves]))
        tr.pinned = tr.pinned[tr.pinned >= 0]
    tr.output_pinned = tr.pinned
    if tr.box_pinned:
        tr.pinned = np.unique(np.concatenate([tr.pinned, *tr.box_pinned]))
    return tr, out


def _rows_constant(roots: np.ndarray, d: int) -> bool:
    rows = np.moveaxis(roots, d, 0).reshape(roots.shape[d], -1)
    return bool((rows == rows[:, :1]).all())


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)
