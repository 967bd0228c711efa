"""Calibrated plans run in the torch model the graph came from: each decoder MLP's forward replaced by the IR
semantics of its plan (ir/input_sparse.py's torch twins, which a test checks against the compiled module), with
the weights as the kernels store them. Perplexity of a plan then needs no compile: the quality benchmarks
(benchmarks/threshold_frontier.py) and the quality guard (quality_guard.py) measure through it."""

from __future__ import annotations

import functools

import numpy as np

from .input_thresholds import CalibrationError
from .loss_sensitivity import decoder_mlps, mean_loss
from .quality_guard import MAX_LOSS_INCREASE, LossGuard


def install_plans(model, plans, quantize: str | None = None, weights=None) -> None:
    """Replace every MLP's forward by the IR semantics of its calibrated plan (None: dense again). `quantize`: the
    MLP weights as the kernels store them in that kind (the rotation as `ROTATION_STORAGE` says), taken from
    `weights` (BlockWeights, float: what calibration and the quantize pass read) or the model's own."""
    import torch

    from ..ir.input_sparse import input_sparse_torch, threshold_torch
    from .rotation import ROTATION_STORAGE

    modules = decoder_mlps(model)
    for i, (m, plan) in enumerate(zip(modules, plans or [None] * len(modules))):
        if plan is None:
            m.__dict__.pop("forward", None)
            continue
        ws = (m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight) if weights is None else \
            tuple(torch.from_numpy(a) for a in (weights[i].w_gate, weights[i].w_up, weights[i].w_down))
        if hasattr(plan, "x_thr"):
            attrs = {"up_act": "identity", **plan.attrs}
            rotation = getattr(plan, "rotation", None)   # rotated-*: the block reads x·T with W·T⁻ᵀ
            w_gate, w_up = ws[0], ws[1]
            if rotation is not None:
                q = torch.from_numpy(np.ascontiguousarray(rotation, np.float32))
                turn = getattr(plan, "turn", None)   # T⁻ᵀ (pca: Q itself)
                turn = q if turn is None else torch.from_numpy(np.ascontiguousarray(turn, np.float32))
                with torch.no_grad():
                    w_gate, w_up = w_gate @ turn, w_up @ turn
                q = stored(q.T, ROTATION_STORAGE[quantize or "fp32"]).T   # linear(x, @Tᵀ): Tᵀ's rows stored
            w_gate, w_up = stored(w_gate, quantize, "in"), stored(w_up, quantize, "in")
            ws = (w_gate, w_up, stored(ws[2], quantize, "in"))
            sparse = functools.partial(input_sparse_torch, w_gate=w_gate, w_up=w_up, w_down=ws[2],
                                       x_thr=torch.from_numpy(plan.x_thr), h_thr=torch.from_numpy(plan.h_thr),
                                       attrs=attrs, act_g=m.act_fn)
            m.forward = sparse if rotation is None else (lambda x, sparse=sparse, q=q: sparse(x @ q))
        else:
            ws = (stored(ws[0], quantize), stored(ws[1], quantize), stored(ws[2], quantize, "in"))
            m.forward = functools.partial(threshold_torch, w_gate=ws[0], w_up=ws[1], w_down=ws[2],
                                          attrs={"up_act": "identity", **plan.attrs}, act_g=m.act_fn)


def torch_loss_guard(model, windows, install, tolerance: float = MAX_LOSS_INCREASE) -> LossGuard:
    """A LossGuard on a torch causal LM: `install(plans)` puts per-block plans into its MLPs (None: dense again),
    `windows` ([1, n] token ids) held out of the calibration that fitted the plans."""
    windows = list(windows)
    install(None)
    dense = mean_loss(model, windows)

    def increase(plans: list) -> float:
        install(plans)
        try:
            return float(np.expm1(mean_loss(model, windows) - dense))
        finally:
            install(None)
    return LossGuard(increase, tolerance)


def stored(w, kind: str | None, rows: str = "out"):
    """`w` ([out, in] torch) as the kernels see it stored as `kind` (None: as it is): dequantize(quantize(·)) of
    the stored rows — "out": w's own rows (groups along `in`), "in": its transpose (input-sparse gate / up and
    every sparse down projection are stored one input channel / neuron per row)."""
    import numpy as np
    import torch

    if kind is None:
        return w
    from ..ir.quant import FLOAT_KINDS, quantize

    a = w.detach().float().numpy()
    if kind in FLOAT_KINDS:
        back = a.astype(FLOAT_KINDS[kind]).astype(np.float32)
    else:
        back = quantize(np.ascontiguousarray(a.T if rows == "in" else a), kind).dequantize()
        back = back.T if rows == "in" else back
    return torch.from_numpy(np.ascontiguousarray(back, np.float32))


# the share of the calibration samples held out for the quality guard (the last ones; at least one)
GUARD_SHARE = 0.25


def held_out_guard(model, samples: list, tolerance: float | None) -> tuple[list, LossGuard | None, str]:
    """(samples to calibrate on, the guard on the rest, why there is none): compile()'s quality guard on the last
    GUARD_SHARE of the calibration samples (tuples whose first element is token ids [1, n]), which the error
    curves, the Fisher weights and the thresholds then never see."""
    if tolerance is None:
        return samples, None, ""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < np.inf:
        raise CalibrationError(f"max_loss_increase must be a number >= 0 (0.05: at most +5% perplexity on held-out "
                               f"calibration samples) or None (no guard), got {tolerance!r}")
    mlps = decoder_mlps(model)
    if mlps is None or not all(hasattr(m, a) for m in mlps for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return samples, None, (f"no quality guard: {type(model).__name__}'s MLPs are not gate_proj/up_proj/down_proj "
                               "modules this can run a plan in")
    if len(samples) < 2:
        return samples, None, (f"no quality guard: it holds out calibration samples to measure the loss on, and there "
                               f"are {len(samples)}; give more (or max_loss_increase=None)")
    held = max(1, int(round(GUARD_SHARE * len(samples))))
    guard = torch_loss_guard(model, [s[0] for s in samples[-held:]], functools.partial(install_plans, model),
                             tolerance)
    return samples[:-held], guard, ""
