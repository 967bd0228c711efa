"""TIR kernels for the sparse and dense gated MLPs and for Linear layers, with their schedule parameters.

Submodules import TVM, so they load lazily: `from actsparse.codegen.kernels import sparse_mlp`.
"""

import importlib

__all__ = ["CpuSchedule", "build_standalone", "common", "linear", "schedule", "sparse_mlp"]

_ATTRS = {"CpuSchedule": "schedule", "build_standalone": "common"}


def __getattr__(name):
    if name in _ATTRS:
        return getattr(importlib.import_module(f".{_ATTRS[name]}", __name__), name)
    if name in ("common", "linear", "schedule", "sparse_mlp"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
