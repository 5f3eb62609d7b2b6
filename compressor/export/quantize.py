"""INT8 export: onnxruntime's static QDQ quantization of ``model.onnx``, checked against it.

    quant_pre_process(model.onnx)             shape inference and ORT's graph optimisation first
                                              (Conv+BN folded before scales are measured: ORT's advice)
    quantize_static(QDQ, uint8 activations,   U8S8, x86's fast int8 path; weights in 7 bits on a CPU
                    int8 weights)             without VNNI, where U8S8 can saturate (ORT's reduce_range)
        calibrated on training images by minmax, entropy or percentile
    per_channel auto: per-tensor and per-channel weights both, the better on held-out images kept

The result is compared with the fp32 file on the test images: accuracy of both, and the share of
images on which their top-1 predictions agree.  onnxruntime's quantizer is used rather than our own
code: it writes what its CPU kernels fuse (QLinearConv, QGemm), which is where the speed comes from.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

CALIBRATIONS = ("minmax", "entropy", "percentile")


def cpu_int8_support() -> str:
    """The CPU's int8 dot-product instructions as Linux reports them: ``"VNNI (avx512_vnni)"``,
    ``"no VNNI"``, or ``"unknown"`` where /proc/cpuinfo is not available."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"VNNI ({', '.join(found)})" if found else "no VNNI"


class _Images:
    """onnxruntime's calibration reader over numpy batches (its ``get_next`` protocol)."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.name, self.batches = name, iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.name: batch}


def quantize_int8(fp32: str | os.PathLike, out: str | os.PathLike, calibration: list[np.ndarray], *,
                  method: str = "minmax", per_channel: bool = False) -> Path:
    """Write ``out``: ``fp32`` quantized to int8 (QDQ) with activation ranges from ``calibration``
    (float32 batches of the model's input) by ``method`` (minmax, entropy or percentile)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {method!r}")
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _Images(name, calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        reduce_range=cpu_int8_support() == "no VNNI", calibrate_method=calib)
    _drop_unused_domains(Path(out))
    return Path(out)


def _drop_unused_domains(path: Path) -> None:
    """Keep only the operator domains the graph uses: ORT's pre-processing declares every domain it
    knows, and a declared custom domain makes the file look as if it needed a native library."""
    import onnx

    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(path))


def predictions(path: str | os.PathLike, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Top-1 class of every image in ``batches`` by the ONNX file at ``path`` (onnxruntime CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: b})[0].reshape(len(b), -1).argmax(1) for b in batches]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def agreement(fp32: str | os.PathLike, int8: str | os.PathLike, images: list[np.ndarray],
              labels: np.ndarray) -> dict[str, float]:
    """Test accuracy of both files and the share of images whose top-1 predictions agree."""
    a, b = predictions(fp32, images), predictions(int8, images)
    return {"fp32_accuracy": float((a == labels).mean()), "int8_accuracy": float((b == labels).mean()),
            "agreement": float((a == b).mean()), "images": int(len(labels))}


def best_per_channel(fp32: str | os.PathLike, out: str | os.PathLike, calibration: list[np.ndarray],
                     held_out: tuple[list[np.ndarray], np.ndarray], *, method: str) -> tuple[bool, dict[str, float]]:
    """``per_channel: auto``: quantize per-tensor and per-channel, keep in ``out`` the one with the
    better held-out accuracy (per-tensor on a tie); returns (per_channel, accuracy of each)."""
    images, labels = held_out
    scores: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for per_channel in (False, True):
            path = quantize_int8(fp32, Path(tmp) / f"{per_channel}.onnx", calibration, method=method,
                                 per_channel=per_channel)
            scores["per_channel" if per_channel else "per_tensor"] = float((predictions(path, images) == labels).mean())
        chosen = scores["per_channel"] > scores["per_tensor"]
        shutil.move(Path(tmp) / f"{chosen}.onnx", out)
    return chosen, scores


def batched(pairs: Iterator[tuple[np.ndarray, np.ndarray]], limit: int | None = None
            ) -> tuple[list[np.ndarray], np.ndarray]:
    """(float32 image batches, their labels) from ``(x, y)`` numpy batches, at most ``limit`` images."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    count = 0
    for x, y in pairs:
        if limit is not None and count >= limit:
            break
        take = len(x) if limit is None else min(len(x), limit - count)
        images.append(np.ascontiguousarray(x[:take], dtype=np.float32))
        labels.append(np.asarray(y[:take]))
        count += take
    return images, (np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64))


def _numpy_batches(dataset, batch_size: int, limit: int | None = None, seed: int = 0):
    """``(x, y)`` numpy batches of a torch dataset; ``limit`` images drawn at random (seeded)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    if limit is not None and limit < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = Subset(dataset, order[:limit].tolist())
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield x.float().numpy(), y.numpy()


def export_int8(fp32: Path, out: Path, sets: tuple, config, *, batch_size: int = 64, seed: int = 0) -> dict:
    """``model.int8.onnx`` beside ``fp32`` as ``config`` (the recipe's export section) asks, from the
    run's (train, held-out, test) ``sets``; returns the facts the report gives."""
    train, val, test = sets
    calibration, _ = batched(_numpy_batches(train, batch_size, config.calibration_images, seed))
    facts: dict = {"file": out.name, "calibration": config.calibration, "calibration_images":
                   int(sum(len(b) for b in calibration)), "cpu": cpu_int8_support()}
    if config.per_channel == "auto":
        held_out = batched(_numpy_batches(val if val is not None and len(val) else train, batch_size, 512, seed))
        facts["per_channel"], facts["held_out_accuracy"] = best_per_channel(fp32, out, calibration, held_out,
                                                                            method=config.calibration)
    else:
        quantize_int8(fp32, out, calibration, method=config.calibration, per_channel=config.per_channel)
        facts["per_channel"] = config.per_channel
    facts["test"] = agreement(fp32, out, *batched(_numpy_batches(test, batch_size)))
    return facts
