"""GlaS object metrics against hand-worked examples."""

import math

import numpy as np
import pytest

from compactnn.errors import ConfigError
from compactnn.segment.metrics import object_dice, object_f1, object_hausdorff


def square(shape, top, left, size, label=1, into=None):
    out = np.zeros(shape, dtype=np.int64) if into is None else into
    out[top:top + size, left:left + size] = label
    return out


def test_identical_maps_are_perfect():
    gt = square((10, 10), 1, 1, 3, 1)
    square((10, 10), 6, 6, 3, 2, into=gt)
    assert object_f1(gt, gt) == 1.0
    assert object_dice(gt, gt) == 1.0
    assert object_hausdorff(gt, gt) == 0.0


def test_f1_counts_half_coverage_as_a_hit():
    gt = square((10, 10), 0, 0, 4, 1)                  # 16 pixels
    half = np.zeros_like(gt)
    half[0:2, 0:4] = 5                                 # covers 8 of 16 = exactly half: a true positive (GlaS)
    assert object_f1(half, gt) == 1.0
    assert object_f1(half, gt, match="iou") == 2 * 0 / (0 + 1 + 1)  # IoU 0.5 is not > 0.5: FP and FN
    less = np.zeros_like(gt)
    less[0:1, 0:4] = 5                                 # 4 of 16: a false positive and a false negative
    assert object_f1(less, gt) == 0.0


def test_f1_with_a_split_object_and_a_spurious_one():
    gt = square((12, 12), 0, 0, 4, 1)
    square((12, 12), 6, 6, 4, 2, into=gt)
    pred = np.zeros_like(gt)
    pred[0:4, 0:3] = 1      # 12/16 of gt 1: TP
    pred[0:4, 3:4] = 2      # the rest of gt 1: 4/16, FP
    pred[10:12, 0:2] = 3    # overlaps nothing: FP
    # gt 2 is missed: FN. TP 1, FP 2, FN 1 -> 2 / (2 + 2 + 1)
    assert object_f1(pred, gt) == pytest.approx(2 / 5)


def test_object_dice_by_hand():
    gt = square((10, 10), 0, 0, 4, 1)                  # |G| = 16
    pred = square((10, 10), 0, 0, 2, 7)                # |S| = 4, inside G
    # G side: γ = 1, Dice(G, S) = 2*4/(16+4) = 0.4; S side: σ = 1, the same pair: 0.4 -> mean 0.4
    assert object_dice(pred, gt) == pytest.approx(0.4)
    square((10, 10), 8, 8, 2, 9, into=pred)            # a spurious object of 4 pixels, Dice 0
    # S side: σ = 4/8 each: 0.5 * 0.4 + 0.5 * 0 = 0.2; G side 0.4 -> (0.4 + 0.2) / 2
    assert object_dice(pred, gt) == pytest.approx(0.3)


def test_object_hausdorff_by_hand():
    gt = square((10, 10), 0, 0, 2, 1)                  # pixels (0..1, 0..1)
    pred = square((10, 10), 0, 3, 2, 1)                # shifted 3 columns: no overlap
    # each side's nearest object is the other one; H = 3 (every pixel moves 3 columns)
    assert object_hausdorff(pred, gt) == pytest.approx(3.0)
    pred2 = square((10, 10), 0, 1, 2, 1)               # shifted 1 column, overlapping: H = 1
    assert object_hausdorff(pred2, gt) == pytest.approx(1.0)
    far = square((10, 10), 7, 7, 2, 4, into=pred2.copy())
    # S side: two objects of 4 pixels, σ = 1/2 each; the far one (no overlap) pairs with gt: H = sqrt(7^2 + 7^2)
    expected = (1.0 + 0.5 * 1.0 + 0.5 * math.hypot(7, 7)) / 2
    assert object_hausdorff(far, gt) == pytest.approx(expected)


def test_empty_maps():
    empty = np.zeros((5, 5), dtype=np.int64)
    one = square((5, 5), 1, 1, 2, 1)
    assert object_f1(empty, empty) == 1.0 and object_f1(empty, one) == 0.0
    assert object_dice(empty, one) == 0.0
    assert object_hausdorff(empty, one) == float("inf") and object_hausdorff(empty, empty) == 0.0


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match="one shape"):
        object_f1(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ConfigError, match="integer instance-label map"):
        object_dice(np.zeros((3, 3)), np.zeros((3, 3), int))
    with pytest.raises(ConfigError, match="negative labels"):
        object_hausdorff(-np.ones((3, 3), int), np.zeros((3, 3), int))
