"""Errors raised while importing a model into the IR. Each names what failed, where, and the way out."""

from __future__ import annotations

from ..errors import ActsparseError


class FrontendError(ActsparseError):
    """A model could not be imported (export failed, an unexpressible shape, an unsupported dtype, ...)."""


class SymbolicShapeError(FrontendError):
    """A size the model computes from the symbolic sequence length (`seq + 1`, `Min(2048, seq)`) has no IR form;
    `import_torch` then imports the model again with the example's static shapes."""


class UnsupportedOpError(FrontendError):
    """The model uses an operator the frontend has no mapping for."""

    def __init__(self, op: str, module: str = "", source: str = "", detail: str = ""):
        self.op, self.module, self.source = op, module, source
        where = f" in module `{module or '<root>'}`" + (f" at {source}" if source else "")
        why = f" ({detail})" if detail else ""
        super().__init__(f"unsupported operator {op}{where}{why}: actsparse has no mapping for it; "
                         "file an issue or rewrite the module to avoid it")


__all__ = ["ActsparseError", "FrontendError", "SymbolicShapeError", "UnsupportedOpError"]
