"""Dense multi-task prediction (depth, normals, contours, semantics): losses, metrics and a training loop.

``metrics.depth_metrics(pred, gt)`` and ``metrics.segmentation_metrics(pred, gt, classes)``; losses and the weighted
objective in :mod:`.losses`; :func:`fit_dense` / :func:`evaluate_dense` train and score the models of
:mod:`compactnn.models.padnet` on a bundle of :class:`compactnn.data.scenes.DenseDataset`.
"""

from . import losses, metrics
from .losses import TaskWeights, multitask_loss
from .metrics import depth_metrics, segmentation_metrics
from .train import evaluate_dense, fit_dense, predict_dense

__all__ = ["losses", "metrics", "TaskWeights", "multitask_loss", "depth_metrics", "segmentation_metrics",
           "fit_dense", "evaluate_dense", "predict_dense"]
