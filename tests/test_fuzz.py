"""Property-based fuzzing of what a user may be handed (invariant 7): mutated ``compressor.json``
files, recipes and ``--set`` values.  Whatever the mutation, ``compress`` either works or says why
in one line with exit 2: no traceback, no file outside ``--out`` touched, nothing imported or run
that the zoo does not name.  Bounded for CI: a fixed seed (``derandomize``), a deadline per
example and a few dozen examples per property; cases that once failed are kept as ``@example``."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compressor.cli import main
from compressor.budget import decision_for_budget
from compressor.export import save_compressed
from compressor.surgery import slice_model
from compressor.frontend import trace
from compressor.methods import methods
from compressor.recipe import Recipe
from compressor.zoo import create_model

FUZZ = settings(max_examples=30, deadline=timedelta(seconds=30), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BAIT = "tests.fuzz_bait"  # a module that leaves a marker file when imported: no mutation may import it
MODEL = "cifar_resnet20"  # a zoo model small enough to trace in a second
DANGEROUS_SOURCES = ["subprocess:run", "os:system", "builtins:eval", f"{BAIT}:build", "tests.tiny:TinyNet",
                     "timm:../../x", "torchvision:resnet18", "", ":", "resnet18:", "compressor.api:compress"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


def _snapshot(root: Path, skip: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and skip not in p.parents}


@contextmanager
def _sandbox(monkeypatch):
    """A fresh working directory; yields it and the ``--out`` directory beneath it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        monkeypatch.chdir(root)
        yield root, root / "out"


def _assert_safe_outcome(args: list[str], root: Path, out: Path) -> None:
    """``compress ARGS`` exits 0, or 2 with one line and no traceback; nothing outside ``out``
    changes and the bait is never imported."""
    before = _snapshot(root, out)
    err = StringIO()
    with redirect_stderr(err), redirect_stdout(StringIO()):
        code = main(args)
    text = err.getvalue().strip()
    assert code in (0, 2), (code, text)
    if code == 2:
        assert len(text.splitlines()) == 1 and text.startswith("compress: error:"), text
    assert "Traceback" not in text
    assert _snapshot(root, out) == before
    assert BAIT not in sys.modules and not (Path(__file__).parent / "fuzz_bait_ran").exists()


# -- compressor.json ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=10).eval()
    x = torch.randn(1, 3, 16, 16)
    space = trace(model, x)
    decision = decision_for_budget(space, 0.5, seed=0)
    d = tmp_path_factory.mktemp("fuzz") / "run"
    save_compressed(slice_model(model, space, decision), d, source=MODEL, source_kwargs={"num_classes": 10},
                    input_shape=tuple(x.shape), decision=decision)
    return d, [g.name for g in space["channels"].groups], [b.name for b in space["depth"].blocks]


