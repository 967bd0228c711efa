"""The loss's sensitivity to each MLP's output on calibration text, from the torch model: the diagonal Fisher
weights g² that sensitivity_allocation.py pools the budget by (g = ∂ summed next-token loss / ∂ MLP output).

The numpy reference interpreter has no backward, so g comes from the torch causal LM the graph was imported from
(compile_decoder holds it; benchmarks/threshold_frontier.py its own copy): one backward per calibration window,
a progress bar, the result cached on disk (calibration_data.cached_arrays) keyed by the MLP weights and the
windows. Rows are the windows' tokens in order (window by window), as the calibration interpreter collects the
MLP inputs, so row i of g² belongs to calibration row i.

`block_loss_probe` measures instead of estimating: the calibration loss's increase with one block's plan installed
alone (sensitivity_allocation.measured_budgets rescales each block's curve by it), on the first PROBE_WINDOWS
calibration windows: one forward per window per block, e.g. 18 blocks x 4 windows = 72 forwards for Gemma 3 270M.
"""

from __future__ import annotations

import numpy as np

from .calibration_data import cached_arrays, digest

# calibration windows a loss probe runs on (the first ones): enough to rank blocks whose costs differ 10-30x
# (BENCHMARKS.md, session 15), few enough that probing every block costs less than the error curves
PROBE_WINDOWS = 4


def decoder_mlps(model) -> list | None:
    """The MLP module of every decoder layer, in layer order (None: a model whose layers this does not know)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        return None
    found = [getattr(layer, "mlp", None) for layer in layers]
    return None if any(m is None for m in found) else found


def fisher_weights(model, windows, progress: bool = True) -> list[np.ndarray]:
    """Per MLP, g² ([tokens of all windows, d]) on `windows` (token id arrays [1, n]); one backward per window."""
    import torch
    from tqdm.auto import tqdm

    modules = decoder_mlps(model)
    if modules is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers with an `mlp` module to weight")
    outputs: list = []

    def keep(module, args, out) -> None:   # returns None: the output stays as it is
        if not isinstance(out, torch.Tensor):   # e.g. a routed MoE block's (hidden, router logits)
            raise ValueError(f"{type(module).__name__} returns a {type(out).__name__}, not one tensor")
        out.retain_grad()
        outputs.append(out)

    # the gradient flows from the embeddings' output on, not into any parameter (no parameter-sized grads)
    params = [p for p in model.parameters() if p.requires_grad]
    hooks = [m.register_forward_hook(keep) for m in modules]
    hooks.append(model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.requires_grad_()))
    grads: list[list] = [[] for _ in modules]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        for w in tqdm(windows, desc="fisher", unit="window", disable=not progress or None):
            outputs.clear()
            ids = torch.as_tensor(np.asarray(w, np.int64).reshape(1, -1))
            logits = model(ids).logits[0, :-1].float()
            torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").backward()
            for i, out in enumerate(outputs):
                grads[i].append(out.grad.reshape(-1, out.shape[-1]).float().numpy().copy())
    finally:
        for h in hooks:
            h.remove()
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return [np.square(np.concatenate(g)).astype(np.float32) for g in grads]


def cached_fisher_weights(model, windows, progress: bool = True, directory=None) -> list[np.ndarray]:
    """`fisher_weights`, computed once per (MLP weights, windows) and then read from the cache."""
    modules = decoder_mlps(model)
    if modules is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers with an `mlp` module to weight")
    weights = [p.detach().float().numpy() for m in modules for p in m.parameters()]
    key = digest(type(model).__name__, *weights, [np.asarray(w).tolist() for w in windows])
    found = cached_arrays("mlp-fisher", key, lambda: {str(i): g for i, g in enumerate(
        fisher_weights(model, windows, progress))}, {"model": type(model).__name__, "windows": len(windows)},
                          directory)
    return [found[str(i)] for i in range(len(found))]


def mean_loss(model, windows) -> float:
    """Mean next-token cross-entropy (nats per token) of the torch causal LM on `windows` ([1, n] token ids)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            ids = torch.as_tensor(np.asarray(w, np.int64).reshape(1, -1))
            logits = model(ids).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return total / max(count, 1)


def block_loss_probe(model, windows, install, probe_windows: int = PROBE_WINDOWS):
    """A `loss_probe(i, plan)` for sparsity_methods.calibrate_blocks: the mean loss's increase on the first
    `probe_windows` of `windows` with block i alone at `plan`. `install(plans)` puts a list of per-block plans
    (None: dense) into the model's MLPs, `install(None)` makes it dense again. The probe keeps what it measured
    (`probe.measured`: {(block, plan digest): cost}) and measures a plan it has seen once only."""
    windows = list(windows)[:probe_windows]
    install(None)
    dense = mean_loss(model, windows)
    n = len(decoder_mlps(model) or [])

    def probe(i: int, plan) -> float:
        key = (i, digest(plan.x_thr, plan.h_thr, plan.rotation is not None))
        if key not in probe.measured:
            install([plan if j == i else None for j in range(n)])
            try:
                probe.measured[key] = mean_loss(model, windows) - dense
            finally:
                install(None)
        return probe.measured[key]
    probe.measured = {}
    return probe
