"""Training the low-rank predictor x -> relu(x·Aᵀ) -> ·Bᵀ + b (logits per neuron) with BCE on activation labels.

One process by default. Started under `torchrun` (WORLD_SIZE > 1 in the environment), the processes train one
model together with DistributedDataParallel (gloo on CPU, NCCL when the model trains on CUDA): each takes its
shard of every global batch (global batch size and steps as one process would use), gradients are averaged, so
every process ends with the same predictor of the same quality as a single process would train. Every process
runs the same compile() (the calibration data is the same everywhere); only rank 0 shows a progress bar.

The output bias starts at the logit of each neuron's firing frequency, so the first steps learn structure rather
than the base rate. The loss weighs a neuron's rare firing rows up (BCE pos_weight = sqrt((1 − f) / f), f its firing
frequency): a recall target cares about the positives, and at 90% sparsity plain BCE spends its capacity on the
easy negatives. A validation split (VALIDATION of the rows, not trained on) is scored every EVAL_EVERY steps; the
best weights are kept and training stops after PATIENCE evaluations without improvement.
"""

from __future__ import annotations

import os

import numpy as np

STEPS = 300
BATCH = 512
LR = 1e-2
VALIDATION = 0.1
EVAL_EVERY = 25
PATIENCE = 4


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
                  lr: float = LR, seed: int = 0, desc: str = "", progress: bool = True,
                  balanced: bool = True, validation: float = VALIDATION) -> dict[str, np.ndarray]:
    """Fit A [rank, d], B [n_ff, rank], b [n_ff] on rows [tokens, d] and labels active [tokens, n_ff] (bool);
    `validation` (a fraction, 0 = none) of the rows picks the best weights and stops early."""
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
    order = torch.randperm(len(rows), generator=generator)     # the same split in every process
    n_val = int(len(rows) * validation) if validation and len(rows) * validation >= 64 else 0
    val, train = order[:n_val], order[n_val:]
    scale = x_all.pow(2).mean().sqrt().clamp_min(1e-6)        # inputs at unit scale: one lr fits every model
    optimizer = torch.optim.Adam(trained.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    weight = torch.from_numpy(np.sqrt((1 - freq) / freq).astype(np.float32)).to(device) if balanced else None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
    batch = min(batch, len(train))
    bar = tqdm(range(steps), desc=f"train predictor {desc}".strip(), unit="step", leave=False,
               disable=not progress or me != 0 or None)
    best, best_state, stale = float("inf"), None, 0
    for step in bar:
        pick = train[torch.randint(0, len(train), (batch,), generator=generator)]   # same global batch everywhere
        mine = pick[me::world]                                                        # this process's shard of it
        logits = trained(x_all[mine].to(device) / scale)
        loss = loss_fn(logits, y_all[mine].to(device)) * (len(mine) * world / batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if n_val and ((step + 1) % EVAL_EVERY == 0 or step + 1 == steps):
            with torch.no_grad():   # every process scores the whole split; averaged: the same decision everywhere
                score = loss_fn(model(x_all[val].to(device) / scale), y_all[val].to(device))
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(score)
                score = float(score) / world
            if score < best:
                best, stale = score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            bar.set_postfix(val_loss=f"{score:.4f}", refresh=False)
            if stale >= PATIENCE:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    a = (model[0].weight.detach().cpu() / scale).numpy()
    return {"A": np.ascontiguousarray(a, np.float32), "B": model[2].weight.detach().cpu().numpy().copy(),
            "b": model[2].bias.detach().cpu().numpy().copy()}
