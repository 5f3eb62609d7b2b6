"""Datasets: the embedded MNIST subset (the default, no network), ImageFolder trees and CIFAR
folders in their standard python format; stratified train/val splits.

The embedded set is a stratified subset of MNIST (LeCun, Cortes & Burges; CC BY-SA 3.0):
10,000 training images (1,000 per class) and 2,000 test images (200 per class), drawn with
numpy seed 20261123 from the full set whose sha256 is
39b9b1ffaa0ba4d8995a616551f0966941fe02a3fe79ba4a9db7373db16d53ad.  It is served as 3-channel
images at the size the model asks for, so any ImageNet-style model runs on it unchanged.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .errors import one_line

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A data path or format problem; the message says which path and what was expected."""


@dataclass(frozen=True)
class ImageSpec:
    """How images reach the model: square ``size`` pixels, 3 channels, per-channel mean/std.
    Image files are resized to ``size / crop_pct`` with ``interpolation`` and centre-cropped
    (evaluation) or random-resized-cropped and flipped (training); arrays are only resized."""

    size: int = 32
    mean: tuple[float, float, float] = (MNIST_MEAN,) * 3
    std: tuple[float, float, float] = (MNIST_STD,) * 3
    crop_pct: float = 0.875
    interpolation: str = "bilinear"

    def folder_transform(self, augment: bool):
        """The torchvision transform of image files under this spec."""
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        mode = InterpolationMode(self.interpolation)
        steps = [transforms.RandomResizedCrop(self.size, interpolation=mode), transforms.RandomHorizontalFlip()] \
            if augment else [transforms.Resize(int(round(self.size / self.crop_pct)), interpolation=mode),
                             transforms.CenterCrop(self.size)]
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])


class ArrayImages(Dataset):
    """Images held as one uint8 array (N, H, W) or (N, H, W, C) with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: ImageSpec, augment: bool = False) -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.astype(np.int64)
        self.spec, self.augment = spec, augment
        self.num_classes = int(self.labels.max()) + 1 if len(labels) else 0
        self._mean = torch.tensor(spec.mean).view(3, 1, 1)
        self._std = torch.tensor(spec.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(np.asarray(self.images[i])).float().div_(255)
        img = img.unsqueeze(0).expand(3, -1, -1) if img.dim() == 2 else img.permute(2, 0, 1)
        if self.augment:  # a random shift of up to 1/8 of the side, as in CIFAR recipes
            pad = max(1, img.shape[-1] // 8)
            img = F.pad(img, (pad, pad, pad, pad))
            dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            img = img[:, dy:dy + img.shape[-2] - 2 * pad, dx:dx + img.shape[-1] - 2 * pad]
        if img.shape[-1] != self.spec.size or img.shape[-2] != self.spec.size:
            img = F.interpolate(img[None], size=(self.spec.size, self.spec.size), mode="bilinear",
                                align_corners=False)[0]
        return (img - self._mean) / self._std, int(self.labels[i])


def embedded_mnist(split: str, spec: ImageSpec = ImageSpec(), augment: bool = False) -> ArrayImages:
    """The MNIST subset shipped inside the package (``split`` is "train" or "test")."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    blob = resources.files("compressor.datasets").joinpath("mnist_subset.npz").read_bytes()
    with np.load(io.BytesIO(blob)) as z:
        return ArrayImages(z[f"{split}_images"], z[f"{split}_labels"], spec, augment)


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python format is a pickle of dicts of arrays: allow exactly that, no code."""

    def find_class(self, module: str, name: str):
        if module.startswith("numpy") and name in ("ndarray", "dtype", "_reconstruct", "scalar"):
            return super().find_class(module, name)
        if module == "_codecs" and name == "encode":
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: not a CIFAR batch file")


def cifar_folder(path: str | os.PathLike, split: str, spec: ImageSpec, augment: bool = False) -> ArrayImages:
    """CIFAR-10 (``data_batch_1..5``/``test_batch``) or CIFAR-100 (``train``/``test``) folder."""
    root = Path(path)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not (root / names[0]).exists():
        names = ["train"] if split == "train" else ["test"]
    images, labels = [], []
    for name in names:
        file = root / name
        if not file.exists():
            raise DataError(f"{file} not found: expected a CIFAR-10 or CIFAR-100 python-format folder")
        with open(file, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch.get(b"labels", batch.get(b"fine_labels"))))
    return ArrayImages(np.concatenate(images), np.concatenate(labels), spec, augment)


def _read_rgb(path: str):
    """An image file as RGB (grey, palette, alpha, CMYK and 16-bit images converted); a file that
    cannot be decoded is a :class:`DataError` naming it."""
    from PIL import Image, UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    try:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: scale into 8 bits
                arr = np.asarray(img, dtype=np.float64)
                arr = arr * (255.0 / 65535.0) if img.mode.startswith("I;16") or arr.max() > 255 else arr
                img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            return img.convert("RGB")
    except (UnidentifiedImageError, DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {one_line(exc, 160)}") from None


def image_folder(path: str | os.PathLike, spec: ImageSpec, augment: bool = False) -> Dataset:
    """A torchvision ImageFolder tree (one sub-folder per class).  The first image of every class
    is decoded now, so a tree with an empty or unreadable class fails before any training."""
    from torchvision import datasets

    root = Path(path)
    try:
        ds = datasets.ImageFolder(str(root), transform=spec.folder_transform(augment), loader=_read_rgb)
    except FileNotFoundError as exc:  # no class folders, or a class folder without image files
        raise DataError(f"image folder {root}: {str(exc).strip().splitlines()[0]}") from None
    first: dict[int, str] = {}
    for file, label in ds.samples:
        first.setdefault(label, file)
    for file in first.values():
        _read_rgb(file)
    ds.num_classes = len(ds.classes)  # type: ignore[attr-defined]
    return ds


def describe_transform(ds: Dataset) -> str:
    """The transform images of ``ds`` go through, in words (for the report)."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    if isinstance(ds, ArrayImages):
        s = ds.spec
        return (f"uint8 arrays{' + random shift of 1/8 side' if ds.augment else ''}, bilinear resize to "
                f"{s.size}x{s.size}, normalise mean {tuple(round(m, 4) for m in s.mean)} "
                f"std {tuple(round(v, 4) for v in s.std)}")
    tf = getattr(ds, "transform", None)
    return " ".join(repr(tf).split()) if tf is not None else type(ds).__name__


