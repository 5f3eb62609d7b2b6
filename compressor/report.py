"""The run report: ``report.json`` (everything measured), ``report.md`` (the same, for people) and
PNG plots (per-layer widths before/after; accuracy and cost per epoch).

FLOPs are multiply-accumulates at the run's input size, given twice: by our cost model and by
fvcore on the sliced model (with an attention handle, which fvcore lacks).  Latency is
onnxruntime on this machine's CPU, original and compressed measured side by side (medians).
"""
from __future__ import annotations

import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .decision import Decision
from .export.onnx import OnnxExport
from .export.flops import fvcore_flops
from .export.latency import latency_vs_original
from .methods.followup import FollowUp
from .recipe import Recipe
from .space import Space
from .markdown import cell, table
from .plotting import pyplot
from .models.cell_drawing import cells_of, draw_cells, genotype_lines
from .space.kinds import get_kind
from .train import Evaluation


class Stopwatch:
    """``with clock("stage"):`` accumulates wall seconds per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_report(*, name: str, recipe: Recipe, space: Space, decision: Decision, method, original: nn.Module,
                 compressed: nn.Module, example: torch.Tensor, accuracy: tuple[Evaluation, Evaluation],
                 onnx: OnnxExport | None, out: Path, history: dict[str, list], method_summary: dict,
                 clock: Stopwatch, data: dict[str, Any], rules: dict[str, list[str]] | None = None,
                 dist_world: int = 1, int8: dict[str, Any] | None = None,
                 then: list[FollowUp] | None = None, latency_budget: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure the original and the compressed model and gather the run's facts in one dict
    (``data``: where the images and the original's weights came from, and the transforms;
    ``int8``: what export_int8 found; ``then``: pruning steps after the method's decision;
    ``latency_budget``: a latency budget's table and rounds, compressor.latency.budget_summary)."""
    last = then[-1] if then else None  # the pruning that followed the method's decision, if any
    full_cost = float(space.cost.flops())
    kept_cost = last.decision.flops(last.space) if last else decision.flops(space)
    fv_orig, fv_comp = fvcore_flops(original, example), fvcore_flops(compressed, example)
    p_orig, p_comp = _params(original), _params(compressed)
    return {
        "model": name,
        "method": recipe.method.name,
        "budget": {"what": recipe.budget.what, "target": recipe.budget.target},
        "input_shape": list(example.shape),
        "original": {"flops_cost_model": full_cost, "flops_fvcore": fv_orig, "params": p_orig,
                     "test_accuracy": accuracy[0].top1, "test_top5": accuracy[0].top5},
        "compressed": {"flops_cost_model": kept_cost, "flops_fvcore": fv_comp, "params": p_comp,
                       "test_accuracy": accuracy[1].top1, "test_top5": accuracy[1].top5,
                       "flops_fraction_cost_model": kept_cost / full_cost,
                       "flops_fraction_fvcore": fv_comp / fv_orig, "params_fraction": p_comp / p_orig},
        "data": data,
        "onnx": {"file": "model.onnx", **onnx._asdict()} if onnx is not None else None,
        "latency_ms": _latency(recipe, original, example, out, clock, int8=int8 is not None),
        "int8": int8,
        "latency_budget": latency_budget,
        "choices": {**{kind: get_kind(kind).summary(space[kind], decision.get(kind)) for kind in space},
                    **{f"{kind} (then)": get_kind(kind).summary(step.space[kind], step.decision.get(kind))
                       for step in then or [] for kind in step.space}},
        "rules": rules or {},
        "cells": cells_of(original),
        "decision": decision.to_dict(),
        "method_summary": method_summary,
        "method_section": method.report(method_summary),
        "method_plots": method.plots(method_summary, out),
        "metrics": list(method.metrics),
        "history": history,
        "seconds": clock.seconds,
        "recipe": recipe.to_dict(),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "processes": dist_world,
                        "cuda": torch.cuda.is_available()},
        "notes": "FLOPs are multiply-accumulates at the input shape; fvcore counted with an added handle "
                 "for scaled_dot_product_attention. Latency: onnxruntime CPU, one session at a time, models taking turns, medians of repeats.",
    }


def _latency(recipe: Recipe, original: nn.Module, example: torch.Tensor, out: Path, clock: Stopwatch, *,
             int8: bool = False) -> dict:
    """onnxruntime latency of the original and the compressed model (and its int8 file), side by side."""
    if not (recipe.export.onnx and recipe.export.latency_repeats):
        return {}
    files = {"compressed": out / "model.onnx", **({"int8": out / "model.int8.onnx"} if int8 else {})}
    with clock("latency"):
        ms = latency_vs_original(original, example, files, opset=recipe.export.opset,
                                 repeats=recipe.export.latency_repeats)
    return {str(b): {**v, "ratio": v["compressed"] / v["original"],
                     **({"int8_ratio": v["int8"] / v["compressed"]} if int8 else {})} for b, v in ms.items()}


