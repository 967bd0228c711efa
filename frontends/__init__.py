"""Model importers: torch modules (torch.export), Hugging Face causal LMs, ONNX. Heavy imports happen on first use."""

from .errors import ActsparseError, FrontendError, UnsupportedOpError

_LAZY = {"import_torch": "torch_export", "import_hf": "hf", "CausalLMLogits": "hf", "import_onnx": "onnx"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ActsparseError", "CausalLMLogits", "FrontendError", "UnsupportedOpError", "import_hf", "import_onnx",
           "import_torch"]
