"""The digits data set, the registry and load()."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import compactnn.data as cd
from compactnn.data import bundle
from compactnn.errors import DataError


def test_digits_shapes_and_sizes(digits):
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert digits.classes == [str(i) for i in range(10)]
    assert len(digits.train) == 1437 and len(digits.test) == 360
    assert digits.train.x.shape == (1437, 1, 8, 8) and digits.train.x.dtype == torch.float32
    assert digits.test.y.shape == (360,) and digits.test.y.dtype == torch.int64
    x0, y0 = digits.train[0]
    assert x0.shape == (1, 8, 8) and y0.dtype == torch.int64


def test_digits_matches_reference_split_and_normalization(digits):
    raw = load_digits()
    x = raw.data / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, raw.target, test_size=0.2, random_state=0, stratify=raw.target)
    mean, std = x_tr.mean(), x_tr.std()
    np.testing.assert_array_equal(digits.train.y.numpy(), y_tr)
    np.testing.assert_array_equal(digits.test.y.numpy(), y_te)
    np.testing.assert_allclose(digits.train.x.numpy().reshape(-1, 64), (x_tr - mean) / std, atol=1e-5)
    np.testing.assert_allclose(digits.test.x.numpy().reshape(-1, 64), (x_te - mean) / std, atol=1e-5)
    assert abs(float(digits.train.x.mean())) < 1e-5
    assert abs(float(digits.train.x.std()) - 1.0) < 1e-3


def test_digits_split_is_stratified(digits):
    all_counts = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(digits.test.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)
    assert test_counts.sum() + np.bincount(digits.train.y.numpy()).sum() == all_counts.sum()


def test_digits_is_deterministic(digits):
    again = cd.load("digits")
    assert torch.equal(again.train.x, digits.train.x) and torch.equal(again.test.y, digits.test.y)


def test_list_datasets_names_and_descriptions():
    assert cd.list_datasets() == sorted(cd.list_datasets()) and cd.list_datasets("mnist*") == ["mnist"]
    listed = cd.describe_datasets()
    assert {"digits", "fashion-mnist", "mnist", "cifar10"} <= set(listed)
    assert all(isinstance(v, str) and v and "\n" not in v for v in listed.values())
    assert list(listed) == sorted(listed)


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError, match="unknown data set 'nope'; valid data sets are .*digits.*fashion-mnist"):
        cd.load("nope")


def test_name_spelling_is_forgiving(digits):
    assert cd.load("DIGITS").name == "digits"


def test_register_dataset_adds_a_loader(monkeypatch):
    monkeypatch.setattr(bundle, "_LOADERS", dict(bundle._LOADERS))
    monkeypatch.setattr(bundle, "_DESCRIPTIONS", dict(bundle._DESCRIPTIONS))
    seen = {}

    @cd.register_dataset("tiny", "two examples")
    def load_tiny(root=None, download=True):
        seen.update(root=root, download=download)
        ds = cd.ArrayDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))
        return cd.DataBundle("tiny", ds, ds, 2, (1, 2, 2))

    assert cd.describe_datasets()["tiny"] == "two examples"
    assert cd.load("tiny", root="/x", download=False).num_classes == 2
    assert seen == {"root": "/x", "download": False}
    with pytest.raises(TypeError, match="registered twice"):
        cd.register_dataset("tiny", "again")(lambda root=None, download=True: None)
