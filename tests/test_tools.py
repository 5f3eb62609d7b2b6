"""The CI slice of the tools/ benchmarks: the same code paths on small models and few repeats."""
import csv
import json

import pytest

from tools import (
    ablations,
    accuracy,
    cuda_matrix,
    darts_bench,
    frozen_share,
    gate_cost,
    grow_cost,
    latency,
    latency_budget,
    latency_table,
    overhead,
    pipelines,
    sparse_epochs,
)

pytestmark = pytest.mark.slow  # the benchmarks' code paths, several minutes in all; CI runs them


def test_latency_rows():
    rows = latency.measure("resnet18", 64, 0.5, [1, 8], repeats=2, batches=(1, 2))
    assert len(rows) == 4
    for r in rows:
        assert 0.4 < r["flops_fraction"] <= 0.5 and r["original_ms"] > 0 and r["compressed_ms"] > 0
        assert abs(r["ratio"] - r["compressed_ms"] / r["original_ms"]) < 0.01


def test_latency_table_rows(tmp_path, capsys):
    out = tmp_path / "table.csv"
    latency_table.main(["--models", "resnet18", "--size", "32", "--decisions", "2", "--repeats", "3",
                        "--csv", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and all(0 < float(r["predicted"]) <= 1 and float(r["measured"]) > 0 for r in rows)
    assert all(abs(float(r["error"]) - (float(r["predicted"]) / float(r["measured"]) - 1)) < 1e-3 for r in rows)
    printed = capsys.readouterr().out
    assert "| resnet18 |" in printed and "nn-Meter" in printed


def test_latency_budget_rows(tmp_path, capsys):
    out = tmp_path / "budget.csv"
    latency_budget.main(["--models", "resnet18", "--targets", "0.6,0.02", "--batches", "8", "--repeats", "6",
                         "--csv", str(out), "--set", "data.limit_train=128", "--set", "base.epochs=1",
                         "--set", "search.epochs=1", "--set", "finetune.epochs=1", "--set", "export.latency_repeats=2",
                         "--set", "budget.rounds=3", "--set", "budget.repeats=20"])
    row, refused = list(csv.DictReader(out.open()))
    assert 0 < float(row["latency_ratio"]) < 1 and 0 < float(row["flops_target"]) < 1
    assert 1 <= int(row["rounds"]) <= 3 and float(row["flops_ratio"]) > 0 and not row["refused"]
    passes = [float(v) for v in row["latency_passes"].split()]  # measured in 3 passes over the rows
    assert len(passes) == 3 and float(row["latency_ratio"]) == round(sorted(passes)[1], 4)
    assert "the smallest decision measures" in refused["refused"] and not refused["latency_ratio"]
    printed = capsys.readouterr().out
    assert "| resnet18 | 8 | 0.6 |" in printed and "| resnet18 | 8 | 0.02 | refused |" in printed


def test_ablations_variants(monkeypatch):
    """--scs settings reach both temperature variants; accuracy.py's own options pass through."""
    seen = []
    monkeypatch.setattr(accuracy, "main", lambda argv: seen.append(argv) or 0)
    ablations.main(["--scs", "init=importance", "--epochs", "12", "--budgets", "0.25"])
    argv = seen[0]
    assert argv[argv.index("--epochs") + 1] == "12" and argv[argv.index("--budgets") + 1] == "0.25"
    assert [a for a in argv if a.startswith("--variant=")] == [
        "--variant=scs:init=importance,temperature=per_gate", "--variant=scs:init=importance,temperature=global"]
    assert argv[argv.index("--variants") + 1] == "" and "--scs" not in argv


def test_accuracy_equal_epochs(tmp_path, capsys):
    out = tmp_path / "acc.csv"
    accuracy.main(["--models", "cifar_resnet20", "--budgets", "0.5", "--seeds", "0", "--csv", str(out),
                   "--set", "data.limit_train=128", "--set", "data.input_size=16", "--set", "base.epochs=1",
                   "--set", "search.epochs=1", "--set", "finetune.epochs=1"])
    rows = list(csv.DictReader(out.open()))
    assert {r["variant"] for r in rows} == {"scs", "prune"}
    assert all(float(r["flops_fraction_fvcore"]) <= 0.5 for r in rows)
    assert "| cifar_resnet20 | 0.5 | scs |" in capsys.readouterr().out
    # --resume keeps the rows written so far (the file is rewritten after every run) and runs the rest
    accuracy.main(["--models", "cifar_resnet20", "--budgets", "0.5", "--seeds", "0", "--csv", str(out),
                   "--set", "data.limit_train=128", "--set", "data.input_size=16", "--set", "base.epochs=1",
                   "--set", "search.epochs=1", "--set", "finetune.epochs=1", "--resume",
                   "--variants", "scs,prune,prune:distill.teacher=none"])
    resumed = list(csv.DictReader(out.open()))
    assert resumed[:2] == rows and resumed[2]["variant"] == "prune:distill.teacher=none"
    assert "| cifar_resnet20 | 0.5 | prune:distill.teacher=none |" in capsys.readouterr().out


def test_accuracy_against_total_epochs(tmp_path, monkeypatch):
    """--epochs E runs every variant with E epochs split 2:1 into search and fine-tune, labelled @E."""
    assert accuracy.parse_variant("scs:init=importance@12") == ("scs:init=importance@12", "scs",
                                                                 {"method.init": "importance"})
    seen = []
    real = accuracy.compress

    def spy(model, recipe, **kw):
        seen.append((recipe.method.name, recipe.search.epochs, recipe.finetune.epochs))
        return real(model, recipe, **kw)
    monkeypatch.setattr(accuracy, "compress", spy)
    out = tmp_path / "acc.csv"
    accuracy.main(["--models", "cifar_resnet20", "--budgets", "0.5", "--seeds", "0", "--csv", str(out),
                   "--set", "data.limit_train=128", "--set", "data.input_size=16", "--set", "base.epochs=1",
                   "--variants", "prune", "--epochs", "3,6"])
    assert [r["variant"] for r in csv.DictReader(out.open())] == ["prune@3", "prune@6"]
    assert seen == [("prune", 2, 1), ("prune", 4, 2)]


def test_grow_against_scratch_rows(tmp_path, capsys):
    out = tmp_path / "grow.csv"
    grow_cost.main(["--models", "cifar_resnet20", "--seeds", "0", "--csv", str(out), "--variants",
                    "grow", "--variant", "grow:fusion=false,scratch_baseline=false", "--set", "data.limit_train=128", "--set", "data.input_size=16",
                    "--set", "search.epochs=2", "--set", "finetune.epochs=1"])
    rows = list(csv.DictReader(out.open()))
    assert [r["variant"] for r in rows] == ["grow", "grow:fusion=false,scratch_baseline=false"]
    for r in rows:
        assert r["epochs"] == "3" and float(r["flops_fraction_fvcore"]) <= 0.5
    ratio = float(rows[0]["grow_seconds"]) / float(rows[0]["scratch_seconds"])   # both rounded to 0.1 s
    assert float(rows[0]["wall_clock_ratio"]) == pytest.approx(ratio, rel=0.1)
    assert rows[1]["scratch_acc"] == "" and float(rows[1]["grow_seconds"]) > 0   # no baseline trained
    assert "| cifar_resnet20 | grow:fusion=false,scratch_baseline=false |" in capsys.readouterr().out


@pytest.mark.parametrize("method, option, flops", [("scs", None, (1.0, 1.0)),  # gates multiply, no conv
                                                   ("tas", "mixture=cwi", (1.5, 4.0)),  # + a held-out step
                                                   ("grow", None, (0.2, 0.9)),  # a half-width seed
                                                   ("darts", "partial_channels=4", (1.5, 4.0))])
def test_overhead_rows(tmp_path, method, option, flops):
    out = tmp_path / "overhead.csv"
    overhead.main(["--models", "cifar_resnet20", "--size", "16", "--batch", "4", "--steps", "2", "--warmup", "1",
                   "--device", "cpu", "--csv", str(out), "--method", method,
                   *(["--method-set", option] if option else [])])
    (row,) = list(csv.DictReader(out.open()))
    assert row["options"] == (option or "")
    assert float(row["plain_ms"]) > 0 and float(row["gated_ms"]) > 0
    assert float(row["plain_peak_mib"]) > 0 and float(row["gated_peak_mib"]) > 0
    assert abs(float(row["time_ratio"]) - float(row["gated_ms"]) / float(row["plain_ms"])) < 0.01
    assert flops[0] <= float(row["flops_ratio"]) <= flops[1]


def test_sparse_epoch_rows(tmp_path):
    out = tmp_path / "sparse.csv"
    sparse_epochs.main(["--models", "cifar_resnet20", "--size", "16", "--batch", "16", "--samples", "64",
                        "--shares", "0.5", "--repeats", "1", "--csv", str(out)])
    (row,) = list(csv.DictReader(out.open()))
    assert float(row["plain_s"]) > 0 and float(row["whole_s"]) > 0 and float(row["sliced_s"]) > 0
    assert float(row["sliced_over_whole"]) == pytest.approx(float(row["sliced_s"]) / float(row["whole_s"]), rel=0.02)


def test_gate_cost_rows():
    ms = gate_cost.measure("cifar_resnet20", 0.5, size=16, batch=8, repeats=1, warmup=0)
    assert set(ms) == {"plain", "weights", "inputs"} and all(v > 0 for v in ms.values())
    ms = gate_cost.measure("cifar_resnet20", 0.5, size=16, batch=8, repeats=1, warmup=0, blocks_off=2)
    assert set(ms) == {"plain", "weights", "inputs", "cut"} and all(v > 0 for v in ms.values())


def test_pipeline_rows(tmp_path, capsys):
    out = tmp_path / "pipelines.csv"
    pipelines.main(["--models", "cifar_resnet20", "--seeds", "0", "--pipelines", "default", "--pipeline",
                    "scs-grow:base.epochs=0,search.epochs=2", "--csv", str(out), "--set", "data.limit_train=128",
                    "--set", "data.input_size=16", "--set", "base.epochs=1", "--set", "search.epochs=1",
                    "--set", "finetune.epochs=1"])
    first, grow = list(csv.DictReader(out.open()))
    assert first["epochs"] == grow["epochs"] == "3" and float(grow["base_s"]) == 0 < float(first["base_s"])
    assert float(grow["training_vs_first"]) == pytest.approx(float(grow["training_s"]) / float(first["training_s"]), rel=0.05)
    assert "| cifar_resnet20 | scs-grow:base.epochs=0,search.epochs=2 | 3 |" in capsys.readouterr().out


def test_cuda_matrix_rows_on_cpu(tmp_path, capsys):
    """The tool on CPU (CI has no GPU): one case in-process and one under torchrun (gloo)."""
    out = tmp_path / "matrix.csv"
    rc = cuda_matrix.main(["--device", "cpu", "--cases", "cifar_resnet20:prune:bf16",
                           "--case", "cifar_resnet20:prune:ddp-nccl:data.workers=1",
                           "--batch", "0", "--csv", str(out), "--set", "data.limit_train=128",
                           "--set", "data.input_size=16", "--set", "base.epochs=1", "--set", "search.epochs=1",
                           "--set", "finetune.epochs=1", "--set", "export.onnx=false"])
    rows = list(csv.DictReader(out.open()))
    assert rc == 0 and [(r["setting"], r["sets"]) for r in rows] == [("bf16", ""), ("ddp-nccl", "data.workers=1")]
    assert all(r["exit"] == "0" and float(r["finetune_img_s"]) > 0 for r in rows)
    assert "| cifar_resnet20 | prune | bf16 |  | 0 |" in capsys.readouterr().out


def test_frozen_share_rows(capsys):
    (row,) = frozen_share.main(["--models", "cifar_resnet20", "--size", "16"])
    assert 0 < row["prunable"] <= row["groups"]
    assert 0.0 <= row["frozen_flops"] < 0.1 and 0.0 < row["smallest"] < 0.5
    assert "| cifar_resnet20 |" in capsys.readouterr().out


def test_darts_bench_rows(tmp_path, capsys):
    out = tmp_path / "darts.csv"
    darts_bench.main(["--variants", "pc4", "--seeds", "0,1", "--random", "1", "--eval-cells", "3", "--eval-c", "4",
                      "--eval-epochs", "1", "--set", "model_args.c=4", "--set", "model_args.layers=3",
                      "--set", "data.limit_train=96", "--set", "data.batch_size=32", "--set", "search.epochs=2",
                      "--variant-set", "pc4:partial_channels=2", "--csv", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [r["variant"] for r in rows] == ["pc4", "pc4", "random"]
    for r in rows:
        assert 0 <= float(r["test_acc"]) <= 1 and float(r["params_m"]) > 0 and float(r["mflops"]) > 0
        assert 0 <= int(r["normal_skips"]) <= 8 and int(r["peak_mb"]) > 100  # a child process with torch loaded
    assert len(json.loads(rows[0]["edge_strength"])) == 3 * 14 and rows[2]["edge_strength"] == "{}"
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("| pc4 | 2 |"))
    assert -1 <= float(line.split("|")[-2]) <= 1 and "| random | 1 |" in printed
