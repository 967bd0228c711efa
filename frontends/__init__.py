"""Model importers: torch modules (torch.export), Hugging Face causal LMs, ONNX, torch-mlir. Heavy imports happen on
first use."""

from .errors import ActsparseError, FrontendError, UnsupportedOpError

_LAZY = {"import_torch": "torch_export", "import_hf": "hf", "CausalLMLogits": "hf", "import_onnx": "onnx",
         "import_mlir": "torch_mlir", "export_mlir": "torch_mlir_export"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ActsparseError", "CausalLMLogits", "FrontendError", "UnsupportedOpError", "export_mlir", "import_hf",
           "import_mlir", "import_onnx", "import_torch"]