def write_report(report: dict[str, Any], out: Path) -> None:
    """``report.json``, ``report.md`` and the plots into ``out``."""
    plots = _plots(report, out) + report.get("method_plots", [])
    (out / "report.md").write_text(_markdown(report, plots))
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "report.json")


def _markdown(r: dict[str, Any], plots: list[str]) -> str:
    o, c = r["original"], r["compressed"]
    lines = [f"# {r['model']} compressed with `{r['method']}` to {r['budget']['target']:g} of its {r['budget']['what']}",
             "", f"Input {'x'.join(map(str, r['input_shape']))}.  {r['notes']}", "",
             "| | original | compressed | ratio |", "|---|---:|---:|---:|",
             f"| FLOPs (cost model) | {o['flops_cost_model'] / 1e6:.2f} M | {c['flops_cost_model'] / 1e6:.2f} M "
             f"| {c['flops_fraction_cost_model']:.3f} |",
             f"| FLOPs (fvcore) | {o['flops_fvcore'] / 1e6:.2f} M | {c['flops_fvcore'] / 1e6:.2f} M "
             f"| {c['flops_fraction_fvcore']:.3f} |",
             f"| params | {o['params'] / 1e6:.3f} M | {c['params'] / 1e6:.3f} M | {c['params_fraction']:.3f} |",
             f"| test accuracy | {100 * o['test_accuracy']:.2f}% | {100 * c['test_accuracy']:.2f}% "
             f"| {100 * (c['test_accuracy'] - o['test_accuracy']):+.2f} pt |",
             f"| test top-5 accuracy | {100 * o['test_top5']:.2f}% | {100 * c['test_top5']:.2f}% "
             f"| {100 * (c['test_top5'] - o['test_top5']):+.2f} pt |"]
    for b, v in r["latency_ms"].items():
        lines.append(f"| onnxruntime CPU latency, batch {b} | {v['original']:.2f} ms | {v['compressed']:.2f} ms "
                     f"| {v['ratio']:.3f} |")
    if r["onnx"]:
        lines += ["", f"ONNX: `{r['onnx']['file']}` ({r['onnx']['exporter']} exporter, opset {r['onnx']['opset']}), "
                      f"onnxruntime vs PyTorch max relative difference {r['onnx']['max_rel_diff']:.1e}."]
    lines += _latency_budget_md(r.get("latency_budget"))
    lines += _int8_md(r.get("int8"), r["latency_ms"])
    d = r["data"]
    lines += ["", "## Data", "", f"- images: {d['path']} ({d['train_images']} training, {d['val_images']} held out, "
              f"{d['test_images']} test, {d['classes']} classes)", f"- original weights: {d['original_weights']}",
              f"- training transform: `{d['transforms']['train']}`", f"- test transform: `{d['transforms']['test']}`"]
    lines += ["", "## Choices", ""] + _choices_md(r["choices"])
    if r.get("cells"):
        lines += ["", "## Cells", "", "The cells the original is built from (its genotype):", ""]
        lines += genotype_lines(r["cells"])
    if r["rules"]:
        lines += ["", "## Rules", ""] + [f"- `{p}`: {'; '.join(v) or 'nothing left to change'}"
                                          for p, v in r["rules"].items()]
    lines += ["", "## Time", ""] + [f"- {k}: {v:.1f} s" for k, v in r["seconds"].items()]
    if r["method_summary"] or r["method_section"]:
        lines += ["", f"## Method: {r['method']}", ""] + r["method_section"]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _latency_budget_md(b: dict[str, Any] | None) -> list[str]:
    """The latency budget's section: where it was measured, the table, each measure-and-correct round."""
    if not b:
        return []
    s, t = b["settings"], b["table"]
    verdict = (f"within {100 * b['tolerance']:g}% of the target" if b["met"] else
               f"**missed**: {b['measured']:.3f} measured for {b['target']:g} asked after {len(b['rounds'])} round(s)")
    lines = ["", "## Latency budget", "",
             f"{b['target']:g} of the original's onnxruntime latency on {s['cpu']} (onnxruntime {s['onnxruntime']}, "
             f"{s['provider']}, {s['graph_optimization']}, batch {s['batch']}, threads: {s['threads']}): {verdict}.", "",
             f"Layer table `{t['file']}`: {t['layers_measured']} layer shape(s) measured now ({t['build_seconds']} s), "
             f"the rest of its {t['layer_kinds']} read from the cache; timed alone, the layers take {t['units_ms']:.3f} ms "
             f"of the original's {t['whole_ms']:.3f} ms; a run's fixed cost is {t['fixed_ms']:.3f} ms, and the rest of "
             f"the graph is costed by its FLOPs ({t['rest_ms']:.3f} ms).  "
             + (f"Widths round to {t['channel_block']} channels, the block this CPU's convolutions were measured "
                "to run in." if t["channel_block"] else "No channel block showed in the measurements: widths round "
                "to export.round_to.") + _calibration_md(t.get("calibration"))
             + (f"  The smallest decision (everything removable removed) measured {b['smallest_measured']:.3f} of the "
                "original." if b.get("smallest_measured") is not None else ""),
             "", "| round | budget asked | predicted | measured (median of) | original ms | compressed ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {i} | {r['asked']:.3f} | {r['predicted']:.3f} | {r['measured']:.3f} ({r['measurements']}) "
              f"| {r['original_ms']:.3f} | {r['compressed_ms']:.3f} |" for i, r in enumerate(b["rounds"])]
    return lines


