"""The DARTS search space on the op kind: every cell edge a site over the 8 primitives, the
discretisation (2 edges per node, tied cells), exact surgery and costs, and a tiny search run."""
import copy
import functools
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compressor.budget import choose_options
from compressor.choices.candidates import ITSELF, label
from compressor.choices.mixed_op import window_forward
from compressor.cli import main
from compressor.decision import Decision
from compressor.export import load_compressed
from compressor.export.flops import fvcore_flops
from compressor.frontend import trace
from compressor.gates.outputs import gated_output
from compressor.invariants import TOL_SLICE, relative_diff
from compressor.methods.darts_arch import OpLogits, strongest_in_groups
from compressor.models import GENOTYPES
from compressor.models.darts_cells import parse_genotype
from compressor.models.darts_search import EDGE_OP, PRIMITIVES, darts_search, search_primitive
from compressor.surgery import slice_model
from compressor.zoo import create_model

LAYERS, EDGES = 3, 14  # cells 1 and 2 reduce


@functools.lru_cache(maxsize=1)
def _traced():
    torch.manual_seed(0)
    model = darts_search(num_classes=10, c=4, layers=LAYERS).eval()
    x = torch.randn(2, 3, 16, 16)
    return model, x, trace(model, x[:1], kinds=["op"], candidates=list(PRIMITIVES))


def _edges(space):
    return [s for s in space["op"].sites if s.site.kind == "edge"]


def test_every_edge_is_a_site_over_the_eight_primitives_and_nothing_inside_it_is():
    _, _, space = _traced()
    edges = _edges(space)
    assert len(edges) == LAYERS * EDGES
    for s in edges:
        assert {label(o) for o in s.options} == {ITSELF} | set(PRIMITIVES) - {EDGE_OP}
    assert not any(".edges." in s.name and s.site.kind != "edge" for s in space["op"].sites)
    others = [s for s in space["op"].sites if s.site.kind != "edge"]
    assert others and all(len(s.options) == 1 for s in others)  # stem, preprocessing, classifier: no candidate
    assert len(space["op"].groups()) == LAYERS * 4 and all(keep == 2 for _, keep, _ in space["op"].groups())
    assert sorted(len(t) for t in space["op"].ties()) == [2] * EDGES  # the two reduction cells


def test_a_decision_meets_the_cell_rules_slices_exactly_and_costs_what_fvcore_counts():
    model, x, space = _traced()
    scores = np.random.default_rng(0).random(space["op"].size)
    decision = choose_options(space, "op", scores, 0.9)
    chosen = decision["op"]
    sites = space["op"].sites
    for members, keep, _ in space["op"].groups():
        on = [chosen.get(sites[i].name, {"op": EDGE_OP})["op"] != "none" for i in members]
        assert sum(on) == keep
    for tie in space["op"].ties():
        assert len({json.dumps(chosen.get(sites[i].name, {}), sort_keys=True) for i in tie}) == 1
    sliced = slice_model(model, space, decision).eval()
    with torch.no_grad():
        ys = sliced(x)
    assert relative_diff(ys, gated_output(model, space, decision, x)) <= TOL_SLICE
    assert decision.flops(space) == pytest.approx(fvcore_flops(sliced, x[:1]), rel=1e-9)
    assert round(decision.params(space)) == sum(p.numel() for p in sliced.parameters())


def test_each_node_keeps_its_two_strongest_non_off_edges():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.6, 0.35, 0.05], [0.2, 0.7, 0.1]])
    choice = strongest_in_groups(p, [([0, 1, 2], 2, [0, 0, 0])])
    assert choice.tolist() == [0, 2, 1, 1]  # row 0 is off (its best non-off 0.3 is the weakest); row 3 ungrouped


def test_cells_of_one_type_share_their_architecture_logits():
    _, _, space = _traced()
    arch = OpLogits(space)
    assert arch.alpha.shape[0] == 2 * EDGES  # one normal and one reduction cell's worth
    with torch.no_grad():
        arch.alpha.normal_()
    p = arch.probabilities()
    rows = {s.name: i for i, s in enumerate(arch.sites)}
    assert torch.equal(p[rows["cells.1.edges.5"]], p[rows["cells.2.edges.5"]])
    assert not torch.equal(p[rows["cells.0.edges.5"]], p[rows["cells.1.edges.5"]])


