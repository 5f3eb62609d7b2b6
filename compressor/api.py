"""``compress``: the pipeline of DESIGN section 2, from a model and a recipe to an output directory.

    base (train the original unless weights are given) -> trace -> search (the method)
    -> slice -> fine-tune -> save + ONNX + report

Every stage checkpoints after each epoch under ``OUT/checkpoints``; ``resume=True`` continues a
run that was interrupted, and re-running a finished stage only reloads it.  Everything the run
could reject (recipe, model name, data path, weights file, budget) is checked before anything is
written.
"""
from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from .budget import fit_to_budget
from .data import (IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD, ImageSpec, count_classes, load_dataset,
                   split_dataset)
from .decision import Decision
from .export import export_onnx, save_compressed, slice_model
from .export.save import ARCH_FILE
from .machine import input_shape_problem
from .methods import SearchContext, get_method
from .recipe import Recipe, RecipeError, load_recipe
from .frontend import trace
from .space import Space
from .train import Trainer, load_checkpoint
from .train.distill import Distillation
from .train.distributed import launched_as_main, resolve_device
from .weights import check_finite, load_weights
from .zoo import UnknownModelError, import_factory, is_code_reference


class OutputError(ValueError):
    """The output directory cannot take this run."""


class OutputExistsError(OutputError):
    """The output directory already holds a run and ``resume`` was not asked for."""


SPACE_PER_PARAM_BYTE = 12  # checkpoints (weights + momentum, three stages), ONNX, safetensors, with room


@dataclass
class CompressResult:
    """The compressed dense model (eval mode, CPU), its decision, the report and where it lives."""

    model: nn.Module
    decision: Decision
    report: dict[str, Any]
    out: Path


