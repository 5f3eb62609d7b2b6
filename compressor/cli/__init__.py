"""The ``compress`` command: ``compress MODEL [options]`` runs the pipeline; ``inspect``, ``list``,
``eval`` and ``export`` are subcommands.  One line and exit 2 for bad input, wherever it is found."""
from __future__ import annotations

import argparse
import contextlib
import errno
import sys

from .inspect import cmd_inspect, cmd_list
from .run import cmd_run
from .saved import TRUST_HELP, cmd_bench, cmd_eval, cmd_export

EXAMPLES = """examples:
  compress resnet50 --budget-flops 0.5      train on the embedded MNIST subset, prune to half the FLOPs
  compress mobilenet_v2 --budget-params 0.3 --method prune --out runs/mnv2
  compress mobilenet_v2 --budget-latency 0.5 --set budget.batch=8   half the onnxruntime latency measured here
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
  compress resnet50 --quantize int8         also write model.int8.onnx, checked against model.onnx
  compress bench runs/resnet50-scs-flops0.5 --batch 1,8 --threads 4   latency: original, fp32, int8
  compress inspect resnet50                 groups, blocks and their share of FLOPs/params
  compress list 'convnext*'                 known model names (torchvision, then timm)

exit status: 0 success; 2 bad input (one line says why; nothing written) or a loss that became NaN
(finished epochs stay checkpointed); 130 Ctrl-C, 143 SIGTERM (rerun with --resume); 1 failure
"""

SUBCOMMANDS = ("inspect", "list", "eval", "export", "bench", "run")


def build_parser() -> argparse.ArgumentParser:
    from ..methods import methods

    registered = methods()
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="compress", description="Make vision models smaller and faster: "
                                 "compress MODEL [options], or one of the subcommands below.",
                                 epilog=EXAMPLES, formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{MODEL,inspect,list,eval,export,bench}")
    p = sub.add_parser("run", help="compress a model (the default: `compress MODEL ...`)", epilog=EXAMPLES,
                       formatter_class=fmt)
    p.add_argument("model", help="torchvision or timm model name (see `compress list`)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-flops", type=float, metavar="F", help="keep at most this fraction of FLOPs")
    budget.add_argument("--budget-params", type=float, metavar="F", help="keep at most this fraction of params")
    budget.add_argument("--budget-latency", type=float, metavar="F",
                        help="keep at most this fraction of the onnxruntime CPU latency measured here "
                             "(batch and threads: --set budget.batch=8 budget.threads=2)")
    p.add_argument("--method", choices=list(registered), metavar="{" + ",".join(registered) + "}",
                   help="compression method (default: the recipe's, scs): " + "; ".join(
                       f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}" for name, cls in registered.items()))
    p.add_argument("--recipe", help="built-in recipe name or YAML file (default: the model's own where it has "
                   "one, e.g. darts-eval-cpu for the DARTS cell networks; else default)")
    p.add_argument("--data", metavar="PATH", help="ImageFolder tree or CIFAR folder (default: embedded MNIST subset)")
    p.add_argument("--weights", metavar="PATH", help="trained weights of the original (skips base training)")
    p.add_argument("--pretrained", nargs="?", const=True, metavar="FILE",
                   help="start from timm's/torchvision's pretrained weights (their cache, or FILE); "
                   "skips base training; a new head when the data has other classes")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs of the method's search stage")
    p.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx (onnxruntime static "
                   "quantization, calibrated on training images), checked against model.onnx")
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
    p.add_argument("--recipe", help="take the kinds of choice (choices) and rules from this recipe")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="recipe keys, e.g. 'choices=[channels,kernel]' "
                   "or 'rules={fc: null}' (default: every kind of choice but op, no rules)")
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
    p = sub.add_parser("bench", help="onnxruntime latency of the original, the compressed and the int8 model")
    p.add_argument("dir", help="output directory of a run")
    p.add_argument("--batch", type=_batches, default=(1, 8), metavar="B,B", help="batch sizes (default: 1,8)")
    p.add_argument("--threads", type=int, metavar="T", help="onnxruntime intra-op threads (default: its own)")
    p.add_argument("--repeats", type=int, default=40, metavar="N", help="timed runs per model and batch size")
    p.add_argument("--trust-source", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=cmd_bench)
    return ap


def _batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of batch sizes") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return sizes


def bad_input_errors() -> tuple[type[Exception], ...]:
    """What `compress` rejects as bad input (exit 2, nothing written)."""
    from ..pipeline import OutputError
    from ..budget import BudgetError
    from ..data import DataError
    from ..export import OnnxFileError, SavedModelError
    from ..recipe import RecipeError
    from ..train import CheckpointError, DivergedError
    from ..train.distributed import DeviceError
    from ..weights import WeightsError
    from ..zoo import UnknownModelError

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
    from ..space import TraceError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except bad_input_errors() as exc:
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
