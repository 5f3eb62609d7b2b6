"""The ``kernel`` kind: a convolution keeps a centred k' x k' window of its k x k kernel.

Sites are the convolutions (dense, grouped or depthwise; 1-D or 2-D) with an odd kernel of side
3 or more.  A slot is a *ring*: the kernel positions at Chebyshev distance r >= 1 from the centre
(the centre always stays), so keeping the first n rings keeps a window of side 2n + 1.  The gate
multiplies every kernel position by its ring's value (a weight parametrization); surgery crops
the weight and lowers the padding by ``dilation * (k - k') / 2`` per side, so the sliced model
computes the hard-gated one exactly and the output size is unchanged for any stride and dilation
(each output reads the same input positions; the cropped taps were the zero ones).  That needs
padding of at least the cut on every side, a padding the module's own forward applies
(``module.padding`` equal to the traced op's), and a non-transposed ``nn.Conv*``: otherwise the
site is frozen with the reason, or its smaller windows left out.  Payload: ``{conv: k'}``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..space.cost import CONST, Factor, Term
from ..space.kinds import ChoiceKind, ChoiceSet, register_kind


@dataclass(frozen=True)
class KernelSite:
    """One convolution's kernel: ``kernel`` its sides, ``offset``/``rings`` its slots, ``sizes``
    the window sides a decision may keep (largest first), ``frozen`` why it cannot change."""

    name: str  # the convolution module
    weight: str
    kernel: tuple[int, ...]
    offset: int
    rings: int
    sizes: tuple[int, ...]
    frozen: str | None = None

    @property
    def slots(self) -> np.ndarray:
        return np.arange(self.offset, self.offset + self.rings)

    def ring_map(self) -> np.ndarray:
        """The ring of every kernel position (0 = the centre)."""
        grids = np.meshgrid(*[np.abs(np.arange(k) - (k - 1) // 2) for k in self.kernel], indexing="ij")
        return np.max(np.stack(grids), axis=0)

    def ring_counts(self) -> np.ndarray:
        """Positions per ring, the centre first."""
        return np.bincount(self.ring_map().ravel(), minlength=self.rings + 1).astype(np.float64)


@dataclass(frozen=True)
class KernelChoices(ChoiceSet):
    sites: tuple[KernelSite, ...] = ()

    @property
    def size(self) -> int:
        return sum(s.rings for s in self.sites)

    def items(self) -> list[str]:
        return [s.name for s in self.sites]

    def site(self, name: str) -> KernelSite:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no kernel site named {name!r}")

    def free(self) -> np.ndarray:
        mask = np.zeros(self.size, dtype=bool)
        for s in self.sites:
            if s.frozen is None and len(s.sizes) > 1:
                mask[s.slots] = True
        return mask


@register_kind
class KernelKind(ChoiceKind):
    name = "kernel"
    attach_order = 30  # after the channel masks: the two parametrizations stack
    cut_order = 20
    rule_keys = ("kernel",)

    def find(self, found) -> KernelChoices:
        sites: list[KernelSite] = []
        offset = 0
        modules = dict(found.model.named_modules())
        by_weight: dict[str, list] = {}
        for op in found.trace.param_ops:
            if op.op == "conv" and max(op.weight_shape[2:], default=1) >= 3:
                by_weight.setdefault(op.weight, []).append(op)
        for weight, ops in by_weight.items():
            kernel = tuple(int(k) for k in ops[0].weight_shape[2:])
            name = weight.rpartition(".")[0]
            rings = (max(kernel) - 1) // 2 if all(k % 2 for k in kernel) else 0  # an even kernel has no rings
            frozen, sizes = _window_sizes(modules.get(name), weight, kernel, ops)
            if weight in found.grouping.standardised:
                frozen = "standardised in the forward: its statistics span the whole kernel"
            sites.append(KernelSite(name, weight, kernel, offset, rings, sizes, frozen))
            offset += rings
        return KernelChoices(tuple(sites))

    def refine_terms(self, choices: KernelChoices, terms: list[Term], what: str) -> list[Term]:
        by_weight = {s.weight: s for s in choices.sites}
        out = []
        for t in terms:
            s = by_weight.get(t.weight) if t.op in ("conv", "param") else None
            if s is None or not s.rings:
                out.append(t)
                continue
            counts = s.ring_counts()
            factor = Factor(self.name, np.concatenate([[CONST], s.slots]), counts)
            out.append(t.with_(coef=t.coef / counts.sum(), factors=t.factors + (factor,)))
        return out

    # -- payload -------------------------------------------------------------------------------------
    def keep(self, choices: KernelChoices, payload) -> np.ndarray:
        keep = np.ones(choices.size)
        for name, size in (payload or {}).items():
            s = choices.site(name)
            keep[s.slots] = np.arange(1, s.rings + 1) <= (size - 1) // 2
        return keep

    def payload(self, choices: KernelChoices, keep: np.ndarray) -> dict[str, int] | None:
        out = {}
        for s in choices.sites:
            kept = keep[s.slots] > 0.5
            n = int(np.argmin(kept)) if not kept.all() else s.rings  # leading kept rings
            if n < s.rings:
                out[s.name] = 2 * n + 1
        return out or None

    def parse(self, raw: Any) -> dict[str, int]:
        if not isinstance(raw, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
            raise ValueError("kernel: expected {convolution: kept window side}")
        return {str(k): int(v) for k, v in raw.items()}

    def check(self, choices: KernelChoices, payload) -> None:
        names = {s.name: s for s in choices.sites}
        for name, size in payload.items():
            s = names.get(name)
            if s is None:
                raise ValueError(f"decision names unknown kernel site {name!r}")
            if size not in s.sizes:
                raise ValueError(f"kernel {name!r} ({'x'.join(map(str, s.kernel))}) can keep a window of "
                                 f"{', '.join(map(str, s.sizes))}, not {size}")
            if size != s.sizes[0] and s.frozen:
                raise ValueError(f"kernel {name!r} is frozen ({s.frozen})")

    def summary(self, choices: KernelChoices, payload) -> dict[str, Any]:
        payload = payload or {}
        return {"windows": {s.name: {"kept": payload.get(s.name, max(s.kernel)), "of": max(s.kernel)}
                            for s in choices.sites if s.frozen is None and len(s.sizes) > 1}}

    # -- gates and surgery ---------------------------------------------------------------------------
    def gate_items(self, choices: KernelChoices) -> list[str]:
        return [s.name for s in choices.sites if s.frozen is None and len(s.sizes) > 1]

    def attach(self, gates, choices: KernelChoices, only: set[str] | None = None) -> None:
        for s in choices.sites:
            if s.frozen is None and len(s.sizes) > 1 and (only is None or s.name in only) \
                    and not gates.left_out(s.weight):
                module = gates.model.get_submodule(s.name)
                gates.parametrize(module, "weight", KernelMask(gates.values, s))

    def cut(self, model: nn.Module, choices: KernelChoices, payload) -> nn.Module:
        for name, size in payload.items():
            s = choices.site(name)
            module = model.get_submodule(name)
            pads, starts = [], []
            for k, d, p in zip(s.kernel, _pair(module.dilation, len(s.kernel)), _padding(module, s.kernel)):
                c = (k - min(k, size)) // 2
                starts.append(slice(c, k - c))
                pads.append(p - d * c)
            w = module.weight.detach()[(slice(None), slice(None), *starts)]
            module.weight = nn.Parameter(w.clone(), requires_grad=module.weight.requires_grad)
            module.kernel_size = tuple(w.shape[2:])
            module.padding = tuple(pads)
        return model

    # -- budgets ---------------------------------------------------------------------------------------
    def scores(self, model: nn.Module, choices: KernelChoices,
               element: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """A ring's mean ``element`` per position over the site's mean, made non-increasing
        outward (an outer ring never outranks an inner one: windows stay nested)."""
        params = dict(model.named_parameters())
        out = np.ones(choices.size)
        for s in choices.sites:
            w = params.get(s.weight)
            if w is None or not s.rings:
                continue
            per_pos = element(w).detach().double().sum(dim=(0, 1)).cpu().numpy()
            ring = s.ring_map()
            mean = per_pos.mean() if per_pos.mean() > 0 else 1.0
            score = np.array([per_pos[ring == r].mean() / mean for r in range(1, s.rings + 1)])
            out[s.slots] = np.minimum.accumulate(score) - 1e-9 * np.arange(s.rings)
        return out

    def settle(self, choices: KernelChoices, keep: np.ndarray, scores, round_to) -> None:
        """Windows nested (a ring stays only with every ring inside it) and of an allowed side
        (the next allowed one up)."""
        for s in choices.sites:
            if s.frozen is not None:
                keep[s.slots] = True
                continue
            kept = keep[s.slots].astype(bool)
            side = 2 * (int(np.argmin(kept)) if not kept.all() else s.rings) + 1
            larger = [a for a in s.sizes if a >= side]
            side = min(larger) if larger else max(s.sizes)
            keep[s.slots] = np.arange(1, s.rings + 1) <= (side - 1) // 2

    def nested(self, choices: KernelChoices) -> list[tuple[str, np.ndarray, list[int]]]:
        return [(s.name, s.slots, sorted((a - 1) // 2 for a in s.sizes)) for s in choices.sites
                if s.frozen is None and len(s.sizes) > 1]

    # -- checks and rules -----------------------------------------------------------------------------
    def checkable(self, choices: KernelChoices) -> list[str]:
        return self.gate_items(choices)

    def frozen(self, choices: KernelChoices) -> dict[str, str]:
        return {s.name: s.frozen for s in choices.sites if s.frozen}

    def freeze(self, choices: KernelChoices, reasons: dict[str, str]) -> KernelChoices:
        return choices.replace(sites=tuple(dataclasses.replace(s, frozen=reasons[s.name])
                                           if s.name in reasons and s.frozen is None else s for s in choices.sites))

    def sample(self, choices: KernelChoices, items: list[str], rng: np.random.Generator,
               share: Callable[[int], float]) -> dict[str, int]:
        out = {}
        for i, name in enumerate(items):
            s = choices.site(name)
            want = 2 * int(round(s.rings * share(i))) + 1
            smaller = [a for a in s.sizes if a < s.sizes[0]]
            out[name] = min(smaller, key=lambda a: abs(a - want))
        return out

    def modules(self, choices: KernelChoices, item: str) -> set[str]:
        return {item}

    def constrain(self, choices: KernelChoices, item: str, rule: dict[str, Any]) -> KernelChoices:
        sizes = rule["kernel"]
        if not isinstance(sizes, list) or not sizes or not all(isinstance(a, int) and a % 2 for a in sizes):
            raise ValueError(f"kernel must be a list of odd window sides, got {sizes!r}")
        s = choices.site(item)
        allowed = tuple(a for a in s.sizes if a in sizes)
        if not allowed:
            raise ValueError(f"none of {sizes} fits ({'x'.join(map(str, s.kernel))}; exact windows: "
                             f"{', '.join(map(str, s.sizes))})")
        return choices.replace(sites=tuple(dataclasses.replace(x, sizes=allowed) if x.name == item else x
                                           for x in choices.sites))

    def describe(self, space, choices: KernelChoices, verbose: bool = False) -> list[str]:
        free = [s for s in choices.sites if s.frozen is None and len(s.sizes) > 1]
        full = space.cost.full("flops")
        lines = [f"kernel sites: {len(choices.sites)} convolutions with a kernel of 3 or more "
                 f"({len(free)} can keep a smaller window)",
                 f"  {'convolution':<44} {'kernel':>7} {'windows':>12} {'FLOPs%':>7}  status"]
        shown = choices.sites if verbose else choices.sites[:40]
        for s in shown:
            share = sum(t.coef * float(np.prod([f.counts.sum() for f in t.factors]))
                        for t in space.cost.flops_terms if t.weight == s.weight and t.op == "conv") / full
            status = s.frozen or ("frozen: no smaller exact window" if len(s.sizes) < 2 else "searchable")
            lines.append(f"  {s.name[:44]:<44} {'x'.join(map(str, s.kernel)):>7} "
                         f"{','.join(map(str, s.sizes)):>12} {100 * share:>6.1f}%  {status}")
        if len(shown) < len(choices.sites):
            lines.append(f"  ... {len(choices.sites) - len(shown)} more (--all lists them)")
        return lines


class KernelMask(nn.Module):
    """Parametrization of a convolution's weight: each kernel position times its ring's value
    (the centre times 1)."""

    def __init__(self, values, site: KernelSite) -> None:
        super().__init__()
        self._values = [values]
        self.offset, self.rings = site.offset, site.rings
        self.register_buffer("ring", torch.from_numpy(site.ring_map()).long(), persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        values = self._values[0]
        if values.is_ones("kernel"):
            return weight
        v = values["kernel"][self.offset:self.offset + self.rings].to(device=weight.device, dtype=weight.dtype)
        return weight * torch.cat([v.new_ones(1), v])[self.ring.to(weight.device)]


def _pair(value, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * n


def _padding(module: nn.Module, kernel: tuple[int, ...]) -> tuple[int, ...]:
    """The padding a ``nn.Conv*`` applies per spatial dim (``'same'`` and ``'valid'`` resolved)."""
    if module.padding == "valid":
        return (0,) * len(kernel)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, _pair(module.dilation, len(kernel))))
    return _pair(module.padding, len(kernel))


def _window_sizes(module: nn.Module | None, weight: str, kernel: tuple[int, ...], ops: list
                  ) -> tuple[str | None, tuple[int, ...]]:
    """Why the kernel cannot be cropped (or None), and the window sides it can keep exactly."""
    full = (max(kernel),)
    if not isinstance(module, nn.modules.conv._ConvNd) or getattr(module, "weight", None) is None \
            or f"{weight.rpartition('.')[0]}.weight" != weight:
        return "not the weight of a torch convolution layer (surgery could not set its padding)", full
    if module.transposed:
        return "a transposed convolution", full
    if any(k % 2 == 0 for k in kernel):
        return f"an even kernel ({'x'.join(map(str, kernel))}): no centred window", full
    padding, dilation = _padding(module, kernel), _pair(module.dilation, len(kernel))
    if any(tuple(op.attrs["padding"]) != padding for op in ops):
        return (f"the module pads its input itself (its padding {padding} is not the convolution's "
                f"{tuple(ops[0].attrs['padding'])})"), full
    sizes = [a for a in range(max(kernel), 0, -2)
             if all(p >= d * (k - min(k, a)) // 2 for k, d, p in zip(kernel, dilation, padding))]
    if len(sizes) < 2:
        return f"padding {padding} is smaller than any cut of the kernel (the output would shrink)", tuple(sizes)
    return None, tuple(sizes)