@st.composite
def manifest_mutations(draw, groups: list[str], blocks: list[str]):
    """A list of edits ``(path, value)`` of compressor.json (value ``...`` deletes the key)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["top", "source", "kwargs", "shape", "units", "blocks", "delete"]))
        if kind == "top":
            key = draw(st.sampled_from(["format", "source", "source_kwargs", "input_shape", "round_to", "decision",
                                        "extra"]))
            edits.append(((key,), draw(json_values)))
        elif kind == "source":
            edits.append((("source",), draw(st.sampled_from(DANGEROUS_SOURCES) | st.text(max_size=30))))
        elif kind == "kwargs":
            edits.append((("source_kwargs",), draw(st.dictionaries(
                st.sampled_from(["num_classes", "img_size", "checkpoint_path", "pretrained"]) | st.text(max_size=8),
                json_values, max_size=3))))
        elif kind == "shape":
            edits.append((("input_shape",), draw(st.lists(st.integers(-3, 10**6), max_size=6))))
        elif kind == "units":
            name = draw(st.sampled_from(groups) | st.text(max_size=10))
            units = draw(st.lists(st.integers(-2, 10**10) | st.integers(0, 70), max_size=8))
            edits.append((("decision", "groups", name), units))
        elif kind == "blocks":
            edits.append((("decision", "removed_blocks"), draw(st.lists(st.sampled_from(blocks) | st.text(max_size=8),
                                                                       max_size=4))))
        else:
            edits.append(((draw(st.sampled_from(["format", "source", "input_shape", "decision"])),), ...))
    return edits


def _apply(arch: dict, edits: list) -> dict:
    for path, value in edits:
        node = arch
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if value is ...:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return arch


def _manifest_property(saved, monkeypatch, edits, trust: bool = False) -> None:
    src, _, _ = saved
    with _sandbox(monkeypatch) as (root, out):
        run = root / "run"
        shutil.copytree(src, run)
        arch = _apply(json.loads((run / "compressor.json").read_text()), edits)
        (run / "compressor.json").write_text(json.dumps(arch))
        _assert_safe_outcome(["export", str(run), "--output", str(out / "m.onnx")], root, out)


@FUZZ
@given(data=st.data())
@example(data=None)  # the untouched directory exports
def test_mutated_manifests_export_or_are_refused_in_one_line(saved, monkeypatch, data):
    _, groups, blocks = saved
    edits = [] if data is None else data.draw(manifest_mutations(groups, blocks))
    _manifest_property(saved, monkeypatch, edits)


@pytest.mark.parametrize("edits", [
    [(("source",), "subprocess:run"), (("source_kwargs",), {"args": ["touch", "marker"]})],
    [(("source",), f"{BAIT}:build")],
    [(("input_shape",), [1, 3, 300000, 300000])],
    [(("decision", "groups", "conv1"), [0, 10**9])],
    [(("source_kwargs",), {"num_classes": True})],  # bool is not an int here
    [(("input_shape",), [])],
], ids=["subprocess", "bait", "terabyte", "unit-1e9", "bool-classes", "empty-shape"])
def test_kept_manifest_cases(saved, monkeypatch, edits):
    _manifest_property(saved, monkeypatch, edits)


# -- recipes and --set --------------------------------------------------------------------------------
def _recipe_keys() -> list[str]:
    def walk(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield prefix + k
    method = {f"method.{k}" for cls in methods().values() for k in cls.config_class.model_fields}
    return sorted(set(walk(Recipe().to_dict())) | method | {"method.self_distill.k", "nonsense.key", "rules",
                                                           "choices"})


KEYS = _recipe_keys()
TINY = {"data": {"input_size": 16, "limit_train": 64}, "base": {"epochs": 0}, "run": {"progress": False}}
scalar_values = (st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(-10, 10) | st.text(max_size=12)
                 | st.sampled_from(["scs", "prune", "tas", "grow", "cuda", "bf16", "magnitude", "original",
                                    "resnet51", "nowhere/w.pt", "[1, 2]", "{a: 1}", "!!python/object:os.system"]))


def _nested(path: str, value) -> dict:
    out: dict = {}
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def _merge(a: dict, b: dict) -> dict:
    for k, v in b.items():
        a[k] = _merge(a[k], v) if isinstance(a.get(k), dict) and isinstance(v, dict) else v
    return a


def _no_filesystem_scan(edit) -> bool:
    """A data path at the filesystem root or above the sandbox would make ImageFolder walk the
    whole disk: a slow run, not a safety problem; keep the fuzzer inside its sandbox."""
    key, value = edit
    return not (key.endswith("path") and isinstance(value, str) and value.strip().startswith(("/", "..", "~")))


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(KEYS), scalar_values | json_values).filter(_no_filesystem_scan),
                      min_size=1, max_size=3))
@example(edits=[("data.input_size", 16384)])  # found: traced at any size the recipe allowed (now refused)
def test_mutated_recipes_check_out_or_are_refused_in_one_line(monkeypatch, edits):
    recipe = json.loads(json.dumps(TINY))
    for key, value in edits:
        recipe = _merge(recipe, _nested(key, value))
    with _sandbox(monkeypatch) as (root, out):
        (root / "r.yaml").write_text(yaml.safe_dump(recipe))
        _assert_safe_outcome([MODEL, "--recipe", str(root / "r.yaml"), "--check", "--out", str(out)], root, out)
        assert not out.exists()


@FUZZ
@given(sets=st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=10),
                               st.text(max_size=16) | scalar_values.map(str)).filter(_no_filesystem_scan),
                     min_size=1, max_size=3))
@example(sets=[("search.epochs", "{")])  # found: a value that is not YAML was a traceback
@example(sets=[("method.name", "!!python/object/apply:os.system ['touch marker']")])
def test_mutated_set_values_check_out_or_are_refused_in_one_line(monkeypatch, sets):
    args = [MODEL, "--check", "--set", "data.input_size=16", "--set", "data.limit_train=64", "--set", "base.epochs=0"]
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    with _sandbox(monkeypatch) as (root, out):
        _assert_safe_outcome([*args, "--out", str(out)], root, out)
        assert not out.exists() and not (root / "marker").exists()
