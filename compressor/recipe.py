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
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RECIPE_VERSION = 1
ONNX_OPSETS = (13, 20)  # lowest we support, highest torch.onnx's TorchScript exporter writes


class RecipeError(ValueError):
    """A recipe that does not parse or does not validate; the message names the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BudgetConfig(_Strict):
    """What the compressed model may cost, as a fraction of the original (exactly one is set)."""

    flops: float | None = Field(None, description="Kept FLOPs (MACs at the recipe input size), fraction in (0, 1).")
    params: float | None = Field(None, description="Kept parameters, fraction in (0, 1).")

    @field_validator("flops", "params")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError(f"must be a fraction in (0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _one(self) -> "BudgetConfig":
        if (self.flops is None) == (self.params is None):
            raise ValueError("set exactly one of budget.flops and budget.params")
        return self

    @property
    def what(self) -> str:
        return "flops" if self.flops is not None else "params"

    @property
    def target(self) -> float:
        return float(self.flops if self.flops is not None else self.params)  # type: ignore[arg-type]


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


class ScsConfig(_Strict):
    """Structured continuous sparsification (Yuan, Savarese & Maire, ICLR 2021; DESIGN 5.1)."""

    name: Literal["scs"] = "scs"
    mode: Literal["prune", "grow"] = Field("prune", description="Start with every gate on, or one per layer/stage.")
    channels: bool = Field(True, description="Gate channel groups.")
    layers: bool = Field(True, description="Gate residual blocks (depth).")
    lambda1_base: float | None = Field(None, description="Channel penalty base; None = 1.0 with layers, else 0.5.")
    lambda2_base: float = Field(0.1, description="Layer penalty base.")
    beta0: float = Field(1.0, gt=0, description="Initial temperature.")
    beta_final: float = Field(100.0, gt=1, description="Temperature after T on-epochs: gamma = (final/beta0)^(1/T).")
    temperature: Literal["per_gate", "global"] = Field("per_gate", description="Per-gate counters or t = epoch.")
    lambda_interval: int | None = Field(None, ge=1, description="Also re-measure du every N steps on the expected "
                                        "cost of the next draw; None = once per epoch (the paper).")
    init_logit: float | None = Field(None, gt=0, description="|s| at the start (prune: +s for all; grow: +s for "
                                     "seeds; importance: the size farthest from the cut). None = 3.0 (the paper's), "
                                     "100.0 with init: importance (only the units next to the cut start undecided).")
    init: Literal["constant", "importance"] = Field(
        "constant", description="Channel logits at the start. constant: +init_logit for every unit (the paper). "
        "importance (prune mode): the magnitude-pruning decision at the budget sets the sign, the unit's rank "
        "inside the kept or the dropped units the size, from 0 at the cut to init_logit.")
    logit_lr: float = Field(0.1, gt=0, description="SGD learning rate of the gate logits.")
    logit_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of the gate logits.")
    logit_weight_decay: float = Field(1e-6, ge=0, description="Weight decay of the gate logits.")
    sparse_epochs: bool = Field(False, description="Train only the units the epoch's draw switched on (the "
                                "sliced active network, weights written back after the epoch): a sparse "
                                "epoch costs less wall-clock. Off: the whole network runs with zeros in it.")
    grow_epochs: int | None = Field(None, ge=1, description="Grow mode (ours): the cost the penalty aims the "
                                    "next draw at rises linearly to the budget over this many search epochs "
                                    "(at most the search's), so the first epochs train a small network. "
                                    "None = the budget from the first epoch (the paper).")

    @model_validator(mode="after")
    def _init_needs_weights(self) -> ScsConfig:
        if self.init == "importance" and self.mode == "grow":
            raise ValueError("init: importance ranks a trained original's units; grow mode starts from fresh "
                             "weights: set method.init=constant (the scs-grow recipe does)")
        if self.grow_epochs is not None and self.mode != "grow":
            raise ValueError("grow_epochs paces the growth of grow mode; prune mode starts at full size: "
                             "set method.mode=grow or drop method.grow_epochs")
        return self

    @property
    def lambda1(self) -> float:
        if self.lambda1_base is not None:
            return self.lambda1_base
        return 1.0 if self.layers else 0.5

    @property
    def start_logit(self) -> float:
        """``init_logit`` or its default for ``init`` (docs/accuracy.md: the band near the cut)."""
        if self.init_logit is not None:
            return self.init_logit
        return 100.0 if self.init == "importance" else 3.0


class PruneConfig(_Strict):
    """One-shot importance pruning to the budget, then fine-tuning (the baseline)."""

    name: Literal["prune"] = "prune"
    importance: Literal["magnitude", "taylor"] = Field("magnitude", description="Per-channel score.")
    taylor_batches: int = Field(8, ge=1, description="Batches whose gradients the Taylor score sums.")
    blocks: int = Field(0, ge=0, description="Also remove this many residual blocks: those whose skipping "
                        "raises the training loss least (channels then fill the budget around them).")
    block_batches: int = Field(4, ge=1, description="Training batches the block scores are measured on.")


class SelfDistillConfig(_Strict):
    """Self-distillation with voting teachers (SD-DARTS; DESIGN 5.4): ``weight * KL(p || p_teacher)``
    with ``p_teacher`` the mean of the model's own probabilities for the sample over the last
    ``k`` epochs, added to the weight and architecture losses after the warm-up."""

    enabled: bool = Field(False, description="Add the voting-teacher term.")
    weight: float = Field(1.0, ge=0, description="lambda, the term's weight.")
    k: int = Field(2, ge=1, description="Past epochs whose probabilities are averaged (K).")
    warmup: float = Field(0.5, ge=0, lt=1, description="Fraction of the search epochs without the term (xi / E).")


class TasConfig(_Strict):
    """Transformable architecture search (Dong & Yang, NeurIPS 2019; DESIGN 5.2): width and depth
    distributions searched on a held-out half of the training set, then the argmax shape is
    sliced and trained (with distillation from the original: ``distill.teacher: auto``)."""

    name: Literal["tas"] = "tas"
    ratios: list[float] = Field([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], min_length=1,
                                description="Candidate widths as fractions of each channel group, in (0, 1].")
    candidates: int = Field(2, ge=1, description="|I|: distinct widths sampled and mixed per group and step "
                            "(1 gives the width logits no gradient: the paper's failed ablation).")
    mixture: Literal["cwi", "pad"] = Field("pad", description="Align sampled widths by zero padding, or by "
                                           "channel-wise interpolation where the consumer allows it (the paper; "
                                           "its recipes set it). Padding won on trained weights (docs/accuracy.md).")
    depth: bool = Field(True, description="Search the number of leading blocks kept per stage.")
    tau_max: float = Field(5.0, gt=0, description="Gumbel temperature at the start (cosine decay).")
    tau_min: float = Field(0.1, gt=0, description="Gumbel temperature at the end.")
    cost_weight: float = Field(2.0, ge=0, description="lambda_cost of the banded cost loss.")
    tolerance: float = Field(0.05, ge=0, lt=1, description="Band below the budget, as a fraction of the full cost.")
    arch_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the architecture logits.")
    arch_betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of the architecture logits.")
    arch_weight_decay: float = Field(1e-3, ge=0, description="Adam weight decay of the architecture logits.")
    order: Literal[1, 2] = Field(1, description="Bilevel order: 1 (first order) or 2 (DARTS unrolled step).")
    split: float = Field(0.5, gt=0, lt=1, description="Share of the training set (per class) used for "
                         "architecture steps; the rest trains the weights.")
    final_init: Literal["searched", "original", "scratch"] = Field(
        "searched", description="Weights the found network starts from: the searched ones sliced, the trained "
        "original's sliced, or a fresh initialisation (the paper).")
    init: Literal["normal", "budget"] = Field(
        "normal", description="Architecture logits at the start: N(0, 0.01) (the paper), or 'budget': the same "
        "plus a head start of 2 for the width the one-shot magnitude fit to the budget keeps in each group and "
        "for full depth, so a short search refines that shape instead of starting from noise.")
    self_distill: SelfDistillConfig = Field(default_factory=SelfDistillConfig)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0 < r <= 1]
        if bad:
            raise ValueError(f"candidate ratios must be in (0, 1], got {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _taus(self) -> "TasConfig":
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min {self.tau_min} is above tau_max {self.tau_max}")
        return self


class GrowConfig(_Strict):
    """MixtureGrowth (Pham et al., WACV 2024; DESIGN 5.3): two seed models of half the target's width,
    whose conv and linear weights are mixtures of templates, train one after the other in the search
    stage; then they are grown x2 into the target, which trains in the fine-tune stage.  No
    original is trained: the base stage is skipped."""

    name: Literal["grow"] = "grow"
    target: Literal["budget", "model"] = Field(
        "budget", description="What the seeds grow into: the model cut to the budget (the same share of every "
        "channel group), or the model itself (the budget is then ignored).")
    templates: int = Field(2, ge=2, description="Templates per set; each seed layer mixes its own set.")
    fusion: bool = Field(True, description="Train a second seed and grow from both; without, the new blocks "
                         "come from the first seed's templates alone.")
    second_seed: float = Field(0.5, gt=0, lt=1, description="Share of the search epochs that trains the second "
                               "seed (with fusion); the first seed trains the rest.")
    new_coefficients: Literal["orthogonal", "random", "copy", "zero"] = Field(
        "zero", description="Coefficients of the new (off-diagonal) blocks over the trained templates. zero keeps "
        "the grown model the sum of its seeds and won the ablation on resnet18 and mobilenet_v2 (docs/grow.md); "
        "orthogonal is the paper's.")
    noise: float = Field(1.0, ge=0, description="Scale of the random and copy coefficient inits.")
    grown_lr: Literal["search", "finetune"] = Field(
        "search", description="Learning rate of the grown model in the fine-tune stage: the search stage's, as "
        "its seeds trained (won on resnet18 and mobilenet_v2 at the default recipe's epochs, docs/grow.md), or "
        "the fine-tune stage's (the reference code's low rate after converged seeds).")
    scratch_baseline: bool = Field(True, description="Also train the target from scratch for the same total "
                                   "epochs (search + fine-tune, search stage settings) and report both side by side "
                                   "(what growth saved; about doubles the run: false skips it).")
    equal_time_baselines: bool = Field(False, description="With scratch_baseline: also train the target from scratch "
                                       "and the first seed alone (no growth) for as many epochs as fit in the grow "
                                       "path's wall-clock, each at its per-epoch seconds measured in this run.")

    @model_validator(mode="after")
    def _equal_time_needs_scratch(self):
        if self.equal_time_baselines and not self.scratch_baseline:
            raise ValueError("equal_time_baselines needs scratch_baseline: the target's epoch time is measured there")
        return self


MethodConfig = Annotated[Union[ScsConfig, PruneConfig, TasConfig, GrowConfig], Field(discriminator="name")]
METHOD_NAMES = ("scs", "prune", "tas", "grow")


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

    round_to: int = Field(16, ge=1, description="Kept widths are multiples of this many channels.")
    onnx: bool = Field(True, description="Write and check model.onnx.")
    opset: int = Field(17, ge=ONNX_OPSETS[0], le=ONNX_OPSETS[1], description="ONNX opset (what the "
                       "TorchScript exporter writes).")
    latency_repeats: int = Field(20, ge=0, description="onnxruntime timing repeats per batch size (0 = skip).")


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
    weights: str | None = Field(None, description="Trained weights of the original; None = train them (base).")
    pretrained: bool = Field(False, description="Start from the weights timm/torchvision provide for the model "
                             "(their cache, or pretrained_file); no base training; a new head if the data's "
                             "classes differ.")
    pretrained_file: str | None = Field(None, description="Local file of those pretrained weights (implies "
                                        "pretrained).")
    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig(flops=0.5))
    method: MethodConfig = Field(default_factory=ScsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    base: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3))
    search: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=6))
    finetune: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=2, lr=0.01))
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    run: RunConfig = Field(default_factory=RunConfig)

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


def method_override(recipe: Recipe, name: str) -> dict[str, Any]:
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
        data = _read_yaml(source)
    for path, value in (overrides or {}).items():  # copies: a later dotted key must not edit the caller's dict
        _set_path(data, path, copy.deepcopy(value))
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc)) from None


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
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in METHOD_NAMES
                                                           and err["loc"][0] == "method"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown method; expected one of {', '.join(METHOD_NAMES)}"
        parts.append(f"{loc or '<recipe>'}: {msg}" + (f", got {err['input']!r}" if err["type"].endswith(
            ("_type", "_parsing", "literal_error", "greater_than", "less_than", "greater_than_equal",
             "less_than_equal")) else ""))
    return "; ".join(parts)
