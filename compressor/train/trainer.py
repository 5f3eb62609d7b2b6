"""``Trainer``: the one training loop of the project (device, autocast, channels_last, DDP,
gradient clipping, LR schedules, per-epoch atomic checkpoints with resume, progress, CSV logs).

A stage resumed from its last checkpoint continues bit-for-bit: data order comes from
``(seed, epoch)``, and model, optimizer, scheduler, hook state and the torch RNG are restored.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..errors import one_line
from ..gates.outputs import first_output
from ..recipe import RunConfig, TrainConfig
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import DistEnv, resolve_device
from .hooks import TrainHooks
from .part import part_optimizer, return_state, sync_lr
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
class EpochResult:
    """What one epoch measured (losses are means over samples; accuracies in [0, 1])."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float | int | None]:
        d = asdict(self)
        d.pop("extra")
        return {**d, **self.extra}


class IndexedDataset(Dataset):
    """``(x, y, i)``: a dataset's samples with their index (per-sample state such as voting
    teachers is keyed by it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, i


class EpochSampler(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)``, sharded over the processes of a DDP run."""

    def __init__(self, n: int, seed: int, dist: DistEnv, shuffle: bool = True) -> None:
        self.n, self.seed, self.dist, self.shuffle, self.epoch = n, seed, dist, shuffle, 0
        self.per_rank = math.ceil(n / dist.world_size) if shuffle else len(range(dist.rank, n, dist.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.dist.rank, self.n, self.dist.world_size))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        order += order[: self.per_rank * self.dist.world_size - self.n]  # equal shards
        return iter(order[self.dist.rank::self.dist.world_size])

    def __len__(self) -> int:
        return self.per_rank


