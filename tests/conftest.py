"""Test-wide settings: never download, no progress bars, one torch thread (tiny models run fastest so)."""

import os

os.environ.setdefault("COMPACTNN_OFFLINE", "1")  # tests must never touch the network
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")
torch.set_num_threads(1)
