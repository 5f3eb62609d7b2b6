"""A ``compress`` run as named stages (DESIGN section 2)::

    prepare -> base -> search -> finalize -> finetune -> export -> report

:func:`~compressor.prepare.prepare` checks and builds everything before a byte is written;
:class:`Run` holds the rest, one method per stage, each recording what it made on the run, so
tests can run them one by one.  Every training stage checkpoints after each epoch under
``OUT/checkpoints``; ``resume`` continues an interrupted run, and a finished stage only reloads.
"""
from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .decision import Decision
from .export import export_onnx, save_compressed
from .export.manifest import ARCH_FILE
from .export.onnx import OnnxExport
from .export.quantize import export_int8
from .methods import SearchContext, SearchResult
from .methods.followup import FollowUp, first_target, prune_after
from .prepare import Prepared
from .report import Stopwatch, build_report, write_report
from .surgery.slice import slice_model
from .train import Evaluation, Stage, Trainer, load_checkpoint
from .train.distill import Distillation
from .train.distributed import launched_as_main

STAGES = ("base", "search", "finalize", "finetune", "export", "report")
SPACE_PER_PARAM_BYTE = 12  # checkpoints (weights + momentum, three stages), ONNX, safetensors, with room


class OutputError(ValueError):
    """The output directory cannot take this run."""


class OutputExistsError(OutputError):
    """The output directory already holds a run and ``resume`` was not asked for."""