def compress(model: nn.Module | str, recipe: Recipe | dict | str | os.PathLike | None = None,
             data: str | os.PathLike | tuple[Dataset, Dataset] | None = None, *,
             out: str | os.PathLike | None = None, resume: bool = False,
             overrides: dict[str, Any] | None = None,
             callbacks: tuple[Callable[[str, int, int], None], ...] = ()) -> CompressResult:
    """Compress ``model`` under ``recipe`` and write the result to ``out``.

    Args:
        model: a model name (torchvision or timm) or an ``nn.Module``, which is trained in place
            (its class is recorded so the saved model can be rebuilt; a class that needs
            constructor arguments is rebuilt by passing an instance to
            :func:`compressor.load_compressed`'s ``original``).
        recipe: a :class:`Recipe`, a dict, a YAML path or a built-in recipe name.
        data: a data path (ImageFolder/CIFAR), ``(train, test)`` datasets, or None for the
            recipe's (the embedded MNIST subset by default).
        out: output directory (default ``runs/<model>-<method>-<budget>``).
        overrides: dotted recipe keys set on top, e.g. ``{"budget.flops": 0.25}``.

    Example:
        >>> result = compress("resnet18", {"budget": {"flops": 0.5}, "search": {"epochs": 1}})
        >>> result.report["compressed"]["flops_fraction_fvcore"] <= 0.5
        True
    """
    from .report import Stopwatch, build_report, write_report

    clock = Stopwatch()
    with clock("prepare"):
        run = prepare(model, recipe, data, out=out, overrides=overrides)
    recipe, name, net, space, method, teacher, out = (run.recipe, run.name, run.net, run.space, run.method,
                                                      run.teacher, run.out)
    train_set, val_set, test_set = run.sets
    num_classes, example, source, source_kwargs, start = (run.num_classes, run.example, run.source,
                                                          run.source_kwargs, run.start)
    if launched_as_main():  # one process owns the output directory; the others only train
        _claim(out, resume, need=SPACE_PER_PARAM_BYTE * sum(p.numel() * p.element_size() for p in net.parameters()))
        if not (out / "recipe.yaml").exists():
            (out / "recipe.yaml").write_text(recipe.to_yaml())

    trainer = Trainer(recipe.run, log_dir=out / "logs", callbacks=callbacks, workers=recipe.data.workers)
    ckpt = out / "checkpoints"
    batch = recipe.data.batch_size
    history: dict[str, list] = {}
    if not method.trains_original and not recipe.weights and not recipe.pretrained:
        start = f"random init, never trained ({recipe.method.name} trains its own networks)"
    if method.trains_original and not recipe.weights and not recipe.pretrained and recipe.base.epochs:
        with clock("base"):
            history["base"] = [h.row() for h in trainer.fit(net, train_set, recipe.base, stage="base",
                                                            batch_size=batch, val_set=val_set,
                                                            checkpoint=ckpt / "base.pt", resume=resume)]
    original_eval = trainer.evaluate(net, test_set, batch)

    distill = recipe.distill
    mode = distill.teacher
    if mode == "auto":
        mode = "original" if method.distills_by_default else "none"
    if mode == "original":
        teacher = copy.deepcopy(net).eval()  # the trained original, before the search changes it
    kd = {stage: Distillation(teacher, alpha=distill.alpha, temperature=distill.temperature)
          for stage in distill.stages} if teacher is not None else {}

    ctx = SearchContext(trainer, train_set, val_set, batch, recipe.budget, recipe.export.round_to, recipe.run.seed,
                        num_classes=num_classes, criterion=kd.get("search"))
    with clock("search"):
        net, decision, summary = method.search(net, ctx, epochs_cfg=recipe.search, checkpoint=ckpt / "search.pt",
                                               resume=resume)
    history["search"] = summary.pop("history", [])
    original = net  # trained weights of the full-size model (gates removed)
    compressed = method.finalize(slice_model(original.cpu().eval(), space, decision))

    finetune = method.finetune_config(recipe.finetune, recipe.search)
    if not method.trains_in_search:  # equal total epochs for every method
        finetune = finetune.model_copy(update={"epochs": finetune.epochs + recipe.search.epochs})
    if finetune.epochs:
        with clock("finetune"):
            history["finetune"] = [h.row() for h in trainer.fit(compressed, train_set, finetune, stage="finetune",
                                                                batch_size=batch, val_set=val_set,
                                                                checkpoint=ckpt / "finetune.pt", resume=resume,
                                                                criterion=kd.get("finetune"))]
    compressed_eval = trainer.evaluate(compressed, test_set, batch)
    own = clock.seconds.get("search", 0.0) + clock.seconds.get("finetune", 0.0)  # the method's own training
    with clock("baseline"):
        baseline = method.baseline(ctx, test_set, finetune.epochs, own)
    if baseline is not None:  # side by side with the method's own training
        summary["baseline"] = {**baseline, "method_seconds": round(own, 1),
                               "method_test_top1": compressed_eval.top1,
                               "wall_clock_ratio": round(own / max(baseline["seconds"], 1e-9), 3)}
    compressed = compressed.cpu().eval()
    if not trainer.dist.is_main:
        return CompressResult(compressed, decision, {}, out)

    with clock("export"):
        save_compressed(compressed, out, source=source, source_kwargs=source_kwargs,
                        input_shape=tuple(example.shape), decision=decision)
        onnx = None
        if recipe.export.onnx:
            onnx = export_onnx(compressed, out / "model.onnx", example, opset=recipe.export.opset,
                                    dynamic_batch=True)
    if kd:
        summary["distillation"] = {"teacher": mode,
                                   **{stage: d.summary() for stage, d in kd.items()},
                                   "stage_seconds": {s: round(clock.seconds.get(s, 0.0), 1) for s in kd}}
    report = build_report(name=name, recipe=recipe, space=space, decision=decision, original=original.cpu().eval(),
                          compressed=compressed, example=example, accuracy=(original_eval, compressed_eval),
                          onnx=onnx, out=out, history=history, method_summary=summary, clock=clock,
                          data=_data_facts(recipe, data, (train_set, val_set, test_set), num_classes, start),
                          dist_world=trainer.dist.world_size)
    write_report(report, out)
    return CompressResult(compressed, decision, report, out)


@dataclass
class Prepared:
    """A run checked and ready to start: everything :func:`compress` could refuse has been
    refused, and nothing has been written."""

    recipe: Recipe
    name: str  # how the report names the model
    net: nn.Module  # the original, with the weights the run starts from
    source: str  # how a saved model rebuilds it (zoo name or package.module:factory)
    source_kwargs: dict[str, Any]
    start: str  # where its weights come from, in words
    sets: tuple[Dataset, Dataset | None, Dataset]  # train, held-out, test
    num_classes: int
    example: torch.Tensor
    space: Space
    method: Any
    teacher: nn.Module | None  # a teacher the recipe names (built now so a bad one fails now)
    out: Path


