"""A run directory from someone else is hostile input (invariant 7): nothing it names is imported
or called without ``trust_source``, and every damaged file is one line naming the file and field,
exit 2, nothing written."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import compressor.machine as machine_module
from compressor.cli import main
from compressor.budget import decision_for_budget
from compressor.export import SavedModelError, export_onnx, load_compressed, save_compressed
from compressor.surgery import slice_model
from compressor.export.manifest import UntrustedSourceError
from compressor.frontend import trace
from compressor.zoo import create_model
from tests.tiny import TinyNet

X = torch.randn(2, 3, 16, 16)


def _save(model, directory: Path, source: str, kwargs=None) -> torch.nn.Module:
    model = model.eval()
    space = trace(model, X[:1])
    decision = decision_for_budget(space, 0.5, seed=0)
    sliced = slice_model(model, space, decision).eval()
    save_compressed(sliced, directory, source=source, source_kwargs=kwargs, input_shape=(1, 3, 16, 16),
                    decision=decision)
    return sliced


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A zoo model's run directory (compressor.json, model.safetensors, model.onnx)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("saved") / "run"
    sliced = _save(create_model("cifar_resnet20", num_classes=10), d, "cifar_resnet20", {"num_classes": 10})
    export_onnx(sliced, d / "model.onnx", X[:1])
    return d, sliced


def _copy(saved, tmp_path: Path, **arch) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(saved[0], d)
    if arch:
        a = json.loads((d / "compressor.json").read_text())
        a.update(arch)
        (d / "compressor.json").write_text(json.dumps(a))
    return d


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _refused(args: list[str], root: Path, capsys) -> str:
    """``compress ARGS`` exits 2 with one line on stderr, no traceback, and ``root`` unchanged."""
    before = _snapshot(root)
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("compress: error:") and "Traceback" not in err, err
    assert _snapshot(root) == before
    return err


def test_a_source_that_names_code_is_refused_and_never_runs(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    d = _copy(saved, tmp_path, source="subprocess:run", source_kwargs={"args": ["touch", str(marker)]})
    for args in (["eval", str(d)], ["export", str(d), "--output", str(tmp_path / "m.onnx")]):
        err = _refused(args, tmp_path, capsys)
        assert "'subprocess:run' names code to run" in err and "--trust-source" in err and "original=" in err
    with pytest.raises(UntrustedSourceError, match="trust_source=True"):
        load_compressed(d)
    assert not marker.exists()


def test_a_trusted_code_source_loads(tmp_path, capsys):
    torch.manual_seed(0)
    d = tmp_path / "mine"
    sliced = _save(TinyNet(), d, "tests.tiny:TinyNet")
    with pytest.raises(UntrustedSourceError):
        load_compressed(d)
    with torch.no_grad():
        assert torch.equal(load_compressed(d, trust_source=True)(X), sliced(X))
    _refused(["export", str(d), "--output", str(tmp_path / "m.onnx")], tmp_path, capsys)
    assert main(["export", str(d), "--output", str(tmp_path / "m.onnx"), "--trust-source"]) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out


def test_an_intact_directory_loads_and_evaluates(saved, capsys):
    d, sliced = saved
    with torch.no_grad():
        assert torch.equal(load_compressed(d)(X), sliced(X))
    assert main(["eval", str(d)]) == 0
    assert "model.onnx: onnxruntime vs PyTorch" in capsys.readouterr().out


def _truncate(d: Path) -> None:
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) - 100])


def _reshape_a_tensor(d: Path) -> None:
    state = load_file(str(d / "model.safetensors"))
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key] = torch.zeros(1, *state[key].shape[1:])
    save_file(state, str(d / "model.safetensors"))


def _nan_weight(d: Path) -> None:
    state = load_file(str(d / "model.safetensors"))
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key][0, 0, 0, 0] = float("nan")
    save_file(state, str(d / "model.safetensors"))


def _onnx_reaching_out(d: Path) -> None:
    import onnx

    from onnx.external_data_helper import set_external_data

    proto = onnx.load(str(d / "model.onnx"))
    tensor = proto.graph.initializer[0]
    set_external_data(tensor, location="../outside.bin")  # (nothing is written there)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    onnx.save_model(proto, str(d / "model.onnx"))


def _group_and_units(d: Path, units: list[int]) -> dict:
    arch = json.loads((d / "compressor.json").read_text())
    groups = dict(arch["decision"]["channels"])
    groups[next(iter(groups))] = units
    return {**arch["decision"], "channels": groups}


CASES = {  # what is damaged -> the text the one line must hold
    "terabyte-input": (lambda d: {"input_shape": [1, 3, 300000, 300000]}, "compressor.json: input_shape"),
    "unit-1e9": (lambda d: {"decision": _group_and_units(d, [0, 10**9])}, "decision: group"),
    "negative-unit": (lambda d: {"decision": _group_and_units(d, [-1, 0])}, "decision: group"),
    "unknown-block": (lambda d: {"decision": {"depth": ["nowhere#0"]}}, "unknown residual block 'nowhere#0'"),
    "string-units": (lambda d: {"decision": {"channels": {"conv1": "0,1"}}}, "decision: channels: expected"),
    "format-1-string-units": (lambda d: {"format": 1, "decision": {"groups": {"conv1": "0,1"}, "removed_blocks": []}},
                              "decision.groups.conv1"),
    "unknown-kind": (lambda d: {"decision": {"colours": [1]}}, "decision: decision names unknown choice kind"),
    "bool-unit": (lambda d: {"decision": {"channels": {"conv1": [True]}}}, "lists True, not a unit index"),
    "format-9": (lambda d: {"format": 9}, "compressor.json: format"),
    "unknown-field": (lambda d: {"plugins": ["x"]}, "plugins: unknown field"),
    "untrusted-kwarg": (lambda d: {"source_kwargs": {"checkpoint_path": "/etc/passwd"}},
                        "source_kwargs.checkpoint_path: not a constructor argument compress writes"),
    "huge-classes": (lambda d: {"source_kwargs": {"num_classes": 10**12}}, "source_kwargs.num_classes"),
    "unknown-model": (lambda d: {"source": "resnet51"}, "source: unknown model 'resnet51'"),
    "round-to-zero": (lambda d: {"round_to": 0}, "round_to"),
    "truncated-weights": (_truncate, "model.safetensors: not a complete safetensors file"),
    "reshaped-weights": (_reshape_a_tensor, "model.safetensors: "),
    "nan-weights": (_nan_weight, "holds non-finite values"),
    "onnx-reaches-out": (_onnx_reaching_out, "outside the model's directory"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_damaged_directory_is_one_line_and_exit_2(case, saved, tmp_path, capsys):
    d = _copy(saved, tmp_path)
    damage, text = CASES[case]
    change = damage(d)
    if change:
        _copy_arch(d, change)
    err = _refused(["eval", str(d)], tmp_path, capsys)
    assert text in err and str(d) in err, err


def _copy_arch(d: Path, change: dict) -> None:
    a = json.loads((d / "compressor.json").read_text())
    a.update(change)
    (d / "compressor.json").write_text(json.dumps(a))


def test_not_json_and_not_a_directory(saved, tmp_path, capsys):
    d = _copy(saved, tmp_path)
    (d / "compressor.json").write_text("{not json")
    assert "compressor.json: <file>: not valid JSON" in _refused(["eval", str(d)], tmp_path, capsys)
    (d / "report.json").write_text('{"recipe": "/etc/some.yaml"}')
    (d / "compressor.json").write_text((saved[0] / "compressor.json").read_text())
    assert "report.json: recipe: must be a mapping" in _refused(["eval", str(d)], tmp_path, capsys)
    assert "is not a directory" in _refused(["eval", str(tmp_path / "nowhere")], tmp_path, capsys)


def test_input_shape_beyond_free_memory(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine_module, "available_memory", lambda: 2**30)
    d = _copy(saved, tmp_path, input_shape=[1, 3, 4096, 4096])
    err = _refused(["eval", str(d)], tmp_path, capsys)
    assert "tracing at this shape needs about 12.0 GiB and 1.0 GiB is free" in err
    with pytest.raises(SavedModelError, match="input_shape"):
        load_compressed(d)