def test_a_tiny_search_runs_end_to_end_and_reports_its_cells(tmp_path):
    out = tmp_path / "run"
    assert main(["darts_search", "--recipe", "darts-cifar10-cpu", "--set", "model_args.c=4",
                 "--set", f"model_args.layers={LAYERS}", "--set", "data.limit_train=96", "--set", "data.batch_size=32",
                 "--set", "search.epochs=1", "--set", "finetune.epochs=1", "--set", "export.latency_repeats=0",
                 "--set", "run.progress=false", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    found = report["method_summary"]["genotype"]
    genotype = parse_genotype(json.dumps(found))
    assert len(genotype.normal) == len(genotype.reduce) == 8
    assert all(op in PRIMITIVES and op != "none" for op, _ in genotype.normal + genotype.reduce)
    net = create_model("darts_network", genotype=json.dumps(found), c=4, layers=LAYERS).eval()
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 10)  # the found cells build the discrete network
    text = (out / "report.md").read_text()
    assert "normal cell" in text and text.count("(cells.png)") == 1 and (out / "cells.png").is_file()
    assert report["cells"] is None  # (the search network's cells are the decision's, in method_summary)
    loaded = load_compressed(out).eval()  # rebuilt from darts_search(**model_args) and the candidate registry
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = loaded(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], want, rtol=1e-3, atol=1e-4)


def test_a_deeper_network_starts_from_the_options_a_shallower_one_kept():
    """P-DARTS's growing depth: ties name the same rows at any depth, so what a 3-cell search
    kept is what the 4-cell one may choose from, row by row."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    shallow, deep = (OpLogits(trace(darts_search(num_classes=10, c=4, layers=n).eval(), x, kinds=["op"],
                                    candidates=list(PRIMITIVES))) for n in (3, 4))
    assert shallow.row_keys == deep.row_keys and len(deep.row_keys) == 2 * EDGES
    with torch.no_grad():
        shallow.alpha.normal_()
    top = shallow._row_probabilities().topk(3, dim=1).indices
    shallow.drop(3)
    deep.restrict(shallow.kept())
    assert [set(r.nonzero().flatten().tolist()) for r in deep.allowed] == [set(t.tolist()) for t in top]
    p = deep.probabilities()
    assert torch.all((p > 0).sum(1) == 3) and torch.allclose(p.sum(1), torch.ones(len(p)))


def test_a_growing_p_darts_search_runs_its_stages_on_their_own_depths(tmp_path):
    out = tmp_path / "run"
    assert main(["darts_search", "--recipe", "p-darts-cifar10-cpu", "--set", "model_args.c=4",
                 "--set", "model_args.layers=4", "--set", "method.stages=[3]", "--set", "method.stage_layers=[3]",
                 "--set", "method.skip_dropout=[0.2,0.6]", "--set", "data.limit_train=96", "--set", "data.batch_size=32",
                 "--set", "search.epochs=2", "--set", "finetune.epochs=1", "--set", "export.latency_repeats=0",
                 "--set", "run.progress=false", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["history"]["search"]
    assert [r["stage"] for r in rows] == [1, 2] and [r["skip_dropout"] for r in rows] == [0.2, 0.6]
    first = torch.load(out / "checkpoints" / "search-stage1.pt", weights_only=True)["model"]
    last = torch.load(out / "checkpoints" / "search.pt", weights_only=True)["model"]
    alpha, allowed = first["controller.alpha"], last["controller.allowed"]
    assert first["controller.index"].shape[0] == 3 * EDGES and last["controller.index"].shape[0] == 4 * EDGES
    assert [set(r.nonzero().flatten().tolist()) for r in allowed] == \
        [set(t.tolist()) for t in alpha.topk(3, dim=1).indices]  # stage 2 searched what stage 1 kept
    chosen = report["method_summary"]["alpha_of_chosen"]
    assert all(len(ps) == 2 for ps in chosen.values())  # one point per epoch of both stages
    genotype = parse_genotype(json.dumps(report["method_summary"]["genotype"]))
    assert len(genotype.normal) == len(genotype.reduce) == 8  # 2 edges per node, though stage 1 dropped none
    assert (out / "model.onnx").is_file()


def test_model_args_that_the_model_does_not_take_are_one_line(capsys):
    assert main(["darts_search", "--recipe", "darts-cifar10-cpu", "--set", "model_args.width=3", "--check"]) == 2
    assert "model_args: darts_search does not take" in capsys.readouterr().err
    assert main(["darts_network", "--set", 'model_args.genotype={"normal": [["conv_9x9", 0]]}', "--check"]) == 2
    assert "model_args: genotype.normal" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("darts_v9", "neither a published genotype"),
    ('{"normal": [["sep_conv_3x3", 0], ["skip_connect", 5]], "reduce": []}', r"genotype.normal\[1\]"),
    ('{"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "reduce": [["max_pool_3x3", 0]]}', "genotype.reduce"),
])
def test_a_genotype_that_is_not_one_is_refused_saying_where(text, message):
    with pytest.raises(ValueError, match=message):
        parse_genotype(text)
    assert parse_genotype("darts_v2") == GENOTYPES["darts_v2"]


def test_the_decision_names_only_edge_sites():
    _, _, space = _traced()
    rng = np.random.default_rng(1)
    d = choose_options(space, "op", rng.random(space["op"].size), 0.9)
    assert set(d["op"]) <= {s.name for s in _edges(space)} and isinstance(d, Decision)


@pytest.mark.parametrize("name", [p for p in PRIMITIVES] + ["skip_connect@2", "max_pool_3x3@2", "sep_conv_3x3@2"])
@pytest.mark.parametrize("start", [0, 4])
def test_an_operation_on_a_window_of_its_channels_is_the_whole_one_on_those_channels_alone(name, start):
    """PC-DARTS's partial channels: every primitive on 4 of its 8 channels equals the whole
    primitive with its weights between those channels and the others zeroed, fed those channels
    with zeros elsewhere (fresh BN statistics map zero to zero), read on the same channels; in
    training, the window's running statistics move and no others."""
    name, stride = (name.split("@")[0], int(name.split("@")[1])) if "@" in name else (name, 1)
    torch.manual_seed(0)
    op = search_primitive(name, 8, stride).eval()
    window = slice(start, start + 4)
    inside = torch.zeros(8, dtype=torch.bool)
    inside[window] = True
    masked = copy.deepcopy(op)
    for path, m in masked.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups == 1:  # (a factorised reduction's conv_b: channels 4-7)
            rows = inside[4:] if path.endswith("conv_b") else inside[:m.out_channels]
            with torch.no_grad():
                m.weight.mul_((rows[:, None] == inside[None, :]).to(m.weight)[:, :, None, None])
    x = torch.randn(2, 4, 8, 8)
    padded = torch.zeros(2, 8, 8, 8)
    padded[:, window] = x
    with torch.no_grad():
        torch.testing.assert_close(window_forward(op, x, window), masked(padded)[:, window], rtol=1e-5, atol=1e-6)
    norms = [m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    window_forward(op.train(), x, window)
    for m, old in zip(norms, before):
        outside = torch.ones(8, dtype=torch.bool)
        outside[window] = False
        assert torch.equal(m.running_mean[outside], old[outside]) and not torch.equal(m.running_mean[window], old[window])


def test_a_pc_darts_edge_mixes_a_window_and_passes_the_other_channels_by():
    """One-hot on skip_connect at stride 1: the window is the identity and so is the bypass; on
    sep_conv_3x3 the channels outside the window are the input's, and inside they are not."""
    from compressor.choices.mixed_op import MixedOp

    _, _, space = _traced()
    choice = space["op"].site("cells.0.edges.0")  # stride 1, 4 channels
    edge = darts_search(num_classes=10, c=4, layers=LAYERS).cells[0].edges[0]
    values = {"op": torch.zeros(space["op"].size)}
    mixed = MixedOp(edge, choice, values).eval()
    mixed.partial = 2
    x = torch.randn(2, 4, 8, 8)
    values["op"][choice.offset + choice.index({"op": "skip_connect"})] = 1.0
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), x)
        values["op"].zero_()
        values["op"][choice.offset + choice.index({"op": "sep_conv_3x3"})] = 1.0
        mixed.advance()  # the second window: channels 2 and 3
        y = mixed(x)
    assert torch.equal(y[:, :2], x[:, :2]) and not torch.allclose(y[:, 2:], x[:, 2:])


