"""Template mixtures (MixtureGrowth, DESIGN §5.3): a conv or linear weight becomes ``W = Σ_k a_k·T_k``.

Implemented as a ``torch.nn.utils.parametrize`` parametrization of the existing weight: the
parametrized tensor's ``original`` holds the stacked templates ``[K, *W.shape]`` and the
parametrization holds the coefficients ``a`` (``K`` numbers, 1-d, so the trainer gives them no
weight decay).  Attaching keeps the weight's value exactly (``T_k = a_k·W + b_k·N`` with ``b ⟂ a``
and ``N`` a fresh draw of the weight's own scale), and :func:`materialize_templates` turns every
mixture back into a plain weight, so slicing, saving and ONNX see an ordinary model.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["TemplateMixture", "attach_templates", "materialize_templates", "mixable_weights", "mixture_of",
           "orthogonal_rows"]


class TemplateMixture(nn.Module):
    """``forward(templates) = Σ_k coefficients[k]·templates[k]``.

    Args:
        coefficients: ``[K]`` initial coefficients (unit norm keeps the weight's scale).
        generator: draws the noise direction of the templates at attach time.
    """

    def __init__(self, coefficients: torch.Tensor, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.coefficients = nn.Parameter(coefficients.detach().clone().float())
        self._generator = generator

    def forward(self, templates: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(self.coefficients.to(templates.dtype), templates, dims=1)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Templates whose mixture is ``weight``: ``a_k·W`` plus noise along directions
        orthogonal to ``a`` (so the templates differ, and the mixture is unchanged)."""
        a = self.coefficients.detach().double()
        k = a.numel()
        basis = torch.linalg.svd(a.reshape(1, k), full_matrices=True).Vh[1:]  # [K-1, K], rows ⟂ a
        scale = float(weight.std()) if weight.numel() > 1 else 1.0
        noise = torch.randn((k - 1, *weight.shape), generator=self._generator, dtype=torch.double) * scale
        t = a.reshape(k, *[1] * weight.dim()) * weight.double() / a.dot(a) \
            + torch.tensordot(basis.T, noise, dims=1)
        return t.to(weight.dtype)


def orthogonal_rows(rows: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``[rows, k]`` matrix from an orthogonal init (orthonormal rows when ``rows <= k``,
    orthonormal columns otherwise): the reference code's coefficient init, row ``m`` for block ``m``."""
    g = torch.randn(max(rows, k), max(rows, k), generator=generator, dtype=torch.double)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))
    return q[:rows, :k].float()


def mixable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(weight name, module)`` of every plain conv and linear weight: what can become a mixture."""
    out = []
    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and not parametrize.is_parametrized(module) \
                and isinstance(module._parameters.get("weight"), nn.Parameter):
            out.append((f"{mod_name}.weight" if mod_name else "weight", module))
    return out


def attach_templates(model: nn.Module, coefficients: dict[str, torch.Tensor] | None = None, *,
                     num_templates: int = 2, generator: torch.Generator | None = None) -> list[str]:
    """Make every conv and linear weight of ``model`` a mixture of ``num_templates`` templates, in
    place; the model's output does not change.  ``coefficients`` maps a weight's name
    (``"layer1.0.conv1.weight"``) to its initial coefficients (default: a random unit vector).
    Returns the names of the weights that became mixtures."""
    if num_templates < 2:
        raise ValueError(f"a template mixture needs at least 2 templates, got {num_templates}")
    done = []
    for name, module in mixable_weights(model):
        a = coefficients.get(name) if coefficients else None
        if a is None:
            a = orthogonal_rows(1, num_templates, generator)[0]
        if a.numel() != num_templates:
            raise ValueError(f"{name}: {a.numel()} coefficients for {num_templates} templates")
        parametrize.register_parametrization(module, "weight", TemplateMixture(a, generator), unsafe=True)
        done.append(name)
    return done


def mixture_of(model: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(templates [K, *shape], coefficients [K])`` of the weight ``name``, or None if it is plain."""
    mod_name, _, attr = name.rpartition(".")
    module = model.get_submodule(mod_name)
    if not parametrize.is_parametrized(module, attr):
        return None
    plist = module.parametrizations[attr]
    return plist.original.detach(), plist[0].coefficients.detach()


def materialize_templates(model: nn.Module) -> nn.Module:
    """Replace every mixture by the plain weight it computes, in place; returns ``model``."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


NEW_COEFFICIENTS = ("orthogonal", "random", "copy", "zero")


def growth_fill(seed_a: nn.Module, seed_b: nn.Module | None, rows: dict[str, torch.Tensor], init: str = "orthogonal",
                *, noise: float = 1.0, generator: torch.Generator | None = None):
    """The ``fill`` for :func:`compressor.export.grow.grow_model`: new blocks as new coefficients over
    the trained templates ("vertical" growth: a block writing A's output half mixes A's templates).

    ``rows[name]`` is the ``[4, K]`` coefficient init of the weight (row 0: seed A, 1: seed B,
    2: block ab, 3: block ba).  ``init``: ``orthogonal`` (ab keeps its initial row; ba gets the
    direction orthogonal to the coefficients before it: the smallest right-singular vector),
    ``random`` (uniform [0, 1) × noise), ``copy`` (the diagonal block's coefficients plus a random
    unit vector × noise) or ``zero``.  Without seed B (no fusion), B's own blocks are new mixtures
    of A's templates (row 1) and every other tensor of B copies A's.
    """
    if init not in NEW_COEFFICIENTS:
        raise ValueError(f"new coefficients must be one of {NEW_COEFFICIENTS}, got {init!r}")

    def fill(name: str, kind: str, like: torch.Tensor) -> torch.Tensor:
        ma = mixture_of(seed_a, name)
        if ma is None:
            return like.clone() if kind == "b" else torch.zeros_like(like)
        ta, ca = ma
        mb = mixture_of(seed_b, name) if seed_b is not None else None
        tb, cb = mb if mb is not None else (ta, None)
        r = rows[name].to(ca)
        if kind == "b":
            coef = r[1] if init == "orthogonal" else _new(init, ca, noise, generator)
            return torch.tensordot(coef, ta, dims=1)
        templates, own = (ta, ca) if kind == "ab" else (tb, cb if cb is not None else r[1])
        if init == "orthogonal":
            coef = r[2] if kind == "ab" else torch.linalg.svd(torch.stack([ca, own, r[2]]).double()).Vh[-1].to(ca)
        else:
            coef = _new(init, own, noise, generator)
        return torch.tensordot(coef, templates, dims=1)

    return fill


def _new(init: str, own: torch.Tensor, noise: float, generator: torch.Generator | None) -> torch.Tensor:
    if init == "zero":
        return torch.zeros_like(own)
    if init == "random":
        return torch.rand(own.shape, generator=generator).to(own) * noise
    eps = torch.randn(own.shape, generator=generator).to(own)
    return own + eps / eps.norm() * noise
