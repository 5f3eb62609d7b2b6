"""``compress MODEL ...``: run the pipeline (or only check it, ``--check``) and say what it made."""
from __future__ import annotations

import argparse
import contextlib
import warnings

def set_values(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` items as dotted recipe overrides (values read as YAML scalars)."""
    import yaml

    from ..recipe import RecipeError

    o: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects KEY=VALUE (e.g. search.epochs=3), got {item!r}")
        try:
            o[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {key}: the value {value!r} is not a YAML value "
                              f"({getattr(exc, 'problem', None) or type(exc).__name__})") from None
    return o


def overrides(args: argparse.Namespace) -> dict:
    """Every recipe override the command line makes (``--set`` and the shorthand flags)."""
    o = set_values(args.set)
    for what in ("flops", "params", "latency"):  # one kind of budget replaces the others; batch etc. stay
        value = getattr(args, f"budget_{what}")
        if value is not None:
            o.update({f"budget.{w}": value if w == what else None for w in ("flops", "params", "latency")})
    if args.data:
        o["data.path"] = args.data
    if args.weights:
        o["weights"] = args.weights
    if args.pretrained is not None:
        o["pretrained"] = True
        if isinstance(args.pretrained, str):
            o["pretrained_file"] = args.pretrained
    if args.epochs is not None:
        o["search.epochs"] = args.epochs
    if args.quantize:
        o["export.quantize"] = args.quantize
    if args.device:
        o["run.device"] = args.device
    if args.quiet:
        o["run.progress"] = False
    return o


def cmd_run(args: argparse.Namespace) -> int:
    from ..api import compress, default_out
    from ..recipe import load_recipe, method_override
    from ..zoo import model_recipe

    start = args.recipe or model_recipe(args.model)
    if not args.recipe and start != "default":
        print(f"compress: {args.model} starts from its own recipe {start} (--recipe default: the embedded default's)")
    recipe = load_recipe(start)
    switch = method_override(recipe, args.method) if args.method else {}
    recipe = load_recipe(recipe, {"model": args.model, **switch, **overrides(args)})
    out = args.out or default_out(args.model, recipe)
    if args.check:
        return _check_only(args.model, recipe, out)
    with _warnings_to_log(out):
        result = compress(args.model, recipe, out=out, resume=args.resume)
    r = result.report
    if r:
        o, c = r["original"], r["compressed"]
        if "never trained" in r["data"]["original_weights"]:
            print(f"the original was never trained ({r['method']} trains its own networks): its accuracy below is "
                  "chance level, not a baseline")
        print(f"{args.model}: FLOPs {c['flops_fraction_fvcore']:.3f} of the original (fvcore), params "
              f"{c['params_fraction']:.3f}, test accuracy {100 * o['test_accuracy']:.2f}% -> "
              f"{100 * c['test_accuracy']:.2f}% (top-5 {100 * o['test_top5']:.2f}% -> {100 * c['test_top5']:.2f}%)")
        for b, v in r["latency_ms"].items():
            print(f"  onnxruntime CPU batch {b}: {v['original']:.2f} ms -> {v['compressed']:.2f} ms ({v['ratio']:.2f}x)")
        if r["method_summary"].get("note"):
            print(f"  {r['method']}: {r['method_summary']['note']}")
        base = r["method_summary"].get("baseline")
        if base:
            print(f"  {r['method']}: {100 * base['method_test_top1']:.2f}% in {base['method_seconds']:.0f} s; "
                  f"{base['name']} ({base['epochs']} epochs): {100 * base['test_top1']:.2f}% in "
                  f"{base['seconds']:.0f} s; wall-clock {base['wall_clock_ratio']:.2f}x, "
                  f"training FLOPs {base['training_flops_ratio']:.2f}x (--set method.scratch_baseline=false skips "
                  "the baseline)")
            for what, b in base.get("equal_wall_clock", {}).items():
                print(f"  at equal wall-clock, {what} ({b['epochs']} epochs): {100 * b['test_top1']:.2f}% in "
                      f"{b['seconds']:.0f} s")
        print(f"written to {result.out}/ (report.md, model.onnx, model.safetensors)")
    return 0


def _check_only(model: str, recipe, out) -> int:
    """``--check``: everything ``compress`` would refuse is refused; nothing is trained or written."""
    from ..api import prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = prepare(model, recipe, out=out)
    from ..space.kinds import get_kind

    train, _, test = run.sets
    sites = ", ".join(f"{len(get_kind(k).checkable(run.space[k]))} {k} sites" for k in run.space)
    print(f"{model}: the recipe, model, data ({len(train)} training and {len(test)} test images, "
          f"{run.num_classes} classes), weights and {run.recipe.budget.what} budget "
          f"{run.recipe.budget.target:g} check out; {sites} can change; the run would write to {run.out}/")
    return 0


def _refusals() -> tuple[type[Exception], ...]:
    from . import bad_input_errors

    return bad_input_errors()


@contextlib.contextmanager
def _warnings_to_log(out):
    """Python warnings raised by our dependencies during the run (deprecations...) go to
    ``OUT/logs/warnings.log`` instead of the terminal; a run refused as bad input writes nothing
    (an earlier run's directory is never touched)."""
    from pathlib import Path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        refused = False
        try:
            yield
        except _refusals():
            refused = True
            raise
        finally:
            logs = Path(out) / "logs"
            if caught and not refused and logs.parent.is_dir():
                with contextlib.suppress(OSError):
                    logs.mkdir(exist_ok=True)
                    with open(logs / "warnings.log", "a") as f:
                        f.writelines(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
                                     for w in caught)
