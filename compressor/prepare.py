"""The ``prepare`` stage of a run: everything ``compress`` could refuse is checked, and what the run
starts from is built (data, the original with its weights, its traced space, the method) before
anything is written.  ``compress --check`` stops here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .budget import BudgetError, decide
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    ImageSpec,
    count_classes,
    describe_transform,
    load_dataset,
    split_dataset,
)
from .decision import Decision
from .errors import distinct_figures, figure_at_least, one_line
from .frontend import trace
from .machine import input_shape_problem
from .methods import get_method
from .methods.followup import first_target
from .recipe import Recipe, RecipeError, load_recipe
from .rules import apply_rules
from .space import Space
from .space.kinds import get_kind
from .train.distributed import launched_as_main, resolve_device
from .weights import check_finite, load_weights
from .zoo import (
    UnknownModelError,
    create_model_for_size,
    data_config,
    import_factory,
    is_code_reference,
    model_recipe,
)


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
    rules: dict[str, list[str]]  # what each recipe rule froze or constrained
    data: dict[str, Any]  # where the images and the original's weights came from (for the report)
    then: tuple[str, ...] = ()  # kinds pruned on the method's decided model (methods/followup.py)
    latency: Any = None  # a latency budget's LatencyCost (compressor.latency), None for other budgets
    variants: list[tuple[nn.Module, Space]] = field(default_factory=list)  # the method's model_variants, traced


def prepare(model: nn.Module | str, recipe: Recipe | dict | str | os.PathLike | None = None,
            data: str | os.PathLike | tuple[Dataset, Dataset] | None = None, *,
            out: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Prepared:
    """Check everything a run could refuse (recipe, model, data, weights, method settings, budget,
    teacher) and build what it starts from: the data, the original and its traced space.  Writes
    nothing; ``compress --check`` stops here."""
    if recipe is None and isinstance(model, str):
        recipe = model_recipe(model)  # the model's own (a network too heavy for the default), else default
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
    train_set, val_set, test_set, num_classes = datasets(recipe, data, model)
    net, source, source_kwargs, start = build_original(model, recipe, num_classes)
    if recipe.weights:
        load_weights(net, recipe.weights, num_classes=num_classes)
    check_finite(net, f"the weights of {name} ({start})")
    space, rules = traced_space(recipe, net, size)  # a rule's pattern that matches nothing fails now
    method = get_method(recipe.method.name)(recipe.method, space)  # and so do bad settings
    if recipe.search.epochs < method.min_search_epochs():
        raise RecipeError(f"search.epochs: {recipe.method.name} trains in the search stage and needs at least "
                          f"{method.min_search_epochs()} epoch(s) there, got {recipe.search.epochs}")
    variants = [model_variant(model, recipe, num_classes, size, args) for args in method.model_variants()]
    then = tuple(method.then_kinds(recipe.choices))
    latency = latency_cost(recipe, space, net, size, then, method.fixed())  # a latency table, a measured floor
    if latency is not None and latency.block:  # widths round to the channel block measured on this CPU
        recipe = load_recipe(recipe, {"export.round_to": latency.block})
    smallest = {k: np.zeros(space[k].size) for k in space if get_kind(k).weight_scored}
    # and an unreachable budget (the method's share of it), widths rounded as the method rounds them
    decide(space, smallest, first_target(recipe.budget.target, then), what=recipe.budget.what,
           fixed=method.fixed(), round_to=recipe.export.round_to, fill=False)
    teacher = named_teacher(recipe, num_classes)  # and a teacher that cannot be built
    return Prepared(recipe, name, net, source, source_kwargs, start, (train_set, val_set, test_set), num_classes,
                    torch.randn(1, 3, size, size), space, method, teacher,
                    Path(out) if out else default_out(name, recipe), rules, data_facts(
                        recipe, data, (train_set, val_set, test_set), num_classes, start), then, latency, variants)


def traced_space(recipe: Recipe, net: nn.Module, size: int) -> tuple[Space, dict[str, list[str]]]:
    """``net``'s space as the recipe's method searches it, the recipe's rules applied (and what
    each rule froze or constrained)."""
    method_class = get_method(recipe.method.name)
    space = trace(net.cpu().eval(), torch.randn(1, 3, size, size), kinds=method_class.space_kinds(recipe.choices),
                  **method_class.trace_options(recipe.method))
    return apply_rules(space, recipe.rules)


def model_variant(model: nn.Module | str, recipe: Recipe, num_classes: int, size: int,
                  args: dict[str, Any]) -> tuple[nn.Module, Space]:
    """The run's model built with ``args`` changing its ``model_args`` (fresh weights), traced as
    the run's is (:meth:`~compressor.methods.base.Method.model_variants`)."""
    if not isinstance(model, str):
        raise RecipeError(f"method {recipe.method.name}: its search builds the model again with model_args "
                          f"{args}, which needs a model given by name, not an nn.Module")
    changed = recipe.model_copy(update={"model_args": {**recipe.model_args, **args}, "pretrained": False})
    try:
        net, *_ = build_original(model, changed, num_classes)
    except (TypeError, ValueError, RecipeError) as exc:
        raise RecipeError(f"method {recipe.method.name}: cannot build {model} again with model_args {args} "
                          f"({one_line(exc, 160)})") from None
    return net, traced_space(changed, net, size)[0]


