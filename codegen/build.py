"""Build a graph for a target: lower to Relax, then `tvm.compile` with the target's TVM target.

Our kernels enter as `call_tir`s of PrimFuncs that are already scheduled (CPU: explicit parallel/vector
loops; CUDA: explicit thread bindings, marked `tirx.is_scheduled`). Everything else is legalized by TVM's
default pipeline for the target kind: on CUDA that pipeline schedules the legalized ops with the dlight
GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback), which skip our scheduled kernels.
"""

from __future__ import annotations

from ..ir import Graph
from ..targets import Target
from .lower import lower_graph


def _cuda_setup() -> None:
    from .cuda_support import ensure_cuda_build

    ensure_cuda_build()


SETUP = {"cuda": _cuda_setup}  # TVM target kind -> what building for it needs first


def build(graph: Graph, target: Target):
    """Returns (executable, weight names in the order the executable's `main` takes them after the inputs)."""
    import tvm

    mod, weight_order = lower_graph(graph, target)
    SETUP.get(target.kind, lambda: None)()
    tvm_target = target.tvm_target()
    with tvm_target:  # nvcc and dlight read the current target
        executable = tvm.compile(mod, target=tvm_target)
    return executable, weight_order
