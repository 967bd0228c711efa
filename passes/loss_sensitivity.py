"""The loss's sensitivity to each MLP's output on calibration text, from the torch model: the diagonal Fisher
weights g² that sensitivity_allocation.py pools the budget by (g = ∂ summed next-token loss / ∂ MLP output).

The numpy reference interpreter has no backward, so g comes from the torch causal LM the graph was imported from
(compile_decoder holds it; benchmarks/threshold_frontier.py its own copy): one backward per calibration window,
a progress bar, the result cached on disk (calibration_data.cached_arrays) keyed by the MLP weights and the
windows. Rows are the windows' tokens in order (window by window), as the calibration interpreter collects the
MLP inputs, so row i of g² belongs to calibration row i.
"""

from __future__ import annotations

import numpy as np

from .calibration_data import cached_arrays, digest


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
            if len(outputs) != len(modules):   # a layer looped (Dory) or skipped: outputs are not one per MLP
                raise ValueError(f"{type(model).__name__}'s {len(modules)} MLPs ran {len(outputs)} times in one "
                                 "forward, not once each")
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
