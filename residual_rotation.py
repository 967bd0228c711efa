"""rotate_residual: one orthogonal rotation of a pre-norm decoder's residual stream, folded into its weights, so
every MLP reads its input in the stream's principal axes at no run-time cost (QuaRot / SpinQuant's R1, the
residual rotation of LaRoSa).

    model = actsparse.rotate_residual(model, calibration_windows)   # a new model; same logits up to rounding
    cm = actsparse.compile(model, ..., mode="threshold", sparsity=0.5)

Why it is free: RMSNorm(r·Q) = RMSNorm(r)·Q for an orthogonal Q (a row's norm does not change) once the norm's
gain g is folded into the linears that read the norm (W <- W·diag(g), g <- 1). With

    embeddings            E <- E·Q
    writers of the stream W <- Qᵀ·W  (o_proj, down_proj; a bias b <- b·Q)
    readers of a norm     W <- W·diag(g)·Q  (q/k/v after input_layernorm, gate/up after post_attention_layernorm,
                                             lm_head after the final norm; a tied lm_head is untied first)

the stream carries r·Q everywhere and the logits do not change. The rotated-* sparsity methods buy the same
principal axes per block with a d×d Q read per token (3.3% of SmolLM2-135M's MLP bytes at q8_0, paid from the
sparsity budget); here one Q shared by every layer costs nothing per token, so at the same effective sparsity
the blocks skip more of what matters less (BENCHMARKS.md, session 10). Q: the principal axes of the MLPs'
normalized inputs (r / rms(r), pooled over the layers) on calibration text.

What it needs: a pre-norm decoder in the transformers layout (Llama, Mistral, Qwen2, SmolLM2: per layer
`input_layernorm` -> self_attn -> add, `post_attention_layernorm` -> mlp -> add; a final `norm`), RMSNorm with a
plain gain. A norm on a block's output (Gemma 2/3's post_attention / post_feedforward norms) is refused: its gain
acts in the stream's basis after the block, and in the rotated basis it would be a dense d×d matrix (not free).
The folded model is checked against the original on a random input before it is returned.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .errors import ActsparseError

LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")
READERS = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}
WRITERS = ("self_attn.o_proj", "mlp.down_proj")
CHECK_RTOL = 1e-3   # float32 rounding of the folded weights; a model the fold does not fit is off by far more


class RotationError(ActsparseError):
    """A model's residual stream cannot be rotated for free (not a plain pre-norm RMSNorm decoder)."""


def _parts(model: nn.Module):
    """(decoder body, its layers) or RotationError naming what is missing or in the way."""
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    missing = [n for n in ("embed_tokens", "norm") if not hasattr(body, n)] if body is not None else ["model"]
    if layers is None or missing or not hasattr(model, "lm_head"):
        raise RotationError(f"rotate_residual needs a transformers causal LM (model.model.layers, embed_tokens, norm, "
                            f"lm_head); {type(model).__name__} lacks {', '.join(missing) or 'layers or lm_head'}")
    for i, layer in enumerate(layers):
        names = {n for n, m in layer.named_modules() if "norm" in type(m).__name__.lower() and "." not in n}
        extra = sorted(names - set(LAYER_NORMS))
        if extra:
            raise RotationError(f"layer {i} has norms on its blocks' outputs ({', '.join(extra)}): their gains act in "
                                f"the residual stream's basis, so a rotation would not be free; use a rotated-* "
                                f"sparsity method instead (a per-block Q, paid from the budget)")
        present = dict(layer.named_modules())
        absent = [n for n in (*LAYER_NORMS, *WRITERS, *(r for rs in READERS.values() for r in rs)) if n not in present]
        if absent:
            raise RotationError(f"layer {i} has no {', '.join(absent)}: rotate_residual folds into the transformers "
                                f"pre-norm layout (Llama, Mistral, Qwen2, SmolLM2)")
        for name in LAYER_NORMS:
            norm = layer.get_submodule(name)
            if getattr(norm, "bias", None) is not None or not hasattr(norm, "weight"):
                raise RotationError(f"layer {i}'s {name} is not an RMSNorm with a plain gain (a bias or a mean "
                                    f"subtraction does not commute with a rotation)")
    return body, layers