def load_dataset(path: str | os.PathLike | None, split: str, spec: ImageSpec, augment: bool = False) -> Dataset:
    """The embedded MNIST subset (``path`` None), a CIFAR folder, or an ImageFolder tree
    (``path/train`` and ``path/val`` when present, else ``path`` itself)."""
    if path is None:
        return embedded_mnist(split, spec, augment)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data path {root} does not exist or is not a directory")
    if (root / "data_batch_1").exists() or (root / "train").is_file():
        return cifar_folder(root, split, spec, augment)
    sub = root / ("train" if split == "train" else "val")
    return image_folder(sub if sub.is_dir() else root, spec, augment)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second) with ``fraction`` of every class in the second part."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * fraction))
        second.append(idx[:k])
        first.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def dataset_labels(ds: Dataset) -> np.ndarray:
    """The integer label of every sample, read from ``labels``/``samples``/``tensors`` (through
    nested ``Subset``s) without loading images; other datasets are iterated once."""
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    if getattr(ds, "labels", None) is not None:
        return np.asarray(ds.labels)
    if getattr(ds, "samples", None) is not None:
        return np.asarray([y for _, y in ds.samples])
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) > 1:
        return ds.tensors[1].cpu().numpy()
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def split_dataset(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """Stratified (train, held-out) split: ``fraction`` of every class goes to the second part."""
    a, b = stratified_split(dataset_labels(ds), fraction, seed)
    return Subset(ds, a.tolist()), Subset(ds, b.tolist())


def count_classes(train: Dataset) -> int:
    """How many classes a training set is for (its ``num_classes``), refusing fewer than two, or
    training images that show fewer than two of them: a classifier needs two or more."""
    base = train
    while isinstance(base, Subset):
        base = base.dataset
    n = getattr(base, "num_classes", None)
    where = f"the training data in {base.root}" if getattr(base, "root", None) else "the training data"
    if n is None:
        raise DataError(f"{where} does not say how many classes it has (give the dataset a num_classes attribute)")
    seen = int(n)
    if seen >= 2 and (getattr(base, "labels", None) is not None or getattr(base, "samples", None) is not None):
        seen = len(np.unique(dataset_labels(train)))
    if min(int(n), seen) < 2:
        raise DataError(f"{where} has images of {min(int(n), seen)} class(es): a classifier needs at least 2")
    return int(n)
