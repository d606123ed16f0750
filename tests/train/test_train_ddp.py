"""Data-parallel fit under torchrun: two gloo ranks on loopback end with identical, trained weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_ranks_end_identical_and_trained(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    init0, init1 = load("rank0_init.pt"), load("rank1_init.pt")
    final0, final1 = load("rank0_final.pt"), load("rank1_final.pt")
    assert not torch.equal(init0["conv1.weight"], init1["conv1.weight"])  # ranks started apart
    assert final0.keys() == final1.keys()
    assert all(torch.equal(final0[k], final1[k]) for k in final0)  # weights and BN buffers agree
    assert not torch.equal(final0["conv1.weight"], init0["conv1.weight"])  # training changed them
    # DistributedSampler gives each rank ceil(1437 / 2) = 719 rows: ceil(719 / 64) = 12 steps
    assert int(final0["bn1.num_batches_tracked"]) == 12
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # written by rank 0 only, at the epoch's end
    assert ckpt["epoch"] == 1 and all(torch.equal(ckpt["model"][k], final0[k]) for k in final0)
