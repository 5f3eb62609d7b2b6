"""The extension points are plug-ins: a new kind of choice and a new method, each written in this
file alone (no edit under ``compressor/``), run through the whole pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

from compressor.budget import decide
from compressor.cli import main
from compressor.export import load_compressed, save_compressed
from compressor.frontend import trace
from compressor.invariants import TOL_SLICE, slice_diff
from compressor.methods.base import Method, SearchContext, SearchResult, register_method, unregister_method
from compressor.recipe import MethodConfig
from compressor.space.cost import Term
from compressor.space.kinds import ChoiceKind, ChoiceSet, register_kind, unregister_kind
from compressor.surgery import slice_model


# -- a toy kind: drop a convolution's or linear layer's bias ------------------------------------------
@dataclass(frozen=True)
class BiasChoices(ChoiceSet):
    layers: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.layers)

    def items(self) -> list[str]:
        return list(self.layers)

    def free(self) -> np.ndarray:
        return np.ones(self.size, dtype=bool)


class BiasGate(nn.Module):
    def __init__(self, values, index: int) -> None:
        super().__init__()
        self._values, self.index = [values], index

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return bias * self._values[0]["bias"][self.index].to(bias)


class BiasKind(ChoiceKind):
    name = "bias"

    def find(self, found) -> BiasChoices:
        return BiasChoices(tuple(n for n, m in found.model.named_modules()
                                 if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None))

    def refine_terms(self, choices: BiasChoices, terms: list[Term], what: str) -> list[Term]:
        index = {f"{n}.bias": i for i, n in enumerate(choices.layers)}
        return [t.with_(scale=t.scale + ((self.name, index[t.weight]),)) if t.weight in index else t for t in terms]

    def keep(self, choices, payload):
        return np.array([0.0 if n in (payload or ()) else 1.0 for n in choices.layers])

    def payload(self, choices, keep):
        return [n for n, k in zip(choices.layers, keep) if not k] or None

    def check(self, choices, payload):
        unknown = set(payload) - set(choices.layers)
        if unknown:
            raise ValueError(f"no bias of {sorted(unknown)}")

    def attach(self, gates, choices, only=None):
        for i, n in enumerate(choices.layers):
            if only is None or n in only:
                gates.parametrize(gates.model.get_submodule(n), "bias", BiasGate(gates.values, i))

    def gate_items(self, choices):
        return list(choices.layers)

    def cut(self, model, choices, payload):
        for n in payload:
            model.get_submodule(n).register_parameter("bias", None)
        return model

    def scores(self, model, choices, element):
        raw = np.array([float(element(model.get_submodule(n).bias).mean()) for n in choices.layers])
        return raw / max(raw.mean(), 1e-12)

    def sample(self, choices, items, rng, share):
        return list(items)


@pytest.fixture
def bias_kind():
    register_kind(BiasKind)
    yield
    unregister_kind("bias")


def test_a_kind_from_outside_runs_from_trace_to_a_saved_model(bias_kind, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 5)).eval()
    with torch.no_grad():
        model[0].bias.mul_(50)  # a bias worth keeping
    x = torch.randn(2, 3, 8, 8)
    space = trace(model, x[:1], kinds=["channels", "bias"])  # validation checks the new kind too
    assert space["bias"].items() == ["0", "2", "5"]
    full = space.cost.full("params")
    bias_params = 8 + 8 + 5
    decision = decide(space, {"bias": np.array([3.0, 0.1, 0.2])}, (full - 13) / full, what="params")
    assert decision["bias"] == ["2", "5"]  # the two weakest go; the budget needs 13 params gone
    assert space.cost.full("params") - decision.params(space) == 13 <= bias_params
    assert slice_diff(model, space, decision, (x,)) <= TOL_SLICE  # invariant 2
    sliced = slice_model(model, space, decision).eval()
    assert sliced[2].bias is None and sliced[0].bias is not None
    assert round(decision.params(space)) == sum(p.numel() for p in sliced.parameters())
    save_compressed(sliced, tmp_path, source="tests.test_plugins:_tiny_sequential", input_shape=(1, 3, 8, 8),
                    decision=decision)
    loaded = load_compressed(tmp_path, original=model)
    with torch.no_grad():
        assert torch.equal(loaded(x), sliced(x))


def _tiny_sequential():  # pragma: no cover - only named
    raise NotImplementedError


# -- a toy method: keep slots at random under the budget ------------------------------------------------
class CoinConfig(MethodConfig):
    """Random scores for every weight-ranked slot."""

    name: Literal["coin"] = "coin"
    seed_offset: int = Field(0, ge=0, description="Added to the run's seed.")


class CoinMethod(Method):
    """random slots kept under the budget (a toy)"""

    name = "coin"
    config_class = CoinConfig
    trains_in_search = False
    metrics = ()

    def search(self, model, ctx: SearchContext) -> SearchResult:
        rng = np.random.default_rng(ctx.seed + self.config.seed_offset)
        scores = {k: rng.random(self.space[k].size) for k in self.space if k != "depth"}
        decision = decide(self.space, scores, ctx.budget.target, what=ctx.budget.what, round_to=ctx.round_to)
        return SearchResult(model, decision, {"coins": {"seed": ctx.seed + self.config.seed_offset}})


@pytest.fixture
def coin_method():
    register_method(CoinMethod)
    yield
    unregister_method("coin")


def test_a_method_from_outside_runs_from_the_command_line(coin_method, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["tests.tiny:TinyNet", "--method", "coin", "--out", str(out), "--quiet", "--budget-flops", "0.85",
                 "--set", "method.seed_offset=3", "--set", "data.input_size=16", "--set", "data.limit_train=64",
                 "--set", "base.epochs=0", "--set", "search.epochs=1", "--set", "finetune.epochs=0",
                 "--set", "export.latency_repeats=0"])
    assert code == 0, capsys.readouterr().err
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "coin" and report["recipe"]["method"] == {"name": "coin", "seed_offset": 3}
    assert report["compressed"]["flops_fraction_fvcore"] <= 0.85
    assert "### coins" in (out / "report.md").read_text()  # the summary rendered as a table
    assert main(["tests.tiny:TinyNet", "--method", "coin", "--set", "method.seed_offset=-1", "--check"]) == 2
    assert "method.seed_offset" in capsys.readouterr().err


def test_the_command_line_offers_only_registered_methods(capsys):
    with pytest.raises(SystemExit):
        main(["resnet18", "--method", "coin"])
    assert "invalid choice: 'coin'" in capsys.readouterr().err
