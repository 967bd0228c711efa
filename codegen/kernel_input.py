"""What a kernel call passes for x: x flattened to one token axis, or — where x is an RMS norm of a float32 value
and the target's kernels run on the CPU — the norm's own input and weight, the kernel computing the norm in its
prologue (`kernels/norm_prologue.py`: one call and one reshape fewer per norm; a decoder layer's q / k / v and
gate / up or sparse MLP; not its LM head, which reads the final norm's last position). The norm's graph ops are
lowered as before; where every reader took its input this way nothing reads them and DeadCodeElimination drops them
(lower.py). GPU kernels read x as they did (the prologue is CPU TIR).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node
from ..passes.match import input_rms_norm
from .context import flatten_tokens, token_count
from .kernels.schedule import CpuSchedule
from .schedules import schedule_for

FUSE_INPUT_NORMS = True   # off: every kernel reads x flattened (tests compare both)


@dataclass(frozen=True)
class KernelX:
    """x as a kernel call takes it: `args` its leading arguments ([x2d] or [x_raw[, γ]]), `lead` / `tokens` x's
    leading dims and their product, `norm` the prologue's (k, eps, lead rank, weighted) or None."""

    args: list
    lead: list
    tokens: object
    norm: tuple | None = None

    def kernel(self, prim):
        """The PrimFunc to call for `prim` (x [M, k] first): prim itself, or prim with the norm's prologue."""
        if self.norm is None:
            return prim
        from .kernels.norm_prologue import with_rms_prologue

        return with_rms_prologue(prim, *self.norm)


def kernel_x(ctx, x_node: Node | None, x, x_type=None) -> KernelX:
    """x (`x_node`'s Relax value) for a CPU kernel call; see the module docstring. Without an IR node (`x_type`
    given instead) x is flattened."""
    found = None if x_node is None else _norm(ctx, x_node)
    if found is None:
        x2d, lead, tokens = flatten_tokens(ctx, x_node.type if x_node is not None else x_type, x)
        return KernelX([x2d], lead, tokens)
    raw, gamma, eps = found
    lead = ctx.shape(raw.shape[:-1])
    tokens = token_count(lead)
    args = [ctx.values[id(raw)], *([ctx.values[id(gamma)]] if gamma is not None else [])]
    return KernelX(args, lead, tokens, (raw.shape[-1], eps, len(lead), gamma is not None))


def _norm(ctx, x_node: Node):
    """(x_raw, γ or None, eps) where the prologue can take x's norm: float32, 1 or 2 leading dims, lowered inputs."""
    if not FUSE_INPUT_NORMS or not isinstance(schedule_for(ctx.target), CpuSchedule):
        return None
    found = input_rms_norm(x_node)
    if found is None:
        return None
    raw, gamma, _ = found
    if raw.type.rank not in (2, 3) or raw.shape[-1] != x_node.shape[-1] or id(raw) not in ctx.values \
            or (gamma is not None and id(gamma) not in ctx.values) or 0 in raw.shape:
        return None
    return found
