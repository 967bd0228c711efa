"""actsparse: compile LLM MLP activation sparsity into decoding speed.

    cm = actsparse.compile(model, (input_ids,), target="x86", mode="exact")
    cm(input_ids); print(cm.report); cm.save("out/model.actsparse"); actsparse.load("out/model.actsparse")

Heavy backends (torch, TVM) are imported lazily, so `import actsparse` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ActsparseError, ArtifactError, InputError, ModeError, TargetError  # noqa: E402


def compile(model, example_inputs=None, target="x86", mode="auto", calibration=None, sparsity=None,
            memory_budget=None, method=None, max_seq=None, tokenizer=None, predictor=None, recall=None,
            predictor_budget=None, quantize=None, prequantized=None, max_loss_increase=None):
    """A model -> CompiledModule; a decoder source (HF folder, .gguf, transformers causal LM without example
    inputs) -> Decoder with `generate`, `prefill`, `step`, `tokenizer` (see DESIGN.md)."""
    from .api import compile as _compile

    return _compile(model, example_inputs, target=target, mode=mode, calibration=calibration, sparsity=sparsity,
                    memory_budget=memory_budget, method=method, max_seq=max_seq, tokenizer=tokenizer,
                    predictor=predictor, recall=recall, predictor_budget=predictor_budget, quantize=quantize,
                    prequantized=prequantized, max_loss_increase=max_loss_increase)


def relufy(model, kind="drelu", example_inputs=None, *, inplace=False):
    """SwiGLU/GeGLU gated MLPs -> dReLU ("drelu") or ReLU ("relu"), found by structure (`relufication.py`)."""
    from .relufication import relufy as _relufy

    return _relufy(model, kind, example_inputs, inplace=inplace)


def load(path, expect_sha256=None, public_key=None):
    """Load an artifact, verifying every file first; `expect_sha256` pins its manifest digest, `public_key` (ed25519,
    PEM) requires its signature. An artifact holds native code: load only artifacts you trust or pin. A decoder's
    artifact loads back as a Decoder (tokenizer included)."""
    from .runtime import load as _load
    from .runtime.decoder import as_decoder

    return as_decoder(_load(path, expect_sha256=expect_sha256, public_key=public_key))


def __getattr__(name):
    if name in ("targets", "recipes"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'actsparse' has no attribute {name!r}")


__all__ = ["ActsparseError", "ArtifactError", "InputError", "ModeError", "TargetError", "__version__", "compile",
           "load", "recipes", "relufy", "targets"]
