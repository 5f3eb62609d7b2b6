"""``compress eval DIR``, ``compress export DIR`` and ``compress bench DIR``: a saved run, checked as
untrusted input."""
from __future__ import annotations

import argparse

import torch

def _saved_run(path: str):
    """The run directory ``path`` checked as untrusted input (the manifest and weights file; the
    report's recipe when there is one): ``(SavedModel, recipe dict or None)``."""
    import json

    from ..export.manifest import SavedModelError, read_saved

    saved = read_saved(path)
    report_path = saved.directory / "report.json"
    if not report_path.exists():
        return saved, None
    try:
        report = json.loads(report_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SavedModelError(f"{report_path}: not readable JSON ({type(exc).__name__})") from None
    recipe = report.get("recipe") if isinstance(report, dict) else None
    if recipe is not None and not isinstance(recipe, dict):
        raise SavedModelError(f"{report_path}: recipe: must be a mapping of recipe keys, got {type(recipe).__name__}")
    return saved, recipe


def _load_saved(saved, trust: bool):
    from ..export import load_compressed

    return load_compressed(saved.directory, trust_source=trust)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..prepare import datasets
    from ..data import DataError
    from ..export.manifest import SavedModelError
    from ..export.onnx import check_onnx, check_onnx_file
    from ..gates.outputs import first_output
    from ..recipe import RecipeError, load_recipe
    from ..train import Trainer

    saved, recipe_dict = _saved_run(args.dir)
    d = saved.directory
    try:
        recipe = load_recipe(recipe_dict, {"data.path": args.data} if args.data else None)
    except RecipeError as exc:
        raise SavedModelError(f"{d / 'report.json'}: recipe: {exc}") from None
    model = _load_saved(saved, args.trust_source)
    _, _, test, num_classes = datasets(recipe, None, recipe.model or model)
    x = torch.randn(*saved.manifest.input_shape)
    with torch.no_grad():
        predicts = first_output(model.eval()(x)).shape[-1]
    if predicts != num_classes:
        raise DataError(f"the data has {num_classes} classes but the model in {d} predicts {predicts}")
    trainer = Trainer(recipe.run.model_copy(update={"device": args.device or recipe.run.device}),
                      workers=recipe.data.workers)
    loss, top1, top5 = trainer.evaluate(model, test, recipe.data.batch_size)
    print(f"{d}: test accuracy top-1 {100 * top1:.2f}%, top-5 {100 * top5:.2f}% (loss {loss:.4f}) on {len(test)} images")
    if (d / "model.onnx").exists():
        check_onnx_file(d / "model.onnx")
        print(f"model.onnx: onnxruntime vs PyTorch max relative difference "
              f"{check_onnx(model.cpu().eval(), d / 'model.onnx', (x,)):.1e}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_onnx
    from ..recipe import ONNX_OPSETS, RecipeError

    low, high = ONNX_OPSETS
    if not low <= args.opset <= high:
        raise RecipeError(f"--opset {args.opset}: the ONNX exporter writes opsets {low} to {high}")
    saved, _ = _saved_run(args.dir)
    model = _load_saved(saved, args.trust_source)
    x = torch.randn(*saved.manifest.input_shape)
    path = args.output or saved.directory / "model.onnx"
    done = export_onnx(model, path, x, opset=args.opset, dynamic_batch=True)
    print(f"wrote {path} ({done.exporter} exporter, opset {done.opset}); onnxruntime vs PyTorch max relative "
          f"difference {done.max_rel_diff:.1e}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """onnxruntime latency of the original, ``model.onnx`` and ``model.int8.onnx`` (when written),
    side by side on this machine: what a user runs where they deploy."""
    import onnxruntime as ort

    from ..export.latency import latency_vs_original
    from ..export.manifest import SavedModelError, check_source
    from ..export.onnx import check_onnx_file
    from ..export.quantize import cpu_int8_support
    from ..export.save import build_source

    saved, _ = _saved_run(args.dir)
    d, manifest = saved.directory, saved.manifest
    files = {"compressed": d / "model.onnx", "int8": d / "model.int8.onnx"}
    if not files["compressed"].exists():
        raise SavedModelError(f"{d}: no model.onnx to time; write it with `compress export {d}`")
    files = {k: v for k, v in files.items() if v.exists()}
    for path in files.values():
        check_onnx_file(path)
    if not args.trust_source:
        check_source(manifest, saved.arch_path)
    x = torch.randn(*manifest.input_shape)
    # the original at random init: weights do not change a dense model's latency
    original = build_source(manifest.source, dict(manifest.source_kwargs), saved.arch_path)
    ms = latency_vs_original(original, x, files, batches=tuple(args.batch), repeats=args.repeats, threads=args.threads)
    print(f"{d}: onnxruntime {ort.__version__} CPU, {args.threads or 'default'} threads, medians of "
          f"{args.repeats} runs per model in alternating turns; CPU: {cpu_int8_support()}")
    print(_bench_table(ms))
    return 0


def _bench_table(ms: dict[int, dict[str, float]]) -> str:
    names = list(next(iter(ms.values())))
    lines = ["| batch | " + " | ".join(f"{n} ms" for n in names) + " | " +
             " | ".join(f"{n} / original" for n in names[1:]) + " |", "|---:|" + "---:|" * (2 * len(names) - 1)]
    for b, v in ms.items():
        lines.append(f"| {b} | " + " | ".join(f"{v[n]:.2f}" for n in names) + " | " +
                     " | ".join(f"{v[n] / v['original']:.3f}" for n in names[1:]) + " |")
    return "\n".join(lines)


TRUST_HELP = ("run the code DIR/compressor.json names to rebuild the original (a package.module:factory "
              "source): only for a directory you or someone you trust wrote")
