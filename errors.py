"""The errors users see. Each says what is wrong, where, and the way out; the CLI prints them without a traceback."""


class ActsparseError(Exception):
    """Base of every error actsparse raises for bad input or unsupported models."""


class ModeError(ActsparseError):
    """The requested sparsity mode cannot apply to a block (e.g. exact mode on a SwiGLU MLP)."""


class TargetError(ActsparseError):
    """An unknown or unusable target."""


class ArtifactError(ActsparseError):
    """A saved artifact is missing, corrupted or from an incompatible version."""


class InputError(ActsparseError, ValueError):
    """Inputs a compiled module cannot take: wrong shape or dtype, a token id outside the vocabulary, a sequence
    longer than the model's positions."""


class DecodeInputError(InputError):
    """Input a compiled decoder cannot take: a prompt longer than its KV cache, token ids outside its vocabulary."""


class MemoryBudgetError(ActsparseError):
    """A memory_budget the hot/cold split cannot meet: negative, below the bytes that must stay resident, or on a
    target without the memory level the cold neurons would live in."""
