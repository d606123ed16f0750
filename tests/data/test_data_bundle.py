"""ArrayDataset.subset and DataBundle.split_train."""

import numpy as np
import pytest
import torch

from compactnn.data import ArrayDataset, DataBundle
from compactnn.errors import DataError


def make_set(counts=(50, 30, 20)):
    y = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    x = torch.arange(len(y), dtype=torch.float32).reshape(-1, 1, 1, 1)  # x encodes the row number
    return ArrayDataset(x, y)


def rows(ds):
    return ds.x.flatten().long().numpy()


def test_dataset_basics():
    ds = make_set()
    assert len(ds) == 100
    x, y = ds[3]
    assert x.shape == (1, 1, 1) and int(x) == 3 and y == ds.y[3]
    with pytest.raises(DataError, match="100 inputs but 99 labels"):
        ArrayDataset(ds.x, ds.y[:99])


def test_subset_keeps_class_shares_and_rows():
    ds = make_set()
    sub = ds.subset(10, seed=0)
    assert len(sub) == 10
    assert np.bincount(sub.y.numpy(), minlength=3).tolist() == [5, 3, 2]
    picked = rows(sub)
    assert len(set(picked)) == 10
    assert torch.equal(sub.y, ds.y[torch.as_tensor(picked)])  # labels travel with their inputs


def test_subset_rounding_stays_within_one_per_class():
    ds = make_set((7, 7, 7))
    sub = ds.subset(8, seed=3)
    counts = np.bincount(sub.y.numpy(), minlength=3)
    assert counts.sum() == 8 and counts.max() - counts.min() <= 1


def test_subset_is_deterministic_per_seed():
    ds = make_set()
    assert np.array_equal(rows(ds.subset(20, seed=7)), rows(ds.subset(20, seed=7)))
    assert not np.array_equal(np.sort(rows(ds.subset(20, seed=7))), np.sort(rows(ds.subset(20, seed=8))))


def test_subset_bounds():
    ds = make_set()
    assert ds.subset(100) is ds and ds.subset(1000) is ds
    with pytest.raises(DataError, match="at least 1"):
        ds.subset(0)


def test_split_train_is_a_stratified_partition():
    ds = make_set()
    bundle = DataBundle("t", ds, ds, 3, (1, 1, 1))
    train, held = bundle.split_train(0.2, seed=0)
    assert len(train) == 80 and len(held) == 20
    assert np.bincount(held.y.numpy(), minlength=3).tolist() == [10, 6, 4]
    a, b = rows(train), rows(held)
    assert set(a).isdisjoint(b) and set(a) | set(b) == set(range(100))
    assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)  # original order kept
    again = bundle.split_train(0.2, seed=0)[1]
    assert np.array_equal(rows(again), b)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_train_rejects_bad_fraction(fraction):
    bundle = DataBundle("t", make_set(), make_set(), 3, (1, 1, 1))
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        bundle.split_train(fraction)


def test_split_train_keeps_one_row_each_side():
    tiny = ArrayDataset(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]))
    train, held = DataBundle("t", tiny, tiny, 2, (1, 1, 1)).split_train(0.01)
    assert len(train) == 1 and len(held) == 1
