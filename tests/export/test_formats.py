"""``compressor.json`` formats: format 1 (groups + removed blocks, written before kinds of choice
were plug-ins) still loads and gives the same model; format 2 is the map ``{kind: payload}``."""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from compressor.budget import decision_for_budget
from compressor.decision import Decision
from compressor.export import load_compressed, save_compressed
from compressor.frontend import trace
from compressor.surgery import slice_model
from compressor.zoo import create_model

FIXTURE = Path(__file__).parent.parent / "fixtures" / "format1_cifar_resnet20"


def test_a_format_1_directory_written_by_an_earlier_version_gives_the_same_model(tmp_path):
    arch = json.loads((FIXTURE / "compressor.json").read_text())
    assert arch["format"] == 1 and set(arch["decision"]) == {"groups", "removed_blocks"}
    assert arch["decision"]["removed_blocks"]  # the fixture removes blocks and channels
    io = load_file(str(FIXTURE / "expected.safetensors"))
    model = load_compressed(FIXTURE)
    with torch.no_grad():  # the same model; bits may differ where another CPU's kernels round differently
        torch.testing.assert_close(model(io["x"]), io["y"], rtol=1e-5, atol=1e-6)
    # the same decision read as format 2
    d = Decision.from_dict(arch["decision"])
    assert d["channels"] == arch["decision"]["groups"] and d["depth"] == arch["decision"]["removed_blocks"]


def test_format_2_saves_a_map_of_kinds_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    space = trace(model, x[:1])
    decision = decision_for_budget(space, 0.5, seed=1)
    sliced = slice_model(model, space, decision).eval()
    save_compressed(sliced, tmp_path, source="cifar_resnet20", source_kwargs={"num_classes": 10},
                    input_shape=(1, 3, 16, 16), decision=decision)
    arch = json.loads((tmp_path / "compressor.json").read_text())
    assert arch["format"] == 2 and set(arch["decision"]) == {"channels", "depth"}
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path)(x), sliced(x))