class Trainer:
    """Trains a module on a dataset for one :class:`~compressor.recipe.TrainConfig` stage.

    During :meth:`fit`, ``trainer.optimizer`` is the weight optimizer (a second-order architecture
    step reads its learning rates and momentum buffers).

    Example:
        >>> trainer = Trainer(RunConfig(seed=0, progress=False))
        >>> history = trainer.fit(model, train_set, TrainConfig(epochs=2), stage="base", batch_size=64)
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
    def fit(self, model: nn.Module, train_set: Dataset, cfg: TrainConfig, *, stage: str, batch_size: int,
            val_set: Dataset | None = None, hooks: TrainHooks | None = None,
            checkpoint: str | os.PathLike | None = None, resume: bool = False,
            workers: int | None = None, criterion: Criterion | None = None,
            arch_set: Dataset | None = None) -> list[EpochResult]:
        """Train ``model`` in place for ``cfg.epochs`` epochs; return the per-epoch history.

        ``criterion(inputs, outputs, targets)`` replaces cross-entropy as the task loss (e.g. a
        :class:`~compressor.train.distill.Distillation`).  ``arch_set`` feeds the hooks'
        ``arch_step`` (default: ``val_set``), which ``val_set`` is evaluated on after every epoch.
        With ``checkpoint``, the full state is written there atomically after every epoch, and
        ``resume`` continues from it when it exists (a finished stage returns at once).
        """
        hooks = hooks or TrainHooks()
        model.to(self.device)
        if self.run.channels_last:
            to_channels_last(model)
        if hasattr(criterion, "prepare"):
            criterion.prepare(self.device, self.run.channels_last)  # type: ignore[union-attr]
        loader = self.loader(train_set, batch_size, shuffle=True, workers=workers, indexed=True)
        steps = len(loader)
        opt = self.optimizer = self._optimizer(model, cfg, hooks)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, steps))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        history: list[EpochResult] = []
        start = 0
        ckpt = Path(checkpoint) if checkpoint else None
        if ckpt is not None and resume and ckpt.exists():
            state = load_checkpoint(ckpt)
            if state.get("stage") != stage:
                raise CheckpointError(f"checkpoint {ckpt} belongs to stage {state.get('stage')!r}, not {stage!r}")
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                hooks.load_state_dict(state["hooks"])
                torch.set_rng_state(state["rng"])
                history = [EpochResult(**h) for h in state["history"]]
                start = int(state["epoch"])
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise CheckpointError(f"checkpoint {ckpt} does not fit this run's {stage} stage "
                                      f"({one_line(exc, 120)}); start again in another --out") from None
        else:
            torch.manual_seed(self.run.seed)
        net = self._ddp(model)
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            extra = dict(hooks.begin_epoch(epoch, cfg.epochs))
            part = hooks.epoch_network(model)
            train_model, train_net, step_opt = model, net, opt
            if part is not None:  # a smaller network stands in for the model this epoch
                train_model = part.module.to(self.device)
                if self.run.channels_last:
                    to_channels_last(train_model)
                step_opt = part_optimizer(opt, part)
                train_net = self._ddp(train_model)
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            train_net.train()
            loss_sum = correct = count = 0.0
            bar = tqdm(loader, total=steps, desc=f"{stage} {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not (self.run.progress and self.dist.is_main), mininterval=1.0, dynamic_ncols=True)
            arch_data = arch_set if arch_set is not None else val_set
            held_out = _cycle(self.loader(arch_data, batch_size, shuffle=True, indexed=True)) \
                if hooks.has_arch_step and arch_data is not None else None
            for step, (x, y, idx) in enumerate(bar):
                x, y, idx = self._to_device(x, y, idx)
                if held_out is not None:
                    hooks.arch_step(self._to_device(*next(held_out)), (x, y, idx))
                with self.autocast():
                    out = first_output(train_net(x))
                    loss = criterion(x, out, y) if criterion is not None else F.cross_entropy(out.float(), y)
                    penalty = hooks.extra_loss(train_model, out, y, idx)
                total = loss if penalty is None else loss + penalty
                if not torch.isfinite(total.detach()):
                    raise DivergedError(self._diverged(stage, epoch, step, total, ckpt))
                step_opt.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if cfg.grad_clip:
                    scaler.unscale_(step_opt)
                    nn.utils.clip_grad_norm_(train_model.parameters(), cfg.grad_clip)
                scaler.step(step_opt)
                scaler.update()
                if part is None:
                    sched.step()
                else:  # ``opt`` itself did not step: the scheduler's order warning does not apply
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                        sched.step()
                    sync_lr(opt, step_opt)
                loss_sum += float(loss.detach()) * len(y)
                correct += float((out.argmax(1) == y).sum())
                count += len(y)
                bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}",
                                **{k: f"{v:.3f}" for k, v in hooks.step_metrics().items()}, refresh=False)
                for cb in self.callbacks:
                    cb(stage, epoch, step)
            bar.close()
            loss_sum, correct, count = self.dist.sum([loss_sum, correct, count])
            val_loss = val_acc = None
            if val_set is not None and len(val_set):  # a part computes what the whole model does, for less
                val_loss, val_acc, _ = self.evaluate(train_net, val_set, batch_size, workers)
            if part is not None:
                return_state(opt, step_opt, part)
                part.finish()
            extra.update(hooks.end_epoch(epoch, cfg.epochs))
            result = EpochResult(epoch + 1, opt.param_groups[0]["lr"], loss_sum / max(count, 1),
                                 correct / max(count, 1), val_loss, val_acc, time.perf_counter() - t0, extra)
            history.append(result)
            self._report(stage, cfg.epochs, result)
            if ckpt is not None and self.dist.is_main:
                save_checkpoint({"format": CHECKPOINT_FORMAT, "stage": stage, "epoch": epoch + 1,
                                 "model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "hooks": hooks.state_dict(),
                                 "rng": torch.get_rng_state(), "history": [asdict(h) for h in history]}, ckpt)
            self.dist.barrier()
        return history

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
            self._append_csv(self.log_dir / f"{stage}.csv", r.row())
            _tensorboard(self.log_dir, stage, r)

    @staticmethod
    def _append_csv(path: Path, row: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.exists():
            rows = [r for r in csv.DictReader(io.StringIO(path.read_text())) if int(r["epoch"]) < int(row["epoch"])]
        rows.append({k: ("" if v is None else v) for k, v in row.items()})
        keys = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, path)


def _cycle(loader: DataLoader):
    while True:
        yield from loader


_WRITERS: dict[str, object] = {}


def _tensorboard(log_dir: Path, stage: str, r: EpochResult) -> None:
    """Scalars to TensorBoard when it is installed (an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard not installed
        return
    writer = _WRITERS.setdefault(str(log_dir), SummaryWriter(str(log_dir / "tensorboard")))
    for k, v in r.row().items():
        if k != "epoch" and isinstance(v, (int, float)):
            writer.add_scalar(f"{stage}/{k}", v, r.epoch)  # type: ignore[attr-defined]
    writer.flush()  # type: ignore[attr-defined]
