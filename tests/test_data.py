import pickle

import numpy as np
import pytest
import torch

from compressor.data import DataError, ImageSpec, embedded_mnist, load_dataset, split_dataset


def test_embedded_mnist_is_balanced_real_data_at_the_requested_size():
    train = embedded_mnist("train", ImageSpec(size=40))
    test = embedded_mnist("test")
    assert len(train) == 10000 and len(test) == 2000 and train.num_classes == 10
    assert np.bincount(train.labels).tolist() == [1000] * 10
    x, y = train[0]
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32 and 0 <= y < 10
    assert abs(float(torch.stack([train[i][0] for i in range(200)]).mean())) < 0.3  # normalised


def test_stratified_split_keeps_class_balance():
    a, b = split_dataset(embedded_mnist("train"), 0.5, seed=111)
    labels = embedded_mnist("train").labels
    assert len(a) == len(b) == 5000 and not set(a.indices) & set(b.indices)
    assert np.bincount(labels[b.indices]).tolist() == [500] * 10


def test_cifar_folder_is_read_without_unpickling_code(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    ds = load_dataset(tmp_path, "train", ImageSpec(size=32))
    assert len(ds) == 20 and ds[0][0].shape == (3, 32, 32)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": print}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset(tmp_path, "test", ImageSpec())


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope", "train", ImageSpec())


def test_image_folder_reads_every_image_mode_as_rgb(tmp_path):
    """Grey, 16-bit grey, palette, alpha and CMYK files all reach the model as 3 normalised channels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    files = {"L.png": Image.fromarray(rgb[..., 0]), "RGBA.png": Image.fromarray(rgb).convert("RGBA"),
             "P.png": Image.fromarray(rgb).convert("P"), "CMYK.jpg": Image.fromarray(rgb).convert("CMYK"),
             "I16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)}
    for i, (name, img) in enumerate(files.items()):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        img.save(tmp_path / f"c{i % 2}" / name)
    ds = load_dataset(tmp_path, "test", ImageSpec(size=16, crop_pct=1.0))
    assert len(ds) == 5 and ds.num_classes == 2
    xs = {p.rsplit("/", 1)[-1]: ds[i][0] for i, (p, _) in enumerate(ds.samples)}
    assert all(x.shape == (3, 16, 16) and torch.isfinite(x).all() for x in xs.values())
    # 16-bit grey is scaled into 8 bits, not clipped to white: it matches the 8-bit grey image
    assert torch.allclose(xs["I16.png"], xs["L.png"], atol=1e-5)


def test_image_folder_transform_follows_the_spec(tmp_path):
    from tests.images import write_image_folder

    root = write_image_folder(tmp_path, classes=2, per_class=2, size=50)
    ds = load_dataset(root, "test", ImageSpec(size=20, crop_pct=0.8, interpolation="bicubic"))
    text = repr(ds.transform)
    assert "Resize(size=25, interpolation=bicubic" in text and "CenterCrop(size=(20, 20))" in text
    assert ds[0][0].shape == (3, 20, 20) and len(ds) == 4  # the test split is val/: 2 images per class
