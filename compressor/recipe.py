"""Typed recipes: every knob of a ``compress`` run, loaded from YAML, a dict or a built-in name.

Unknown keys are errors, and every error names the key path and what was expected::

    >>> r = load_recipe({"budget": {"flops": 0.5}, "method": {"name": "prune"}})
    >>> r.method.importance
    'magnitude'
    >>> load_recipe({"budget": {"flops": 1.5}})
    Traceback (most recent call last):
    RecipeError: budget.flops: must be a fraction in (0, 1), got 1.5
"""
from __future__ import annotations

import copy
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

RECIPE_VERSION = 1
ONNX_OPSETS = (13, 20)  # lowest we support, highest torch.onnx's TorchScript exporter writes


class RecipeError(ValueError):
    """A recipe that does not parse or does not validate; the message names the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BudgetConfig(_Strict):
    """What the compressed model may cost, as a fraction of the original (exactly one of flops,
    params and latency is set; batch, threads, repeats, tolerance and rounds concern latency only)."""

    flops: float | None = Field(None, description="Kept FLOPs (MACs at the recipe input size), fraction in (0, 1).")
    params: float | None = Field(None, description="Kept parameters, fraction in (0, 1).")
    latency: float | None = Field(None, description="Kept onnxruntime CPU latency on this machine (whole model, "
                                  "median, side by side with the original), fraction in (0, 1).")
    batch: int = Field(1, ge=1, le=1024, description="Latency: the batch size the model is timed at.")
    threads: int | None = Field(None, ge=1, le=1024, description="Latency: onnxruntime intra-op threads "
                                "(None = onnxruntime's default, one per core).")
    repeats: int = Field(100, ge=20, le=100_000, description="Latency: timed runs of each model per whole-model "
                         "measurement (medians; the original and the compressed model take turns every 10 runs).")
    tolerance: float = Field(0.02, gt=0, lt=0.5, description="Latency: the measured ratio may miss the target "
                             "by this much (relative) before the budget is corrected (a measurement minutes later "
                             "moves by a median 1-2% on 2 cores: 0.02 leaves most of the usual 5% for it).")
    rounds: int = Field(8, ge=1, le=12, description="Latency: at most this many measure-and-correct rounds "
                        "(a round re-decides, exports and times the model: seconds, against minutes of training).")

    @field_validator("flops", "params", "latency")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError(f"must be a fraction in (0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _one(self) -> "BudgetConfig":
        if sum(v is not None for v in (self.flops, self.params, self.latency)) != 1:
            raise ValueError("set exactly one of budget.flops, budget.params and budget.latency")
        return self

    @property
    def what(self) -> str:
        return next(k for k in ("flops", "params", "latency") if getattr(self, k) is not None)

    @property
    def target(self) -> float:
        return float(getattr(self, self.what))


class DataConfig(_Strict):
    """Where images come from and how they reach the model."""

    path: str | None = Field(None, description="ImageFolder tree or CIFAR folder; None = embedded MNIST subset.")
    input_size: int | None = Field(32, ge=8, description="Square input side in pixels; None = the model's own.")
    batch_size: int = Field(64, ge=1, description="Images per step (per process under DDP).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the training set held out per class.")
    augment: bool = Field(True, description="Random shifts (arrays) or random-resized crops + flips (folders).")
    mean: tuple[float, float, float] | None = Field(None, description="Normalisation mean; None = the model's "
                                                    "pretrained data config (MNIST's for the embedded set).")
    std: tuple[float, float, float] | None = Field(None, description="Normalisation std; None as for mean.")
    crop_pct: float | None = Field(None, gt=0, le=1, description="Image files: centre crop / resize side at "
                                   "evaluation; None = the model's pretrained data config (else 0.875).")
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = Field(
        None, description="Image files: resize interpolation; None = the model's pretrained data config.")
    workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    limit_train: int | None = Field(None, ge=1, description="Use only the first N training images (smoke runs).")


class TrainConfig(_Strict):
    """One training stage of the weights (SGD with momentum)."""

    epochs: int = Field(3, ge=0, description="Epochs of this stage.")
    lr: float = Field(0.05, gt=0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(True, description="Nesterov momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (not applied to norms and biases).")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="Learning-rate schedule.")
    milestones: list[float] = Field([0.5, 0.75], description="Step schedule: fractions of the stage's epochs.")
    gamma: float = Field(0.1, gt=0, description="Step schedule: factor at each milestone.")
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up, in epochs (fractions allowed).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm to this value.")


class MethodConfig(_Strict):
    """Base of every method's settings: ``name`` selects the method.  A method declares its
    subclass (``Method.config_class``); the method registry makes ``method: {name: ...}`` in a
    recipe validate against it (:func:`register_method_config`)."""

    name: str


_METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}


def register_method_config(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Make ``cls`` the settings of the method named by its ``name`` default."""
    name = cls.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a default name")
    _METHOD_CONFIGS[name] = cls
    return cls