def _calibration_md(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    return (f"  Calibration: a magnitude-pruned decision measured {c['measured']:.3f} of the original where the "
            f"table alone said {c['table_alone']:.3f}; " + ("the prediction is rescaled through both points."
                                                              if c["used"] else "too far apart to rescale by, unused."))


def _int8_md(q: dict[str, Any] | None, latency: dict[str, dict]) -> list[str]:
    """The int8 section: accuracy and agreement with fp32 on the test images, latency side by side."""
    if not q:
        return []
    t = q["test"]
    chosen = "per-channel" if q["per_channel"] else "per-tensor"
    how = (f"{chosen} weights (held out: " + ", ".join(f"{k.replace('_', '-')} {100 * v:.2f}%"
                                                        for k, v in q["held_out_accuracy"].items()) + ")"
           if "held_out_accuracy" in q else f"{chosen} weights")
    lines = ["", "## INT8", "", f"`{q['file']}`: onnxruntime static QDQ quantization of the compressed model, "
             f"{q['calibration']} calibration on {q['calibration_images']} training images, {how}. CPU: {q['cpu']}.",
             "", "| | fp32 | int8 | |", "|---|---:|---:|---:|",
             f"| test accuracy | {100 * t['fp32_accuracy']:.2f}% | {100 * t['int8_accuracy']:.2f}% "
             f"| {100 * (t['int8_accuracy'] - t['fp32_accuracy']):+.2f} pt |"]
    lines += [f"| onnxruntime CPU latency, batch {b} | {v['compressed']:.2f} ms | {v['int8']:.2f} ms "
              f"| {v['int8_ratio']:.3f} |" for b, v in latency.items() if "int8" in v]
    lines += ["", f"The int8 and fp32 files agree on the top-1 class of {100 * t['agreement']:.2f}% of "
              f"{t['images']} test images" + ("." if t["agreement"] >= 0.99 else ": below 99%, check the int8 "
                                               "accuracy above before deploying it.")]
    slower = [b for b, v in latency.items() if v.get("int8_ratio", 0) >= 1]
    if slower:
        lines += ["", f"**Warning:** int8 is not faster than fp32 on this CPU at batch {', '.join(slower)}; "
                      "deploy model.onnx here."]
    return lines


def _plots(r: dict[str, Any], out: Path) -> list[str]:
    try:
        plt = pyplot()
    except ImportError:
        return []
    made = []
    channels = r["choices"].get("channels") or r["choices"].get("channels (then)") or {}
    widths = list(channels.get("widths", {}).values())
    if widths:
        fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(widths)), 3.5))
        xs = range(len(widths))
        ax.bar(xs, [w["of"] for w in widths], color="#cccccc", label="original")
        ax.bar(xs, [w["kept"] for w in widths], color="#1f77b4", label="compressed")
        ax.set_xlabel("channel group (trace order)")
        ax.set_ylabel("channels")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "widths.png", dpi=100)
        plt.close(fig)
        made.append("widths.png")
    rows = [(stage, h) for stage in ("base", "search", "finetune") for h in r["history"].get(stage, [])]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        xs = list(range(1, len(rows) + 1))
        ax.plot(xs, [h["train_acc"] for _, h in rows], label="train accuracy")
        if any(h.get("val_acc") not in (None, "") for _, h in rows):
            ax.plot(xs, [h.get("val_acc") for _, h in rows], label="val accuracy")
        curves = {f"{m} (search)": [h.get(m) for _, h in rows] for m in r["metrics"]}
        for label, cost in curves.items():
            if any(c not in (None, "") for c in cost):
                ax.plot(xs, [c if c not in (None, "") else float("nan") for c in cost], label=label)
        ax.set_xlabel("epoch (base, search, fine-tune)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=100)
        plt.close(fig)
        made.append("training.png")
    if r.get("cells") and "cells.png" not in r.get("method_plots", []):
        draw_cells(r["cells"], out / "cells.png")
        made.append("cells.png")
    return made


def _choices_md(choices: dict[str, dict]) -> list[str]:
    lines = []
    for kind, summary in choices.items():
        lines += [f"### {kind}", ""]
        for key, value in summary.items():
            if isinstance(value, dict) and value and all(isinstance(x, dict) for x in value.values()):
                cols = list(next(iter(value.values())))
                lines += [f"| {key} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
                lines += [f"| {name} | " + " | ".join(cell(x.get(c)) for c in cols) + " |" for name, x in value.items()]
            elif isinstance(value, dict):
                lines += table({key: value}, depth=1) if value else [f"- {key}: -"]
            else:
                lines.append(f"- {key}: {cell(value)}")
            lines.append("")
    return lines