def test_edge_normalisation_weighs_each_nodes_edges_by_a_softmax_shared_by_cells_of_a_type():
    _, _, space = _traced()
    arch = OpLogits(space, edge_norm=True)
    assert arch.beta.shape == (2 * 4, 5)  # a normal and a reduction cell's 4 nodes, up to 5 edges each
    with torch.no_grad():
        arch.beta.normal_()
    rows = {s.name: i for i, s in enumerate(arch.sites)}
    e = arch.edge_weights().detach()
    node5 = [rows[f"cells.1.edges.{j}"] for j in range(9, 14)]  # node 5: edges 9-13
    assert float(e[node5].sum()) == pytest.approx(1.0)
    assert torch.equal(e[rows["cells.1.edges.3"]], e[rows["cells.2.edges.3"]])
    torch.testing.assert_close(arch.weights(), arch.probabilities() * e[:, None])
    assert float(OpLogits(space).edge_weights().min()) == 1.0


def test_a_tiny_pc_darts_search_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(["darts_search", "--recipe", "pc-darts-cifar10-cpu", "--set", "model_args.c=4",
                 "--set", f"model_args.layers={LAYERS}", "--set", "method.partial_channels=2",
                 "--set", "data.limit_train=96", "--set", "data.batch_size=32", "--set", "search.epochs=2",
                 "--set", "finetune.epochs=1", "--set", "export.latency_repeats=0", "--set", "run.progress=false",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())["method_summary"]
    assert summary["partial_channels"] == {"K": 2, "sites": LAYERS * EDGES, "of": LAYERS * EDGES}
    assert len(parse_genotype(json.dumps(summary["genotype"])).normal) == 8


def test_edge_normalisation_without_groups_is_one_line(capsys):
    assert main(["resnet18", "--method", "darts", "--set", "choices=[op]", "--set", "method.edge_normalization=true",
                 "--check"]) == 2
    assert "method.edge_normalization: no op site declares a group" in capsys.readouterr().err
