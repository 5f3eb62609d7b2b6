"""``Trainer``: the one training loop of the project (device, autocast, channels_last, DDP,
gradient clipping, LR schedules, per-epoch atomic checkpoints with resume, progress, CSV logs).

A stage resumed from its last checkpoint continues bit-for-bit: data order comes from
``(seed, epoch)``, and model, optimizer, scheduler, hook state and the torch RNG are restored.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import one_line
from ..gates.outputs import first_output
from ..recipe import RunConfig, TrainConfig
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import DistEnv, resolve_device
from .hooks import TrainHooks
from .log import EpochResult, append_csv, tensorboard
from .part import part_optimizer, return_state, sync_lr
from .sampling import EpochSampler, IndexedDataset, cycle
from .schedule import lr_factor

CHECKPOINT_FORMAT = 1
StepCallback = Callable[[str, int, int], None]  # (stage, epoch, step within the epoch)
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, outputs, targets)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Every 4-d parameter and buffer in channels_last, in place.  Unlike ``Module.to``, tensors of
    other ranks are left alone (template mixtures stack conv weights into 5-d tensors, which
    ``Module.to(memory_format=channels_last)`` refuses)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


class DivergedError(ValueError):
    """The loss became NaN or infinite: the message gives the stage, epoch and step."""


class Evaluation(NamedTuple):
    """What :meth:`Trainer.evaluate` measured: mean cross-entropy, top-1 and top-5 accuracy."""

    loss: float
    top1: float
    top5: float


@dataclass
class Stage:
    """One training stage: what :meth:`Trainer.fit` trains on, how, and where it checkpoints.

    ``criterion(inputs, outputs, targets)`` replaces cross-entropy as the task loss (e.g. a
    :class:`~compressor.train.distill.Distillation`).  ``arch_set`` feeds the hooks' ``arch_step``
    (default: ``val_set``, which is evaluated after every epoch).  With ``checkpoint``, the full
    state is written there atomically after every epoch, and ``resume`` continues from it when it
    exists (a finished stage returns at once).  ``workers``: DataLoader workers (None: the trainer's).
    """

    name: str
    train_set: Dataset
    config: TrainConfig
    batch_size: int
    val_set: Dataset | None = None
    arch_set: Dataset | None = None
    hooks: TrainHooks | None = None
    criterion: Criterion | None = None
    checkpoint: str | os.PathLike | None = None
    resume: bool = False
    workers: int | None = None


@dataclass
class _Run:
    """The mutable state of one :meth:`Trainer.fit` call."""

    stage: Stage
    hooks: TrainHooks
    loader: DataLoader
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ckpt: Path | None


class Trainer:
    """Trains a module for one :class:`Stage` at a time.

    During :meth:`fit`, ``trainer.optimizer`` is the weight optimizer (a second-order architecture
    step reads its learning rates and momentum buffers).

    Example:
        >>> trainer = Trainer(RunConfig(seed=0, progress=False))
        >>> history = trainer.fit(model, Stage("base", train_set, TrainConfig(epochs=2), batch_size=64))
    """

    def __init__(self, run: RunConfig, *, log_dir: str | os.PathLike | None = None,
                 callbacks: tuple[StepCallback, ...] = (), workers: int = 0) -> None:
        """``workers``: DataLoader worker processes of every loader this trainer builds (the
        recipe's ``data.workers``); 0 loads in the training process."""
        self.run = run
        self.workers = workers
        self.device = resolve_device(run.device)
        self.dist = DistEnv.from_environment(self.device)
        self.log_dir = Path(log_dir) if log_dir else None
        self.callbacks = callbacks
        if run.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp=fp16 needs CUDA; use amp=bf16 on CPU")
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[run.amp]

    # -- helpers ---------------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool, workers: int | None = None,
               indexed: bool = False) -> DataLoader:
        """Batches ``(x, y)``, or ``(x, y, index)`` when ``indexed``.  A shuffled (training) loader
        drops a last batch of one sample: batch norm cannot train on it.  ``workers`` defaults to
        the trainer's."""
        workers = self.workers if workers is None else workers
        sampler = EpochSampler(len(dataset), self.run.seed, self.dist, shuffle)  # type: ignore[arg-type]
        return DataLoader(IndexedDataset(dataset) if indexed else dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=workers, drop_last=shuffle and len(sampler) % batch_size == 1,
                          pin_memory=self.device.type == "cuda")

    def _to_device(self, x: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.to(self.device, non_blocking=True)
        if self.run.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, *(t.to(self.device, non_blocking=True) for t in rest))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int, workers: int | None = None) -> Evaluation:
        """Mean cross-entropy, top-1 and top-5 accuracy over ``dataset`` (sharded under DDP).
        With fewer than 5 classes top-5 counts every sample as correct.  The model moves to the
        trainer's device (as in :meth:`fit`): a model no stage has trained yet is still where it was built."""
        model.to(self.device)
        was_training = model.training
        model.eval()
        loss_sum = correct = correct5 = count = 0.0
        for x, y in self.loader(dataset, batch_size, shuffle=False, workers=workers):
            x, y = self._to_device(x, y)
            with self.autocast():
                out = first_output(model(x)).float()
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            correct += float((top[:, 0] == y).sum())
            correct5 += float((top == y[:, None]).any(1).sum())
            count += len(y)
        model.train(was_training)
        loss_sum, correct, correct5, count = self.dist.sum([loss_sum, correct, correct5, count])
        n = max(count, 1)
        return Evaluation(loss_sum / n, correct / n, correct5 / n)

    def _optimizer(self, model: nn.Module, cfg: TrainConfig, hooks: TrainHooks) -> torch.optim.Optimizer:
        extra = hooks.param_groups()
        taken = {id(p) for g in extra for p in g["params"]}
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad and id(p) not in taken:
                (decay if p.dim() > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}, *extra]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, model: nn.Module, stage: Stage) -> list[EpochResult]:
        """Train ``model`` in place for ``stage.config.epochs`` epochs; return the per-epoch history."""
        hooks = stage.hooks or TrainHooks()
        model.to(self.device)
        if self.run.channels_last:
            to_channels_last(model)
        if hasattr(stage.criterion, "prepare"):
            stage.criterion.prepare(self.device, self.run.channels_last)  # type: ignore[union-attr]
        loader = self.loader(stage.train_set, stage.batch_size, shuffle=True, workers=stage.workers, indexed=True)
        opt = self.optimizer = self._optimizer(model, stage.config, hooks)
        run = _Run(stage, hooks, loader, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(stage.config, len(loader))),
                   torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16),
                   Path(stage.checkpoint) if stage.checkpoint else None)
        history = self._restore(model, run)
        net = self._ddp(model)
        for epoch in range(len(history), stage.config.epochs):
            history.append(self._epoch(model, net, run, epoch))
            self._report(stage.name, stage.config.epochs, history[-1])
            if run.ckpt is not None and self.dist.is_main:
                save_checkpoint({"format": CHECKPOINT_FORMAT, "stage": stage.name, "epoch": epoch + 1,
                                 "model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": run.sched.state_dict(), "hooks": hooks.state_dict(),
                                 "rng": torch.get_rng_state(), "history": [asdict(h) for h in history]}, run.ckpt)
            self.dist.barrier()
        return history

    def _restore(self, model: nn.Module, run: _Run) -> list[EpochResult]:
        """The history of a resumed stage (its state restored from the checkpoint), else []."""
        ckpt, name = run.ckpt, run.stage.name
        if ckpt is None or not run.stage.resume or not ckpt.exists():
            torch.manual_seed(self.run.seed)
            return []
        state = load_checkpoint(ckpt)
        if state.get("stage") != name:
            raise CheckpointError(f"checkpoint {ckpt} belongs to stage {state.get('stage')!r}, not {name!r}")
        try:
            model.load_state_dict(state["model"])
            run.opt.load_state_dict(state["optimizer"])
            run.sched.load_state_dict(state["scheduler"])
            run.hooks.load_state_dict(state["hooks"])
            torch.set_rng_state(state["rng"])
            history = [EpochResult(**h) for h in state["history"]]
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this run's {name} stage "
                                  f"({one_line(exc, 120)}); start again in another --out") from None
        if len(history) != int(state["epoch"]):
            raise CheckpointError(f"checkpoint {ckpt} is inconsistent (epoch {state['epoch']}, {len(history)} rows)")
        return history

    def _epoch(self, model: nn.Module, net: nn.Module, run: _Run, epoch: int) -> EpochResult:
        stage, hooks, epochs = run.stage, run.hooks, run.stage.config.epochs
        t0 = time.perf_counter()
        extra = dict(hooks.begin_epoch(epoch, epochs))
        part = hooks.epoch_network(model)
        train_model, train_net, step_opt = model, net, run.opt
        if part is not None:  # a smaller network stands in for the model this epoch
            train_model = part.module.to(self.device)
            if self.run.channels_last:
                to_channels_last(train_model)
            step_opt = part_optimizer(run.opt, part)
            train_net = self._ddp(train_model)
        run.loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        train_net.train()
        sums = [0.0, 0.0, 0.0]  # loss * samples, correct, samples
        bar = tqdm(run.loader, total=len(run.loader), desc=f"{stage.name} {epoch + 1}/{epochs}", leave=False,
                   disable=not (self.run.progress and self.dist.is_main), mininterval=1.0, dynamic_ncols=True)
        arch_data = stage.arch_set if stage.arch_set is not None else stage.val_set
        held_out = cycle(self.loader(arch_data, stage.batch_size, shuffle=True, indexed=True)) \
            if hooks.has_arch_step and arch_data is not None else None
        for step, (x, y, idx) in enumerate(bar):
            x, y, idx = self._to_device(x, y, idx)
            if held_out is not None:
                hooks.arch_step(self._to_device(*next(held_out)), (x, y, idx))
            self._step(run, (train_model, train_net, step_opt, part), (x, y, idx), (epoch, step), sums)
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}",
                            **{k: f"{v:.3f}" for k, v in hooks.step_metrics().items()}, refresh=False)
            for cb in self.callbacks:
                cb(stage.name, epoch, step)
        bar.close()
        loss_sum, correct, count = self.dist.sum(sums)
        val_loss = val_acc = None
        if stage.val_set is not None and len(stage.val_set):  # a part computes what the whole model does
            val_loss, val_acc, _ = self.evaluate(train_net, stage.val_set, stage.batch_size, stage.workers)
        if part is not None:
            return_state(run.opt, step_opt, part)
            part.finish()
        extra.update(hooks.end_epoch(epoch, epochs))
        return EpochResult(epoch + 1, run.opt.param_groups[0]["lr"], loss_sum / max(count, 1),
                           correct / max(count, 1), val_loss, val_acc, time.perf_counter() - t0, extra)

    def _step(self, run: _Run, nets: tuple, batch: tuple, where: tuple[int, int], sums: list[float]) -> None:
        """One weight step on ``batch``; adds the loss, correct count and samples to ``sums``."""
        train_model, train_net, step_opt, part = nets
        x, y, idx = batch
        with self.autocast():
            out = first_output(train_net(x))
            loss = run.stage.criterion(x, out, y) if run.stage.criterion is not None else F.cross_entropy(out.float(), y)
            penalty = run.hooks.extra_loss(train_model, out, y, idx)
        total = loss if penalty is None else loss + penalty
        if not torch.isfinite(total.detach()):
            raise DivergedError(self._diverged(run.stage.name, *where, total, run.ckpt))
        step_opt.zero_grad(set_to_none=True)
        run.scaler.scale(total).backward()
        if run.stage.config.grad_clip:
            run.scaler.unscale_(step_opt)
            nn.utils.clip_grad_norm_(train_model.parameters(), run.stage.config.grad_clip)
        run.scaler.step(step_opt)
        run.scaler.update()
        if part is None:
            run.sched.step()
        else:  # ``opt`` itself did not step: the scheduler's order warning does not apply
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                run.sched.step()
            sync_lr(run.opt, step_opt)
        sums[0] += float(loss.detach()) * len(y)
        sums[1] += float((out.argmax(1) == y).sum())
        sums[2] += len(y)

    @staticmethod
    def _diverged(stage: str, epoch: int, step: int, loss: torch.Tensor, ckpt: Path | None) -> str:
        kept = ""
        if ckpt is not None and ckpt.parent.is_dir():
            kept = f"; finished epochs stay checkpointed in {ckpt.parent}"
        return (f"{stage}: the loss is {float(loss)} at epoch {epoch + 1}, step {step + 1}{kept}; lower "
                "this stage's lr or set its grad_clip, then run again")

    def _ddp(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped for DDP when this is a distributed run, else itself."""
        if not self.dist.enabled:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _report(self, stage: str, epochs: int, r: EpochResult) -> None:
        if not self.dist.is_main:
            return
        val = f" val_loss {r.val_loss:.3f} val_acc {100 * r.val_acc:.2f}%" if r.val_acc is not None else ""
        extra = "".join(f" {k} {v:.3g}" for k, v in r.extra.items())
        if self.run.progress:
            tqdm.write(f"{stage} epoch {r.epoch}/{epochs}: loss {r.train_loss:.3f} acc {100 * r.train_acc:.2f}%"
                       f"{val}{extra} ({r.seconds:.0f} s)")
        if self.log_dir is not None:
            append_csv(self.log_dir / f"{stage}.csv", r.row())
            tensorboard(self.log_dir, stage, r)