def prepare(model: nn.Module | str, recipe: Recipe | dict | str | os.PathLike | None = None,
            data: str | os.PathLike | tuple[Dataset, Dataset] | None = None, *,
            out: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Prepared:
    """Check everything a run could refuse (recipe, model, data, weights, method settings, budget,
    teacher) and build what it starts from: the data, the original and its traced space.  Writes
    nothing; ``compress --check`` stops here."""
    recipe = load_recipe(recipe, overrides)
    if isinstance(model, str):
        recipe = load_recipe(recipe, {"model": model})
    name = recipe.model if isinstance(model, str) else type(model).__name__
    torch.manual_seed(recipe.run.seed)
    resolve_device(recipe.run.device)  # a device that is not here fails now
    size = image_spec(recipe, None if isinstance(data, tuple) else (data or recipe.data.path), model).size
    problem = input_shape_problem((1, 3, size, size))
    if problem:
        raise RecipeError(f"data.input_size {size}: {problem}")
    train_set, val_set, test_set, num_classes = _datasets(recipe, data, model)
    net, source, source_kwargs, start = _build(model, recipe, num_classes)
    if recipe.weights:
        load_weights(net, recipe.weights, num_classes=num_classes)
    check_finite(net, f"the weights of {name} ({start})")
    space = trace(net.cpu().eval(), torch.randn(1, 3, size, size))
    method = get_method(recipe.method.name)(recipe.method, space)  # bad settings fail now
    if recipe.search.epochs < method.min_search_epochs():
        raise RecipeError(f"search.epochs: {recipe.method.name} trains in the search stage and needs at least "
                          f"{method.min_search_epochs()} epoch(s) there, got {recipe.search.epochs}")
    fit_to_budget(space, torch.zeros(space.num_units).numpy(), recipe.budget.target, what=recipe.budget.what,
                  removed_blocks=method.removable_blocks())  # and so does an unreachable budget
    teacher = _named_teacher(recipe, num_classes)  # and a teacher that cannot be built
    return Prepared(recipe, name, net, source, source_kwargs, start, (train_set, val_set, test_set), num_classes,
                    torch.randn(1, 3, size, size), space, method, teacher,
                    Path(out) if out else default_out(name, recipe))


def default_out(name: str, recipe: Recipe) -> Path:
    """``runs/<model>-<method>-<budget>``, where a run goes without ``out``."""
    return Path("runs") / f"{name}-{recipe.method.name}-{recipe.budget.what}{recipe.budget.target:g}"


def _named_teacher(recipe: Recipe, num_classes: int) -> nn.Module | None:
    """A teacher named in the recipe (a zoo model with its trained weights), built now so that a
    bad name or weights file is an error before any training; None for auto/original/none."""
    cfg = recipe.distill
    if cfg.teacher in ("auto", "original", "none"):
        return None
    from .recipe import RecipeError
    from .zoo import create_model_for_size

    if not cfg.teacher_weights:
        raise RecipeError(f"distill.teacher: {cfg.teacher!r} needs distill.teacher_weights (a teacher must be trained)")
    teacher, _ = create_model_for_size(cfg.teacher, recipe.data.input_size, num_classes=num_classes)
    load_weights(teacher, cfg.teacher_weights)
    check_finite(teacher, f"distill.teacher_weights {cfg.teacher_weights}")
    return teacher.eval()


def _datasets(recipe: Recipe, data, model) -> tuple[Dataset, Dataset | None, Dataset, int]:
    cfg = recipe.data
    if isinstance(data, tuple):
        train, test = data
    else:
        path = str(data) if data is not None else cfg.path
        spec = image_spec(recipe, path, model)
        train = load_dataset(path, "train", spec, augment=cfg.augment)
        test = load_dataset(path, "test", spec, augment=False)
    num_classes = count_classes(train)
    val = None
    if cfg.val_fraction > 0 and (hasattr(train, "labels") or hasattr(train, "samples")):
        plain = train  # the held-out part is read without augmentation
        if not isinstance(data, tuple) and cfg.augment:
            plain = load_dataset(path, "train", spec, augment=False)
        train, _ = split_dataset(train, cfg.val_fraction, seed=recipe.run.seed)
        _, val = split_dataset(plain, cfg.val_fraction, seed=recipe.run.seed)
    if cfg.limit_train and cfg.limit_train < len(train):
        g = torch.Generator().manual_seed(recipe.run.seed)
        train = torch.utils.data.Subset(train, torch.randperm(len(train), generator=g)[: cfg.limit_train].tolist())
    return train, val, test, num_classes


def image_spec(recipe: Recipe, path, model) -> ImageSpec:
    """How images reach the model: every key the recipe sets, the rest from the model's pretrained
    data config (timm's, or torchvision's default weights'); MNIST's mean/std for the embedded set."""
    from .zoo import UnknownModelError, data_config

    cfg = recipe.data
    try:
        found = data_config(model)
    except UnknownModelError:  # "package.module:factory": no pretrained data config
        found = {}
    if path is None:
        found.update(mean=(MNIST_MEAN,) * 3, std=(MNIST_STD,) * 3)
    interpolation = cfg.interpolation or found.get("interpolation", "bilinear")
    return ImageSpec(size=cfg.input_size or found.get("size", 224),
                     mean=tuple(cfg.mean or found.get("mean", IMAGENET_MEAN)),
                     std=tuple(cfg.std or found.get("std", IMAGENET_STD)),
                     crop_pct=cfg.crop_pct or found.get("crop_pct", 0.875),
                     interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear")


def _build(model: nn.Module | str, recipe: Recipe, num_classes: int) -> tuple[nn.Module, str, dict, str]:
    """The original model, how to rebuild it (zoo name or ``module:Class`` plus kwargs) and where
    its starting weights come from (in words, for the report)."""
    start = f"weights file {recipe.weights}" if recipe.weights else "random init, trained here (base)"
    if recipe.pretrained and not isinstance(model, str):
        raise RecipeError("pretrained: needs a model name (timm or torchvision); load the weights into your "
                          "nn.Module yourself")
    if isinstance(model, str) and is_code_reference(model):  # typed by the user: "package.module:factory"
        if recipe.pretrained:
            raise RecipeError(f"pretrained: {model!r} is not a timm or torchvision model name")
        try:
            factory = import_factory(model)
        except (ImportError, AttributeError) as exc:
            raise UnknownModelError(f"cannot build {model!r}: {exc}") from None
        try:
            return factory(num_classes=num_classes), model, {"num_classes": num_classes}, start
        except TypeError:
            return factory(), model, {}, start
    if isinstance(model, str):
        from .zoo import create_model_for_size

        if not recipe.pretrained:
            net, kwargs = create_model_for_size(model, recipe.data.input_size, num_classes=num_classes)
            return net, model, kwargs, start
        from .pretrained import load_pretrained

        with torch.device("meta"):  # only to learn the constructor kwargs (img_size or not)
            _, kwargs = create_model_for_size(model, recipe.data.input_size, num_classes=num_classes)
        net, info = load_pretrained(model, num_classes, recipe.pretrained_file,
                                    **{k: v for k, v in kwargs.items() if k != "num_classes"})
        if info.head_replaced and launched_as_main():
            print(f"compress: {model}: the pretrained {info.pretrained_classes}-class head is replaced by a new "
                  f"{num_classes}-class one (the data has {num_classes} classes)")
        return net, model, kwargs, f"pretrained: {info.describe()}"
    if recipe.data.input_size is None:
        raise ValueError("data.input_size must be set for a model given as an nn.Module")
    cls = type(model)
    return model, f"{cls.__module__}:{cls.__qualname__}", {}, "the nn.Module as given"


def _data_facts(recipe: Recipe, data, sets: tuple, num_classes: int, start: str) -> dict[str, Any]:
    from .data import describe_transform

    train, val, test = sets
    path = "datasets given by the caller" if isinstance(data, tuple) else \
        str(data or recipe.data.path or "embedded MNIST subset")
    return {"path": path, "train_images": len(train), "val_images": len(val) if val is not None else 0,
            "test_images": len(test), "classes": num_classes, "original_weights": start,
            "transforms": {"train": describe_transform(train), "test": describe_transform(test)}}


def _claim(out: Path, resume: bool, need: int = 0) -> None:
    """Refuse to overwrite a previous run unless it is being resumed, and refuse a disk with less
    than ``need`` bytes free."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a directory")
    taken = [p for p in (out / ARCH_FILE, out / "report.json", out / "checkpoints") if p.exists()]
    if taken and not resume:
        raise OutputExistsError(f"output directory {out} already holds a run ({taken[0].name}); "
                                "pass --resume to continue it or choose another --out")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < need:
        raise OutputError(f"{existing} has {free / 2**20:.0f} MiB free, and this run needs about "
                          f"{need / 2**20:.0f} MiB (checkpoints, model, ONNX); free space or choose another --out")
    if resume:  # a damaged checkpoint is reported now, before any work
        for ckpt in sorted((out / "checkpoints").glob("*.pt")):
            load_checkpoint(ckpt)
    out.mkdir(parents=True, exist_ok=True)
