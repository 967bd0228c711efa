"""Scratch buffers a kernel takes as its last parameters, so that its caller owns them.

The CUDA kernels (`cuda_mlp.py`, `cuda_input_mlp.py`) keep values between their launches in device memory: the
hidden values, the neuron flags, the split-K partial sums. Allocated inside the PrimFunc they would come from TVM's
workspace pool in the middle of the call (`TVMBackendAllocWorkspace` in the host code, a `cudaMalloc` the first
time): invisible to Relax and an allocation inside a CUDA-graph capture. As parameters after the output they are
`call_tir` outputs that Relax's memory planning allocates like any other tensor (`context.emit_kernel_call`), and
TVM's CUDA-graph rewrite lifts them into the graph's one-time allocation with every other static tensor.

A kernel declares how many trailing parameters are scratch (`with_scratch`); their shapes may use the symbolic
sizes of the other parameters (the token count M, the index list's width K), which `scratch_shapes` binds from the
shapes of the arguments a caller has. Every scratch word is written by the kernel before it reads it, so callers
pass uninitialized memory (`scratch_arrays` for numpy callers: tests, benchmarks).
"""

from __future__ import annotations

SCRATCH_ATTR = "actsparse.scratch_params"


def with_scratch(prim, count: int):
    """`prim` declaring its last `count` parameters scratch (see the module docstring)."""
    if not 0 <= count <= len(prim.params) - 1:
        raise ValueError(f"{count} scratch parameters in a function of {len(prim.params)}")
    return prim.with_attr(SCRATCH_ATTR, count)


def scratch_count(prim) -> int:
    attrs = prim.attrs
    return int(attrs[SCRATCH_ATTR]) if attrs is not None and SCRATCH_ATTR in attrs else 0


def scratch_shapes(prim, shapes) -> list[tuple[list, str]]:
    """(shape, dtype) of each scratch parameter of `prim`, its symbolic sizes bound from `shapes`: the shapes of the
    arguments before them (inputs and the output, in order; ints, or Relax's PrimExprs). A dimension of a parameter
    is a constant or one size variable (the kernels' buffers are declared so)."""
    import tvm

    n = scratch_count(prim)
    if n == 0:
        return []
    given = prim.params[:len(prim.params) - n]
    if len(shapes) != len(given):
        raise ValueError(f"{len(shapes)} argument shapes for the {len(given)} non-scratch parameters of "
                         f"{prim.attrs['global_symbol']}")
    bound = []  # (size variable, value): PrimExprs compare by identity (same_as), not in a dict
    for param, shape in zip(given, shapes):
        for dim, value in zip(getattr(param, "shape", ()), shape):
            if isinstance(dim, tvm.tirx.Var) and not any(var.same_as(dim) for var, _ in bound):
                bound.append((dim, value))

    def size(dim):
        if isinstance(dim, tvm.tirx.Var):
            for var, value in bound:
                if var.same_as(dim):
                    return value
            raise ValueError(f"scratch size {dim} is no size of the arguments")
        return int(dim)

    return [([size(dim) for dim in param.shape], str(param.dtype)) for param in prim.params[len(given):]]


def scratch_arrays(prim, args) -> list:
    """Uninitialized numpy arrays for `prim`'s scratch parameters, given the other arguments (numpy arrays)."""
    import numpy as np

    return [np.empty([int(s) for s in shape], dtype) for shape, dtype in scratch_shapes(prim, [a.shape for a in args])]
