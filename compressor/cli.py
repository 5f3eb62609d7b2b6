"""The ``compress`` command."""
from __future__ import annotations

import argparse
import contextlib
import errno
import sys
import time
import warnings

import torch

EXAMPLES = """examples:
  compress resnet50 --budget-flops 0.5      train on the embedded MNIST subset, prune to half the FLOPs
  compress mobilenet_v2 --budget-params 0.3 --method prune --out runs/mnv2
  compress resnet50 --method prune --set method.blocks=4   also drop the 4 blocks whose loss cost is least
  compress resnet50 --method tas            search widths and depths, then train with KD from the original
  compress resnet18 --method grow           train two half-width seeds and grow them x2 into the budget's shape,
                                            then that shape from scratch beside it (docs/grow.md)
  compress resnet18 --method tas --set method.order=2 --set method.self_distill.enabled=true
  compress mobilenet_v2 --method prune --set distill.teacher=original   fine-tune with KD
  compress cifar_resnet56 --recipe tas-resnet56-cifar10 --data ~/cifar-10-batches-py
  compress resnet50 --recipe scs-resnet50-imagenet --data ~/imagenet --weights r50.pth
  compress resnet50 --pretrained --recipe imagenet-finetune --data ~/imagenet   start from torchvision's weights
  compress convnext_tiny --pretrained convnext_tiny.safetensors --data ~/flowers  a local file, a new head
  compress resnet18 --set search.epochs=2 --set run.amp=bf16   any recipe key, dotted
  compress ... --resume                     continue an interrupted run in the same --out
  compress eval runs/resnet50-scs-flops0.5  accuracy of a compressed model, ONNX re-checked
  compress export runs/resnet50-scs-flops0.5 --opset 18
  compress inspect resnet50                 groups, blocks and their share of FLOPs/params
  compress list 'convnext*'                 known model names (torchvision, then timm)

exit status: 0 success; 2 bad input (one line says why; nothing written) or a loss that became NaN
(finished epochs stay checkpointed); 130 Ctrl-C, 143 SIGTERM (rerun with --resume); 1 failure
"""

