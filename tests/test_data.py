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
