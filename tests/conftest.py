"""Test-wide settings: never download, no progress bars, deterministic threads."""

import os

os.environ.setdefault("COMPACTNN_OFFLINE", "1")  # tests must never touch the network
os.environ.setdefault("OMP_NUM_THREADS", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