def latency_cost(recipe: Recipe, space: Space, net: nn.Module, size: int, then: tuple[str, ...],
                 fixed: Decision) -> Any:
    """For a latency budget: the layer table measured (or loaded from the cache) and ``latency``
    attached to the space's cost model; None for other budgets.  Raises :class:`BudgetError` when
    even the smallest decision a correction can reach (every width at its least, every block
    skipped; ``fixed`` where the method or rules fix the rest) *measures* above the target by more
    than the tolerance: a table can predict a floor this CPU does not reach."""
    budget = recipe.budget
    if budget.what != "latency":
        return None
    if then:
        raise RecipeError(f"budget.latency: choices {recipe.choices} prune {', '.join(then)} after the method's "
                          "decision, which a latency budget cannot correct yet; use a flops budget or drop them")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RecipeError("budget.latency: the latency table and the measured rounds run in one process; "
                          "run without torchrun, or use a flops budget under DDP")
    from .latency import Settings, attach_latency, correctable_kinds

    cost = attach_latency(space, net, torch.randn(1, 3, size, size), Settings(budget.batch, budget.threads),
                          progress=recipe.run.progress, repeats=budget.repeats, fixed=fixed,
                          smallest_of=correctable_kinds(space))
    if cost.floor is not None and cost.floor > budget.target * (1 + budget.tolerance):
        want, floor = distinct_figures(budget.target, cost.floor)
        raise BudgetError(f"budget {want} of the latency cannot be met here: the smallest decision measures "
                          f"{floor} of the original's onnxruntime latency (batch {budget.batch}, threads "
                          f"{budget.threads or 'default'}; everything removable removed): ask for at least "
                          f"{figure_at_least(cost.floor / (1 + budget.tolerance), floor)}")
    return cost


def default_out(name: str, recipe: Recipe) -> Path:
    """``runs/<model>-<method>-<budget>``, where a run goes without ``out``."""
    return Path("runs") / f"{name}-{recipe.method.name}-{recipe.budget.what}{recipe.budget.target:g}"


def named_teacher(recipe: Recipe, num_classes: int) -> nn.Module | None:
    """A teacher named in the recipe (a zoo model with its trained weights), built now so that a
    bad name or weights file is an error before any training; None for auto/original/none."""
    cfg = recipe.distill
    if cfg.teacher in ("auto", "original", "none"):
        return None
    if not cfg.teacher_weights:
        raise RecipeError(f"distill.teacher: {cfg.teacher!r} needs distill.teacher_weights (a teacher must be trained)")
    teacher, _ = create_model_for_size(cfg.teacher, recipe.data.input_size, num_classes=num_classes)
    load_weights(teacher, cfg.teacher_weights)
    check_finite(teacher, f"distill.teacher_weights {cfg.teacher_weights}")
    return teacher.eval()


def datasets(recipe: Recipe, data, model) -> tuple[Dataset, Dataset | None, Dataset, int]:
    """(train, held-out or None, test, classes) for ``recipe``: ``data`` as given (a path, or
    ``(train, test)`` datasets), else the recipe's data path (the embedded MNIST subset by default)."""
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


def build_original(model: nn.Module | str, recipe: Recipe, num_classes: int) -> tuple[nn.Module, str, dict, str]:
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
            kwargs = {**recipe.model_args, "num_classes": num_classes}
            return factory(**kwargs), model, kwargs, start
        except TypeError:
            if recipe.model_args:
                raise
            return factory(), model, {}, start
    if isinstance(model, str):
        if not recipe.pretrained:
            try:
                net, kwargs = create_model_for_size(model, recipe.data.input_size, num_classes=num_classes,
                                                    **recipe.model_args)
            except TypeError as exc:
                if recipe.model_args:
                    raise RecipeError(f"model_args: {model} does not take {recipe.model_args} ({exc})") from None
                raise
            except ValueError as exc:
                if recipe.model_args:
                    raise RecipeError(f"model_args: {exc}") from None
                raise
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
        raise RecipeError("data.input_size: must be set for a model given as an nn.Module")
    cls = type(model)
    return model, f"{cls.__module__}:{cls.__qualname__}", {}, "the nn.Module as given"


def data_facts(recipe: Recipe, data, sets: tuple, num_classes: int, start: str) -> dict[str, Any]:
    train, val, test = sets
    path = "datasets given by the caller" if isinstance(data, tuple) else \
        str(data or recipe.data.path or "embedded MNIST subset")
    return {"path": path, "train_images": len(train), "val_images": len(val) if val is not None else 0,
            "test_images": len(test), "classes": num_classes, "original_weights": start,
            "transforms": {"train": describe_transform(train), "test": describe_transform(test)}}
