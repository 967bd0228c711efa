"""Run by test_predictor_ddp under torchrun: train one lowrank predictor with DDP over the processes, rank 0 saves it.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT.npz
"""

import os
import sys

import numpy as np
import torch

from actsparse.passes.predictor_train import distributed_world, train_lowrank


def problem(seed: int = 0):
    """Rows x and labels 'relu(x·Wᵀ) > 0' of a 24 x 40 gate: a predictor can learn it."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    x = rng.standard_normal((600, 24)).astype(np.float32)
    return x, x @ w.T > 0


OPTIONS = {"rank": 48, "steps": 60, "batch": 128, "lr": 3e-2, "progress": False}


if __name__ == "__main__":
    torch.set_num_threads(1)
    rows, active = problem()
    arrays = train_lowrank(rows[:400], active[:400], **OPTIONS)
    rank, world = distributed_world()
    if rank == 0:
        np.savez(sys.argv[1], world=world, **arrays)
    if world > 1:
        torch.distributed.barrier()     # both ranks done before either tears gloo down
        torch.distributed.destroy_process_group()
    # gloo's C++ threads can outlive the group and abort the interpreter's finalisation ("terminate called without
    # an active exception", seen once in CI after a successful run): the work is saved, leave without finalising
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