def unregister_method_config(name: str) -> None:
    _METHOD_CONFIGS.pop(name, None)


def method_names() -> list[str]:
    """Every registered method, in registration order."""
    return list(_METHOD_CONFIGS)


def method_config(name: str, **settings: Any) -> MethodConfig:
    """The validated settings of method ``name``."""
    if name not in _METHOD_CONFIGS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(_METHOD_CONFIGS)}")
    return _METHOD_CONFIGS[name].model_validate({"name": name, **settings})


class SelfDistillConfig(_Strict):
    """Self-distillation with voting teachers (SD-DARTS; DESIGN 5.4): ``weight * KL(p || p_teacher)``
    with ``p_teacher`` the mean of the model's own probabilities for the sample over the last
    ``k`` epochs, added to the weight and architecture losses after the warm-up."""

    enabled: bool = Field(False, description="Add the voting-teacher term.")
    weight: float = Field(1.0, ge=0, description="lambda, the term's weight.")
    k: int = Field(2, ge=1, description="Past epochs whose probabilities are averaged (K).")
    warmup: float = Field(0.5, ge=0, lt=1, description="Fraction of the search epochs without the term (xi / E).")


class DistillConfig(_Strict):
    """Knowledge distillation (Hinton KD) in the training stages listed: ``(1 - alpha) * CE +
    alpha * T^2 * KL(teacher || student)``.  ``auto`` follows the method (``tas``: the trained
    original; others: none); a model name needs ``teacher_weights``."""

    teacher: str = Field("auto", description="auto, original, none, or a model name (with teacher_weights).")
    teacher_weights: str | None = Field(None, description="Trained weights of a named teacher.")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the distillation term (TAS: 0.9 CIFAR, 0.5 ImageNet).")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature T.")
    stages: list[Literal["search", "finetune"]] = Field(["finetune"], description="Stages that distill.")


class ExportConfig(_Strict):
    """What ends up in the output directory."""

    round_to: int = Field(16, ge=1, description="Kept widths are multiples of this many channels (a latency "
                          "budget uses the channel block measured on this CPU instead).")
    onnx: bool = Field(True, description="Write and check model.onnx.")
    opset: int = Field(17, ge=ONNX_OPSETS[0], le=ONNX_OPSETS[1], description="ONNX opset (what the "
                       "TorchScript exporter writes).")
    latency_repeats: int = Field(20, ge=0, description="onnxruntime timing repeats per batch size (0 = skip).")
    quantize: Literal["none", "int8"] = Field("none", description="int8: also write model.int8.onnx, onnxruntime's "
                                              "static QDQ quantization, checked against model.onnx.")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="How int8 activation "
                                                                     "ranges are calibrated.")
    calibration_images: int = Field(256, ge=1, description="Training images the int8 ranges are calibrated on.")
    per_channel: Literal["auto"] | bool = Field("auto", description="int8 weights per output channel; auto: "
                                                "per-tensor and per-channel both, the better on held-out images.")

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> "ExportConfig":
        if self.quantize == "int8" and not self.onnx:
            raise ValueError("quantize=int8 quantizes model.onnx: it needs onnx=true")
        return self


class RunConfig(_Strict):
    """Where and how the run executes."""

    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="Autocast dtype (fp16 on CUDA only).")
    channels_last: bool = Field(False, description="Train in channels_last memory format.")
    seed: int = Field(0, description="Seed of every random choice (data order, sampling, init).")
    progress: bool = Field(True, description="Show progress bars.")


