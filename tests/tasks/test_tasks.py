"""Metrics against hand-computed examples; losses against closed forms; a tiny training run lowers the loss."""

import math

import numpy as np
import pytest
import torch

import compactnn as cn
from compactnn.errors import DataError
from compactnn.tasks import TaskWeights, evaluate_dense, fit_dense, multitask_loss
from compactnn.tasks.losses import ce_loss, depth_loss, downscale_targets, normals_loss
from compactnn.tasks.metrics import depth_metrics, segmentation_metrics


def test_depth_metrics_hand_computed():
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # the 0 is a hole: ignored
    pred = torch.tensor([[1.0, 2.5], [2.0, 7.0]])
    m = depth_metrics(pred, gt)
    # errors on the 3 valid pixels: 0, 0.5, -2
    assert m["pixels"] == 3
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 0.25 + 4) / 3))
    assert m["rel"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert m["log10"] == pytest.approx((0 + math.log10(1.25) + math.log10(2)) / 3)
    # ratios 1, 1.25, 2: delta1 counts < 1.25 strictly (1 of 3), delta2 (< 1.5625) 2 of 3, delta3 (< 1.953) 2 of 3
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))
    assert depth_metrics(gt + (gt == 0), gt + (gt == 0))["rmse"] == 0.0


def test_depth_metrics_errors_and_clamp():
    with pytest.raises(DataError, match="shape"):
        depth_metrics(torch.ones(2, 2), torch.ones(2, 3))
    with pytest.raises(DataError, match="no valid"):
        depth_metrics(torch.ones(2), torch.zeros(2))
    m = depth_metrics(torch.tensor([-1.0]), torch.tensor([1.0]))  # clamped to 1e-3 for the log and ratio
    assert m["log10"] == pytest.approx(3.0) and m["delta3"] == 0.0 and m["rmse"] == pytest.approx(2.0)


def test_segmentation_metrics_hand_computed():
    gt = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    m = segmentation_metrics(pred, gt, 3)
    # valid pixels: 5 (255 ignored); correct: (0,0) (0,2) (1,0) -> 3
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    # class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: tp 0, gt 1, pred 0 -> 0
    assert m["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m["miou"] == pytest.approx(1 / 3)
    # logits give the same result as their argmax; a class absent from both is skipped
    logits = torch.nn.functional.one_hot(pred.clamp(max=2), 4).permute(2, 0, 1)[None].float()
    m4 = segmentation_metrics(logits, gt[None], 4)
    assert m4["iou"][3] is None and m4["miou"] == pytest.approx(1 / 3)
    with pytest.raises(DataError):
        segmentation_metrics(pred, gt[:, :2], 3)
    with pytest.raises(DataError, match="no pixel"):
        segmentation_metrics(pred, torch.full_like(gt, 255), 3)


def test_losses_closed_forms():
    gt = torch.tensor([[[[1.0, 2.0, 0.0]]]])
    pred = torch.tensor([[[[1.5, 0.0, 9.0]]]])
    assert depth_loss(pred, gt, "l2").item() == pytest.approx((0.25 + 4) / 2)
    # berHu: c = 0.2 * 2 = 0.4; |0.5| > c -> (0.25 + 0.16) / 0.8; |2| > c -> (4 + 0.16) / 0.8
    assert depth_loss(pred, gt, "berhu").item() == pytest.approx(((0.25 + 0.16) / 0.8 + (4 + 0.16) / 0.8) / 2)
    n = torch.zeros(1, 3, 1, 2)
    n[0, 2, 0, 0] = 1.0  # second pixel has no normal: ignored
    p = torch.zeros(1, 3, 1, 2)
    p[0, 0, 0, 0] = 2.0  # orthogonal to the truth
    assert normals_loss(p, n, "cosine").item() == pytest.approx(1.0)
    assert normals_loss(p, n, "l2").item() == pytest.approx(5.0)
    logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # p(class 1) = 3/4
    assert ce_loss(logits, torch.tensor([[[1]]])).item() == pytest.approx(-math.log(0.75))
    assert ce_loss(logits, torch.tensor([[[255]]])).item() == 0.0


def test_downscale_targets():
    depth = torch.tensor([[1.0, 3.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]).repeat(2, 1)[None, None]
    sem = torch.arange(16).reshape(1, 4, 4)
    contours = torch.zeros(1, 4, 4, dtype=torch.long)
    contours[0, 3, 3] = 1
    normals = torch.zeros(1, 3, 4, 4)
    normals[:, 2] = 1.0
    normals[:, 0, :2, :2] = 1.0
    small = downscale_targets({"depth": depth, "normals": normals, "semantics": sem, "contours": contours}, 2)
    assert small["depth"][0, 0].tolist() == [[2.0, 0.0], [2.0, 0.0]]  # mean of the valid pixels only
    assert small["semantics"][0].tolist() == [[5, 7], [13, 15]]  # centre pixels
    assert small["contours"][0].tolist() == [[0, 0], [0, 1]]
    assert torch.allclose(small["normals"][0, :, 0, 0], torch.tensor([1.0, 0.0, 1.0]) / math.sqrt(2))


def test_weights_and_ablation():
    w = TaskWeights().without("normals")
    assert w.inter_normals == 0.0 and w.inter_depth == 0.5
    model = cn.models.create("padnet", variant="C", input_shape=(3, 16, 16), seed=0)
    data = cn.data.load("scenes", n_train=4, n_test=4, size=16)
    out = model.forward_all(data.train.x)
    _, parts = multitask_loss(out, data.train.targets(), w)
    assert set(parts) == {"depth", "semantics", "inter_depth", "inter_contours", "inter_semantics"}
    _, parts = multitask_loss(model.forward_all(data.train.x), data.train.targets())
    assert "inter_normals" in parts


def test_training_lowers_loss_and_evaluates():
    data = cn.data.load("scenes", n_train=64, n_test=16, size=32, seed=0)
    model = cn.models.create("padnet", variant="B", input_shape=(3, 32, 32), seed=0)
    before, _ = multitask_loss(model.forward_all(data.train.x), data.train.targets())
    fit_dense(model, data, epochs=4, batch_size=16, lr=3e-3)
    model.train()
    after, _ = multitask_loss(model.forward_all(data.train.x), data.train.targets())
    assert after.item() < 0.7 * before.item()
    m = evaluate_dense(model, data)
    assert set(m) == {"rmse", "rel", "log10", "delta1", "delta2", "delta3", "pixel_acc", "miou"}
    single = cn.models.create("padnet", variant="single-depth", input_shape=(3, 32, 32), seed=0)
    assert set(evaluate_dense(single, data)) == {"rmse", "rel", "log10", "delta1", "delta2", "delta3"}
