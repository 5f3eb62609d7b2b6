"""Channel surgery: cut every parameter and buffer that reads or writes a removed unit, and refresh
the attributes that held the old sizes (``out_channels``, ``num_heads``, split sizes...)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from ..space.grouping import ParamSlice


class SliceError(RuntimeError):
    """The decision cannot be applied to a parameter; the message names it."""


def cut_channels(out: nn.Module, choices, keep: np.ndarray) -> nn.Module:
    """Cut ``out`` (a copy the caller owns) to the units where ``keep`` is True, in place."""
    keep_ext = np.concatenate([np.asarray(keep, dtype=bool), [True]])
    changed: dict[str, dict] = defaultdict(dict)
    for name, ps in choices.param_slices.items():
        tensor = tensor_named(out, name)
        if tensor is None:
            continue
        index = _indices(name, ps, keep_ext)
        if index is None:
            continue
        new = tensor.detach()
        for d, idx in index.items():
            new = new.index_select(d, torch.as_tensor(idx, device=new.device))
        mod_name, _, attr = name.rpartition(".")
        module = out.get_submodule(mod_name)
        old_shape = tuple(tensor.shape)
        if isinstance(tensor, nn.Parameter):
            setattr(module, attr, nn.Parameter(new.clone(), requires_grad=tensor.requires_grad))
        else:
            module._buffers[attr] = new.clone()
        changed[mod_name][attr] = (old_shape, index.get(0))
    for mod_name, shapes in changed.items():
        _refresh(out.get_submodule(mod_name), shapes)
    _refresh_reshape_attributes(out, choices.reshapes, keep_ext)
    _refresh_split_attributes(out, choices.splits, keep_ext)
    return out


def tensor_named(model: nn.Module, name: str) -> torch.Tensor | None:
    mod_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(mod_name)
    except AttributeError:
        return None
    return module._parameters.get(attr, module._buffers.get(attr))


def _indices(name: str, ps: ParamSlice, keep_ext: np.ndarray) -> dict[int, np.ndarray] | None:
    """Kept positions per dim, or None if nothing changes."""
    try:
        return ps.kept(keep_ext) or None
    except ValueError as exc:
        raise SliceError(str(exc)) from None


def _refresh_reshape_attributes(model: nn.Module, reshapes, keep_ext: np.ndarray) -> None:
    """Measure after surgery: where a reshape's size changed (heads removed), an integer
    attribute of the module running it that held the old size (``num_heads``) gets the new one."""
    updates: dict[str, dict[int, int]] = defaultdict(dict)
    conflicts: set[tuple[str, int]] = set()
    for site in reshapes:
        kept = keep_ext[np.where(site.atoms >= 0, site.atoms, len(keep_ext) - 1)]
        for d in site.varying:
            rows = np.moveaxis(kept, d, 0).reshape(kept.shape[d], -1)
            new = int(rows.any(axis=1).sum())
            old = site.shape[d]
            if new != old:
                prev = updates[site.module].get(old)
                if prev is not None and prev != new:
                    conflicts.add((site.module, old))
                updates[site.module][old] = new
    for mod_name, sizes in updates.items():
        try:
            module = model.get_submodule(mod_name)
        except AttributeError:
            continue
        if type(module).__module__.startswith("torch.nn"):
            continue
        matches: dict[int, list[str]] = defaultdict(list)
        for attr, value in vars(module).items():
            if not attr.startswith("_") and type(value) is int and value in sizes:
                matches[value].append(attr)
        for value, attrs in matches.items():
            # Two attributes holding the same size are ambiguous: leave them (validation decides).
            if len(attrs) == 1 and (mod_name, value) not in conflicts:
                setattr(module, attrs[0], sizes[value])


def _refresh_split_attributes(model: nn.Module, splits, keep_ext: np.ndarray) -> None:
    """A list attribute that held a split's old part sizes gets the kept sizes."""
    for site in splits:
        kept = keep_ext[np.where(site.atoms >= 0, site.atoms, len(keep_ext) - 1)]
        bounds = np.cumsum([0] + site.sizes)
        new = [int(kept[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
        if new == site.sizes:
            continue
        try:
            module = model.get_submodule(site.module)
        except AttributeError:
            continue
        for attr, value in vars(module).items():
            if isinstance(value, (list, tuple)) and not attr.startswith("_") \
                    and [v for v in value if type(v) is int] == site.sizes and len(value) == len(site.sizes):
                setattr(module, attr, type(value)(new))


def _refresh(module: nn.Module, changed: dict[str, tuple]) -> None:
    """Recompute the shape attributes of standard layers from their new weights; ``changed``
    holds, per sliced tensor, its old shape and the rows (dim 0) it kept (None: all)."""
    w = module._parameters.get("weight")
    if isinstance(module, nn.modules.conv._ConvNd) and w is not None:
        old, rows = changed.get("weight", (tuple(w.shape), None))
        if module.transposed:
            module.groups = module.groups * w.shape[0] // old[0] if module.groups > 1 else 1
            module.in_channels = w.shape[0]
            module.out_channels = w.shape[1] * module.groups
        else:
            if module.groups > 1 and w.shape[1] == old[1] and rows is not None:
                # Whole groups went, or (few wide groups) the same rows of every group: only the
                # rows tell, the shapes are alike when the inputs of a group are not pruned.
                size = old[0] // module.groups
                per_group = np.bincount(np.asarray(rows) // size, minlength=module.groups)
                if np.isin(per_group, (0, size)).all():
                    module.groups = int((per_group > 0).sum())
            module.out_channels = w.shape[0]
            module.in_channels = w.shape[1] * module.groups
    elif isinstance(module, nn.Linear) and w is not None:
        module.out_features, module.in_features = w.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = w if w is not None else module._buffers.get("running_mean")
        if ref is not None:
            module.num_features = ref.shape[0]
    elif isinstance(module, nn.LayerNorm) and w is not None:
        module.normalized_shape = tuple(w.shape)
    elif isinstance(module, nn.GroupNorm) and w is not None:
        if module.num_groups == module.num_channels:  # one channel per group: groups go with them
            module.num_groups = w.shape[0]
        module.num_channels = w.shape[0]
    elif isinstance(module, nn.RMSNorm) and w is not None:
        module.normalized_shape = tuple(w.shape)