def _gain(norm: nn.Module) -> torch.Tensor:
    return norm.weight.detach().double()


def residual_axes(model: nn.Module, windows) -> np.ndarray:
    """Q [d, d] float64: the principal axes of the MLPs' normalized inputs (x / gain) over `windows` (token id
    arrays [1, T]), pooled over the layers, largest variance first."""
    _, layers = _parts(model)
    d = model.config.hidden_size
    gram = torch.zeros(d, d, dtype=torch.float64)

    def hook(layer):
        gain = _gain(layer.post_attention_layernorm)

        def add(_, args):
            n = args[0].reshape(-1, d).double() / gain
            gram.add_(n.T @ n)
        return add

    handles = [layer.mlp.register_forward_pre_hook(hook(layer)) for layer in layers]
    try:
        with torch.no_grad():
            for w in windows:
                model(torch.as_tensor(np.asarray(w)).reshape(1, -1))
    finally:
        for h in handles:
            h.remove()
    if not torch.isfinite(gram).all():
        raise RotationError("the MLP inputs overflow (NaN/inf) on the calibration text: check the model")
    _, vectors = torch.linalg.eigh(gram)
    return vectors.flip(1).numpy()


def rotate_residual(model: nn.Module, windows=None, q: np.ndarray | None = None) -> nn.Module:
    """A copy of `model` whose residual stream is r·Q (module docstring); Q from `residual_axes(model, windows)`
    unless given (orthogonal, [d, d])."""
    _parts(model)
    if q is None:
        if windows is None:
            raise RotationError("rotate_residual needs calibration windows (token id arrays) or an explicit q")
        q = residual_axes(model, windows)
    q = torch.as_tensor(np.asarray(q), dtype=torch.float64)
    d = model.config.hidden_size
    if q.shape != (d, d) or not torch.allclose(q.T @ q, torch.eye(d, dtype=torch.float64), atol=1e-4):
        raise RotationError(f"q must be an orthogonal [{d}, {d}] matrix, got shape {tuple(q.shape)}")
    out = copy.deepcopy(model)
    body, layers = _parts(out)
    if out.lm_head.weight is body.embed_tokens.weight:
        out.lm_head.weight = nn.Parameter(out.lm_head.weight.detach().clone())
        out.config.tie_word_embeddings = False
    with torch.no_grad():
        _set(body.embed_tokens, body.embed_tokens.weight.double() @ q)
        for layer in layers:
            for norm_name, readers in READERS.items():
                norm = layer.get_submodule(norm_name)
                for name in readers:
                    _read(layer.get_submodule(name), _gain(norm), q)
                norm.weight.fill_(1.0)
            for name in WRITERS:
                _write(layer.get_submodule(name), q)
        _read(out.lm_head, _gain(body.norm), q)
        body.norm.weight.fill_(1.0)
    _check(model, out)
    return out


def _set(module: nn.Module, weight: torch.Tensor) -> None:
    module.weight.copy_(weight.to(module.weight.dtype))


def _read(linear: nn.Linear, gain: torch.Tensor, q: torch.Tensor) -> None:
    _set(linear, (linear.weight.double() * gain) @ q)


def _write(linear: nn.Linear, q: torch.Tensor) -> None:
    _set(linear, q.T @ linear.weight.double())
    if linear.bias is not None:
        linear.bias.copy_((linear.bias.double() @ q).to(linear.bias.dtype))


def _check(before: nn.Module, after: nn.Module) -> None:
    """The folded model's logits equal the original's on a random input, or RotationError (the model does
    something on the stream that the fold does not account for)."""
    ids = torch.randint(0, before.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = before(ids).logits.double(), after(ids).logits.double()
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
    if not err <= CHECK_RTOL:
        raise RotationError(f"the rotated model's logits differ from the original's by {err:.2e} (relative): the "
                            f"model does something on its residual stream that the fold does not account for")