class Run:
    """One run after ``prepare``.  Claims the output directory on creation (the main process)."""

    def __init__(self, prepared: Prepared, *, resume: bool = False,
                 callbacks: tuple[Callable[[str, int, int], None], ...] = (), clock: Stopwatch | None = None) -> None:
        self.p, self.recipe, self.out, self.resume = prepared, prepared.recipe, prepared.out, resume
        self.clock = clock or Stopwatch()
        if launched_as_main():  # one process owns the output directory; the others only train
            need = SPACE_PER_PARAM_BYTE * sum(t.numel() * t.element_size() for t in prepared.net.parameters())
            claim(self.out, resume, need)
            if not (self.out / "recipe.yaml").exists():
                (self.out / "recipe.yaml").write_text(self.recipe.to_yaml())
        self.trainer = Trainer(self.recipe.run, log_dir=self.out / "logs", callbacks=callbacks,
                               workers=self.recipe.data.workers)
        self.history: dict[str, list] = {}
        self.kd: dict[str, Distillation] = {}
        self.teacher_mode = "none"
        self.original_eval: Evaluation | None = None
        self.result: SearchResult | None = None
        self.ctx: SearchContext | None = None
        self.compressed: nn.Module | None = None
        self.compressed_eval: Evaluation | None = None
        self.onnx: OnnxExport | None = None
        self.int8: dict[str, Any] | None = None
        self.then: list[FollowUp] = []
        self.latency_rounds: list = []  # a latency budget's measure-and-correct rounds
        self.report_dict: dict[str, Any] = {}

    def _stage(self, name: str, config, **kw) -> Stage:
        train, val, _ = self.p.sets
        return Stage(name, train, config, self.recipe.data.batch_size, val_set=val,
                     checkpoint=self.out / "checkpoints" / f"{name}.pt", resume=self.resume, **kw)

    # -- the stages ------------------------------------------------------------------------------
    def base(self) -> None:
        """Train the original (unless weights were given, or the method trains its own networks)."""
        p, r = self.p, self.recipe
        if not p.method.trains_original and not r.weights and not r.pretrained:
            p.data["original_weights"] = f"random init, never trained ({r.method.name} trains its own networks)"
        if p.method.trains_original and not r.weights and not r.pretrained and r.base.epochs:
            with self.clock("base"):
                self.history["base"] = [h.row() for h in self.trainer.fit(p.net, self._stage("base", r.base))]
        self.original_eval = self.trainer.evaluate(p.net, p.sets[2], r.data.batch_size)

    def search(self) -> None:
        """The method's search, with knowledge distillation where the recipe asks for it."""
        p, r = self.p, self.recipe
        teacher, mode = p.teacher, r.distill.teacher
        if mode == "auto":
            mode = "original" if p.method.distills_by_default else "none"
        if mode == "original":
            teacher = copy.deepcopy(p.net).eval()  # the trained original, before the search changes it
        self.teacher_mode = mode if teacher is not None else "none"
        self.kd = {stage: Distillation(teacher, alpha=r.distill.alpha, temperature=r.distill.temperature)
                   for stage in r.distill.stages} if teacher is not None else {}
        train, val, _ = p.sets
        budget = r.budget.model_copy(update={r.budget.what: first_target(r.budget.target, p.then)})
        self.ctx = SearchContext(self.trainer, train, val, r.data.batch_size, budget, r.export.round_to, r.run.seed,
                                 num_classes=p.num_classes, criterion=self.kd.get("search"), epochs=r.search,
                                 checkpoint=self.out / "checkpoints" / "search.pt", resume=self.resume,
                                 variants=p.variants)
        with self.clock("search"):
            self.result = p.method.search(p.net, self.ctx)
        self.history["search"] = self.result.history

    def finalize(self) -> None:
        """Cut the decision out of the searched model; the method may set its starting weights.
        Kinds that follow the method's decision (``choices: [op, channels]``) prune the result."""
        p, r = self.p, self.recipe
        original = self.result.model.cpu().eval()
        if p.latency is not None:
            with self.clock("latency_budget"):
                self.result.decision = self._meet_latency(original)
        self.compressed = p.method.finalize(slice_model(original, p.space, self.result.decision), self.result, self.ctx)
        if p.then:
            self.compressed, step = prune_after(self.compressed, p.example, list(p.then), r.budget.target,
                                                p.space.cost.full(r.budget.what), what=r.budget.what,
                                                round_to=r.export.round_to)
            self.then = [step]

    def _meet_latency(self, original: nn.Module) -> Decision:
        """The decision measured and corrected until the whole model's latency ratio meets the budget
        (compressor/latency/correct.py).  Kept in ``checkpoints/latency.json``: a resumed run
        reuses it rather than measuring again (the fine-tune checkpoint has its shapes)."""
        from .latency import Meter, Redecider, Round, meet_latency, rounds_table

        p, budget = self.p, self.recipe.budget
        saved = self.out / "checkpoints" / "latency.json"
        if self.resume and saved.is_file():
            state = json.loads(saved.read_text())
            self.latency_rounds = [Round(**r) for r in state["rounds"]]
            return Decision.from_dict(state["decision"])
        meter = Meter(original, p.example, batch=budget.batch, threads=budget.threads, repeats=budget.repeats)
        try:
            redecide = None if self.result.carry is not None else \
                Redecider(original, p.space, self.result.decision, self.recipe.export.round_to, self._loss_scores(original))
            decision, self.latency_rounds = meet_latency(
                self.result.decision, budget.target, lambda d: meter(slice_model(original, p.space, d)), redecide,
                lambda d: d.cost(p.space, "latency") / p.space.cost.full("latency"),
                tolerance=budget.tolerance, rounds=budget.rounds,
                floor=None if p.latency.floor is None else (p.latency.floor_budget, p.latency.floor),
                step=None if redecide is None else redecide.widths_floor)
        finally:
            meter.close()
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"decision": decision.to_dict(), "rounds": rounds_table(self.latency_rounds)}))
        return decision

    def _loss_scores(self, model: nn.Module, batches: int = 4) -> dict[str, np.ndarray]:
        """Per loss-scored kind (residual blocks): what removing each slot costs on a few training
        batches (CPU), the order a latency correction removes the method's kept slots in."""
        from .importance import drop_loss, loss_scored_kinds

        return {kind: drop_loss(model.eval(), self.p.space, kind, self.ctx.training_batches(batches, "cpu"))
                for kind in loss_scored_kinds(self.p.space)}

    def _latency_summary(self) -> dict | None:
        if self.p.latency is None:
            return None
        from .latency import budget_summary

        b = self.recipe.budget
        return budget_summary(self.p.latency, self.latency_rounds, b.target, b.tolerance)

    def finetune(self) -> None:
        """Train the decided model (a one-shot method also gets the search epochs)."""
        p, r = self.p, self.recipe
        config = p.method.finetune_config(r.finetune, r.search)
        if not p.method.trains_in_search:  # equal total epochs for every method
            config = config.model_copy(update={"epochs": config.epochs + r.search.epochs})
        self.finetune_epochs = config.epochs
        if config.epochs:
            with self.clock("finetune"):
                stage = self._stage("finetune", config, criterion=self.kd.get("finetune"))
                self.history["finetune"] = [h.row() for h in self.trainer.fit(self.compressed, stage)]
        self.compressed_eval = self.trainer.evaluate(self.compressed, p.sets[2], r.data.batch_size)
        self._baseline()
        self.compressed = self.compressed.cpu().eval()

    def _baseline(self) -> None:
        """The method's comparison run, side by side with its own training."""
        if self.result.baseline is None:
            return
        own = self.clock.seconds.get("search", 0.0) + self.clock.seconds.get("finetune", 0.0)
        with self.clock("baseline"):
            base = self.result.baseline(self.p.sets[2], self.finetune_epochs, own)
        self.result.summary["baseline"] = {**base, "method_seconds": round(own, 1),
                                           "method_test_top1": self.compressed_eval.top1,
                                           "wall_clock_ratio": round(own / max(base["seconds"], 1e-9), 3)}

    def export(self) -> None:
        """``compressor.json`` + ``model.safetensors``, the ONNX file checked in onnxruntime, and its int8
        quantization where the recipe asks."""
        if not self.trainer.dist.is_main:
            return
        p = self.p
        with self.clock("export"):
            save_compressed(self.compressed, self.out, source=p.source, source_kwargs=p.source_kwargs,
                            input_shape=tuple(p.example.shape), decision=self.result.decision,
                            then=[step.decision for step in self.then])
            if self.recipe.export.onnx:
                self.onnx = export_onnx(self.compressed, self.out / "model.onnx", p.example,
                                        opset=self.recipe.export.opset, dynamic_batch=True)
        if self.recipe.export.quantize == "int8":
            with self.clock("int8"):
                self.int8 = export_int8(self.out / "model.onnx", self.out / "model.int8.onnx", p.sets,
                                        self.recipe.export, batch_size=self.recipe.data.batch_size,
                                        seed=self.recipe.run.seed)

    def report(self) -> None:
        """``report.json``, ``report.md`` and the plots."""
        if not self.trainer.dist.is_main:
            return
        p, summary = self.p, dict(self.result.summary)
        if self.kd:
            summary["distillation"] = {"teacher": self.teacher_mode, **{s: d.summary() for s, d in self.kd.items()},
                                       "stage_seconds": {s: round(self.clock.seconds.get(s, 0.0), 1) for s in self.kd}}
        self.report_dict = build_report(name=p.name, recipe=self.recipe, space=p.space, decision=self.result.decision,
                                   method=p.method, original=self.result.model.cpu().eval(),
                                   compressed=self.compressed, example=p.example,
                                   accuracy=(self.original_eval, self.compressed_eval), onnx=self.onnx, int8=self.int8,
                                   then=self.then, out=self.out, latency_budget=self._latency_summary(),
                                   history=self.history, method_summary=summary, clock=self.clock, data=p.data,
                                   rules=p.rules, dist_world=self.trainer.dist.world_size)
        write_report(self.report_dict, self.out)


def claim(out: Path, resume: bool, need: int = 0) -> None:
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