class Recipe(_Strict):
    """A whole ``compress`` run.  Stages: ``base`` (train the original when no weights are given),
    ``search`` (the method's own training), ``finetune`` (the sliced model).  A method that does
    not train during search (``prune``) gets the search epochs added to its fine-tuning, so every
    method sees the same total number of epochs."""

    VERSION: ClassVar[int] = RECIPE_VERSION
    version: int = Field(RECIPE_VERSION, description="Recipe format version.")
    model: str | None = Field(None, description="Model name; the CLI's MODEL argument overrides it.")
    model_args: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="Keyword arguments of the model's constructor beside num_classes "
        "(e.g. {c: 8, layers: 5} for darts_search; a mapping or list is passed as its JSON text, e.g. "
        "darts_network's genotype); saved with the model, which is rebuilt with them.")
    weights: str | None = Field(None, description="Trained weights of the original; None = train them (base).")
    pretrained: bool = Field(False, description="Start from the weights timm/torchvision provide for the model "
                             "(their cache, or pretrained_file); no base training; a new head if the data's "
                             "classes differ.")
    pretrained_file: str | None = Field(None, description="Local file of those pretrained weights (implies "
                                        "pretrained).")
    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig(flops=0.5))
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: method_config("scs"))
    choices: list[str] = Field(["channels", "depth"], min_length=1, description="Kinds of choice the search "
                               "space holds: channels, depth, kernel (each kind's sites; compress inspect lists them).")
    rules: dict[str, Optional[dict[str, Any]]] = Field(
        default_factory=dict, description="Per-module rules by fnmatch pattern on module names, later patterns "
        "winning: null leaves a module untouched by every kind; a mapping sets a kind's constraints "
        "(channels: min_keep, a fraction; kernel: a list of kept sizes), e.g. {'head*': null, "
        "'layer4.*': {min_keep: 0.5}}.  A pattern that matches nothing is an error.")
    data: DataConfig = Field(default_factory=DataConfig)
    base: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3))
    search: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=6))
    finetune: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=2, lr=0.01))
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @field_validator("model_args", mode="before")
    @classmethod
    def _json_args(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: json.dumps(a) if isinstance(a, (dict, list)) else a for k, a in v.items()}
        return v

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> Any:
        if isinstance(v, dict):
            name = v.get("name", "scs")
            if name not in _METHOD_CONFIGS:
                raise ValueError(f"unknown method {name!r}; expected one of {', '.join(_METHOD_CONFIGS)}")
            return _METHOD_CONFIGS[name].model_validate({**v, "name": name})
        return v

    @field_validator("choices")
    @classmethod
    def _choices(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each kind once, got {v}")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(f"this compressor reads recipe version {RECIPE_VERSION}, not {v}")
        return v

    @model_validator(mode="after")
    def _one_start(self) -> "Recipe":
        if self.pretrained_file and not self.pretrained:
            self.__dict__["pretrained"] = True  # a file of pretrained weights means: start from it
        if self.weights and self.pretrained:
            raise ValueError("weights and pretrained both say where the original's weights come from; set one")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def method_override(recipe: "Recipe", name: str) -> dict[str, Any]:
    """Overrides that switch ``recipe`` to method ``name``: none when it already uses it (its
    settings stay), else that method with its own defaults."""
    return {} if name == recipe.method.name else {"method": {"name": name}}


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files("compressor.recipes").iterdir() if p.name.endswith(".yaml"))


def load_recipe(source: "Recipe | dict | str | os.PathLike | None" = None,
                overrides: dict[str, Any] | None = None) -> Recipe:
    """A :class:`Recipe` from an object, a dict, a YAML path or a built-in name (``"default"``),
    with ``overrides`` (dotted key paths, e.g. ``{"budget.flops": 0.25}``) applied on top.

    Raises :class:`RecipeError` naming the key path and what was expected.
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Recipe):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    else:
        data = _read_recipe(source)
    for path, value in (overrides or {}).items():  # copies: a later dotted key must not edit the caller's dict
        _set_path(data, path, copy.deepcopy(value))
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc)) from None


def _read_recipe(source: str | os.PathLike, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A recipe's keys, over those of the recipe its ``extends:`` names (a built-in name, or a
    YAML path relative to the extending file), recursively; a key the extending recipe sets
    replaces the base's (mappings merge key by key)."""
    data = _read_yaml(source)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RecipeError(f"recipe {source}: extends must name a recipe, got {base!r}")
    here = Path(str(source))
    if base.endswith((".yaml", ".yml")) and here.suffix in (".yaml", ".yml"):
        base = os.path.normpath(here.parent / base)
    if base in seen or base == os.path.normpath(source):
        chain = " -> ".join((*seen, os.path.normpath(source), base))
        raise RecipeError(f"recipe {source}: extends {base}, which extends it back ({chain})")
    return _merged(_read_recipe(base, (*seen, os.path.normpath(source))), data)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(source: str | os.PathLike) -> dict[str, Any]:
    text = str(source)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file {path} not found")
        raw = path.read_text()
    else:
        names = builtin_recipes()
        if text not in names:
            raise RecipeError(f"unknown recipe {text!r}: not a file, and the built-in recipes are {', '.join(names)}")
        raw = resources.files("compressor.recipes").joinpath(text + ".yaml").read_text()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"recipe {text} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {text} must be a mapping of keys, got {type(data).__name__}")
    return data


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc or '<recipe>'}: {msg}" + (f", got {err['input']!r}" if err["type"].endswith(
            ("_type", "_parsing", "literal_error", "greater_than", "less_than", "greater_than_equal",
             "less_than_equal")) else ""))
    return "; ".join(parts)