def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def cmd_inspect(args: argparse.Namespace) -> int:
    from .frontend import trace
    from .zoo import create_model, example_input

    model = create_model(args.model).eval()
    x = example_input(args.model, model, size=args.size)
    t0 = time.perf_counter()
    space = trace(model, x)
    seconds = time.perf_counter() - t0
    cost = space.cost
    flops, params = float(cost.flops()), float(cost.params())
    fshare, pshare = cost.breakdown("flops"), cost.breakdown("params")
    prunable = [g for g in space.groups if g.prunable]
    print(f"{args.model}: input {'x'.join(map(str, x.shape))}, traced in {seconds:.1f} s")
    print(f"total: {_fmt(flops)} FLOPs (multiply-accumulates, fvcore convention + attention), "
          f"{_fmt(params)} params")
    print(f"\nchannel groups: {len(space.groups)} ({len(prunable)} prunable, "
          f"{len(space.groups) - len(prunable)} frozen)")
    print(f"  {'group':<44} {'units':>6} {'ch/unit':>7} {'FLOPs%':>7} {'params%':>7}  status")
    shown = space.groups if args.all else sorted(space.groups, key=lambda g: -fshare.get(space.groups.index(g), 0))[:40]
    for g in shown:
        i = space.groups.index(g)
        status = "prunable" if g.prunable else "frozen"
        print(f"  {g.name[:44]:<44} {g.size:>6} {int(g.channels[0]):>7} {100 * fshare.get(i, 0):>6.1f}% "
              f"{100 * pshare.get(i, 0):>6.1f}%  {status}")
    if not args.all and len(space.groups) > len(shown):
        print(f"  ... {len(space.groups) - len(shown)} smaller groups (--all lists them)")
    print(f"\nresidual blocks: {len(space.blocks)}")
    if space.blocks:
        keep = torch.ones(space.num_units, dtype=torch.double)
        print(f"  {'block':<44} {'stage':<24} {'FLOPs%':>7} {'params%':>7}")
        for i, b in enumerate(space.blocks):
            bk = torch.ones(len(space.blocks), dtype=torch.double)
            bk[i] = 0
            df = 1 - float(cost.flops(keep, bk)) / flops
            dp = 1 - float(cost.params(keep, bk)) / params
            print(f"  {b.name[:44]:<44} {b.stage[:24]:<24} {100 * df:>6.1f}% {100 * dp:>6.1f}%")
    frozen = [g for g in space.groups if not g.prunable]
    if frozen:
        print("\nfrozen groups:")
        for g in frozen:
            print(f"  {g.name}: {g.frozen}")
    if space.dropped_blocks:
        print("\nresidual adds that are not removable blocks:")
        for name, why in space.dropped_blocks.items():
            print(f"  {name}: {why}")
    if space.skipped_owners:
        print("\nmodules with residual adds that fx could not trace (no depth gates there):")
        for owner, why in space.skipped_owners.items():
            print(f"  {owner or '<root>'}: {why}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .zoo import list_models

    for name in list_models(args.filter):
        print(name)
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    import yaml

    from .recipe import RecipeError

    o: dict = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects KEY=VALUE (e.g. search.epochs=3), got {item!r}")
        try:
            o[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {key}: the value {value!r} is not a YAML value "
                              f"({getattr(exc, 'problem', None) or type(exc).__name__})") from None
    if args.budget_flops is not None:
        o["budget"] = {"flops": args.budget_flops}
    if args.budget_params is not None:
        o["budget"] = {"params": args.budget_params}
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
    if args.device:
        o["run.device"] = args.device
    if args.quiet:
        o["run.progress"] = False
    return o


def cmd_run(args: argparse.Namespace) -> int:
    from .api import compress, default_out
    from .recipe import load_recipe, method_override

    recipe = load_recipe(args.recipe)
    switch = method_override(recipe, args.method) if args.method else {}
    recipe = load_recipe(recipe, {"model": args.model, **switch, **_overrides(args)})
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
    from .api import prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = prepare(model, recipe, out=out)
    train, _, test = run.sets
    prunable = sum(g.prunable for g in run.space.groups)
    print(f"{model}: the recipe, model, data ({len(train)} training and {len(test)} test images, "
          f"{run.num_classes} classes), weights and {run.recipe.budget.what} budget "
          f"{run.recipe.budget.target:g} check out; {prunable} prunable channel groups, "
          f"{len(run.space.blocks)} removable blocks; the run would write to {run.out}/")
    return 0


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
        except _bad_input_errors():
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


def _saved_run(path: str):
    """The run directory ``path`` checked as untrusted input (the manifest and weights file; the
    report's recipe when there is one): ``(SavedModel, recipe dict or None)``."""
    import json

    from .export.manifest import SavedModelError, read_saved

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
    from .export import load_compressed

    return load_compressed(saved.directory, trust_source=trust)


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import _datasets
    from .data import DataError
    from .export.manifest import SavedModelError
    from .export.onnx import check_onnx, check_onnx_file
    from .gates.outputs import first_output
    from .recipe import RecipeError, load_recipe
    from .train import Trainer

    saved, recipe_dict = _saved_run(args.dir)
    d = saved.directory
    try:
        recipe = load_recipe(recipe_dict, {"data.path": args.data} if args.data else None)
    except RecipeError as exc:
        raise SavedModelError(f"{d / 'report.json'}: recipe: {exc}") from None
    model = _load_saved(saved, args.trust_source)
    _, _, test, num_classes = _datasets(recipe, None, recipe.model or model)
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
    from .export import export_onnx
    from .recipe import ONNX_OPSETS, RecipeError

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


TRUST_HELP = ("run the code DIR/compressor.json names to rebuild the original (a package.module:factory "
              "source): only for a directory you or someone you trust wrote")
SUBCOMMANDS = ("inspect", "list", "eval", "export", "run")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="compress", description="Make vision models smaller and faster: "
                                 "compress MODEL [options], or one of the subcommands below.",
                                 epilog=EXAMPLES, formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{MODEL,inspect,list,eval,export}")
    p = sub.add_parser("run", help="compress a model (the default: `compress MODEL ...`)", epilog=EXAMPLES,
                       formatter_class=fmt)
    p.add_argument("model", help="torchvision or timm model name (see `compress list`)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-flops", type=float, metavar="F", help="keep at most this fraction of FLOPs")
    budget.add_argument("--budget-params", type=float, metavar="F", help="keep at most this fraction of params")
    p.add_argument("--method", choices=["scs", "prune", "tas", "grow"],
                   help="compression method (default: the recipe's, scs with its logits started from "
                   "magnitude pruning's decision: level with or ahead of prune at 6 epochs on 3 of the 4 "
                   "rows of docs/accuracy.md, behind on mobilenet_v2 at 25%% FLOPs); with a trained "
                   "original, prune with --set distill.teacher=original was the most accurate at 25%%")
    p.add_argument("--recipe", default="default", help="built-in recipe name or YAML file (default: default)")
    p.add_argument("--data", metavar="PATH", help="ImageFolder tree or CIFAR folder (default: embedded MNIST subset)")
    p.add_argument("--weights", metavar="PATH", help="trained weights of the original (skips base training)")
    p.add_argument("--pretrained", nargs="?", const=True, metavar="FILE",
                   help="start from timm's/torchvision's pretrained weights (their cache, or FILE); "
                   "skips base training; a new head when the data has other classes")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs of the method's search stage")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/MODEL-METHOD-BUDGET)")
    p.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set any recipe key, e.g. run.amp=bf16")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--check", action="store_true", help="check the recipe, model, data, weights and budget, "
                   "then stop: nothing is trained or written")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("inspect", help="show what can change in a model", epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("model", help="a torchvision or timm model name")
    p.add_argument("--size", type=int, help="input resolution (default: the model's own)")
    p.add_argument("--all", action="store_true", help="list every group, not only the 40 largest")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("list", help="list known model names")
    p.add_argument("filter", nargs="?", default="*", help="glob, e.g. 'resnet*'")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("eval", help="test accuracy of a compressed model and an ONNX re-check")
    p.add_argument("dir", help="output directory of a run")
    p.add_argument("--data", metavar="PATH", help="evaluate on this data instead of the run's")
    p.add_argument("--device", metavar="D")
    p.add_argument("--trust-source", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="(re-)export a compressed model to ONNX")
    p.add_argument("dir", help="output directory of a run")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--output", metavar="FILE", help="ONNX path (default: DIR/model.onnx)")
    p.add_argument("--trust-source", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=cmd_export)
    return ap


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """What `compress` rejects as bad input (exit 2, nothing written)."""
    from .api import OutputError
    from .budget import BudgetError
    from .data import DataError
    from .export import OnnxFileError, SavedModelError
    from .recipe import RecipeError
    from .train import CheckpointError, DivergedError
    from .train.distributed import DeviceError
    from .weights import WeightsError
    from .zoo import UnknownModelError

    return (UnknownModelError, RecipeError, DataError, WeightsError, CheckpointError, BudgetError,
            OutputError, DeviceError, SavedModelError, OnnxFileError, DivergedError)


class Terminated(BaseException):
    """SIGTERM arrived (what schedulers and containers send to stop a job)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM unwinds the run as Ctrl-C does, so it ends with the same word on resuming."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    from .space import TraceError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except _bad_input_errors() as exc:
        print(f"compress: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"compress: error: {exc.strerror or exc}{where}; free space or choose another --out, then "
              "rerun with --resume", file=sys.stderr)
        return 2
    except TraceError as exc:
        print(f"compress: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("compress: interrupted; the last finished epoch is checkpointed: rerun with --resume",
              file=sys.stderr)
        return 130
    except Terminated:
        print("compress: terminated (SIGTERM); the last finished epoch is checkpointed: rerun with --resume",
              file=sys.stderr)
        return 143
    except BrokenPipeError:  # `compress inspect ... | head`: the reader left, nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
