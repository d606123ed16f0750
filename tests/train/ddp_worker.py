"""Worker for tests/train/test_train_ddp.py: run with ``torchrun --nproc_per_node 2 ddp_worker.py OUTDIR``.

Each rank builds a tiny BN ResNet from a *different* seed (DDP must broadcast rank 0's weights), fits it for one
epoch on digits, and saves its initial and final state_dicts to OUTDIR/rank<R>_{init,final}.pt.
"""

import os
import sys

import torch
import torch.distributed as dist

from compactnn.data import load
from compactnn.models import ResNet
from compactnn.train import fit

out = sys.argv[1]
rank = int(os.environ["RANK"])
torch.manual_seed(100 + rank)
model = ResNet(input_shape=(1, 8, 8), num_classes=10, depth=8, widths=(4, 8, 8))
torch.save(model.state_dict(), os.path.join(out, f"rank{rank}_init.pt"))
fit(model, load("digits"), epochs=1, lr=0.05, batch_size=64, seed=0, checkpoint=os.path.join(out, "ckpt.pt"))
assert dist.is_initialized() and dist.get_world_size() == 2
torch.save(model.state_dict(), os.path.join(out, f"rank{rank}_final.pt"))
dist.destroy_process_group()
