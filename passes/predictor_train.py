"""Training the low-rank predictor x -> relu(x·Aᵀ) -> ·Bᵀ + b (logits per neuron) with BCE on activation labels.

One process by default. Started under `torchrun` (WORLD_SIZE > 1 in the environment), the processes train one
model together with DistributedDataParallel (gloo on CPU, NCCL when the model trains on CUDA): each takes its
shard of every global batch (global batch size and steps as one process would use), gradients are averaged, so
every process ends with the same predictor of the same quality as a single process would train. Every process
runs the same compile() (the calibration data is the same everywhere); only rank 0 shows a progress bar.

The output bias starts at the logit of each neuron's firing frequency, so the first steps learn structure rather
than the base rate.
"""

from __future__ import annotations

import os

import numpy as np

STEPS = 300
BATCH = 512
LR = 1e-2


def distributed_world():
    """(rank, world size) of the torchrun job this process belongs to, initialising the process group once; (0, 1)
    outside torchrun."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def train_lowrank(rows: np.ndarray, active: np.ndarray, rank: int, steps: int = STEPS, batch: int = BATCH,
                  lr: float = LR, seed: int = 0, desc: str = "", progress: bool = True) -> dict[str, np.ndarray]:
    """Fit A [rank, d], B [n_ff, rank], b [n_ff] on rows [tokens, d] and labels active [tokens, n_ff] (bool)."""
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    me, world = distributed_world()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if world > 1 and torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(seed)
    d, n_ff = rows.shape[1], active.shape[1]
    model = nn.Sequential(nn.Linear(d, rank, bias=False), nn.ReLU(), nn.Linear(rank, n_ff))
    for p in model.parameters():   # the same initial weights in every process
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=generator) * (1.0 / np.sqrt(p.shape[-1])))
    freq = np.clip(active.mean(0), 1e-4, 1 - 1e-4)
    with torch.no_grad():
        model[2].bias.copy_(torch.from_numpy(np.log(freq / (1 - freq)).astype(np.float32)))
    model = model.to(device)
    trained = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    x_all = torch.from_numpy(np.ascontiguousarray(rows, np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(active, np.float32))
    scale = x_all.pow(2).mean().sqrt().clamp_min(1e-6)        # inputs at unit scale: one lr fits every model
    optimizer = torch.optim.Adam(trained.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss_fn = nn.BCEWithLogitsLoss()
    batch = min(batch, len(rows))
    bar = tqdm(range(steps), desc=f"train predictor {desc}".strip(), unit="step", leave=False,
               disable=not progress or me != 0 or None)
    for _ in bar:
        pick = torch.randint(0, len(rows), (batch,), generator=generator)   # same global batch everywhere
        mine = pick[me::world]                                                # this process's shard of it
        logits = trained(x_all[mine].to(device) / scale)
        loss = loss_fn(logits, y_all[mine].to(device)) * (len(mine) * world / batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    a = (model[0].weight.detach().cpu() / scale).numpy()
    return {"A": np.ascontiguousarray(a, np.float32), "B": model[2].weight.detach().cpu().numpy().copy(),
            "b": model[2].bias.detach().cpu().numpy().copy()}
