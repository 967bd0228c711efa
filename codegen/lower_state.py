"""Lowering of `index_copy`, the op a KV-cache write imports as: in place when the copied tensor is dead after.

    index_copy(%cache, %positions, %new){axis}   (%cache an input read by nothing else)
        -> call_tir_inplace(index_copy_rows, [reshape(%cache, [outer, S, inner]), %positions, %new3d])

A decoding graph takes each layer's KV cache as an input and returns the updated cache
(`frontends/kv_cache.py`); written functionally, every step would copy the whole cache. When the cache input has
no other reader, the kernel writes the new rows into the caller's buffer and the output aliases it, so a step
touches only the T rows it writes. Otherwise (any other reader of the old value) the kernel copies first.
Reshapes to 3-D [outer, S, inner] are views (no copy), so one kernel serves every rank and axis.
On a GPU target the same copies run as one launch each, a thread per element (`tirx.is_scheduled`: dlight's rules
take only block-form PrimFuncs and would reject these loops).
"""

from __future__ import annotations

from functools import cache, reduce

from tvm import relax
from tvm.script import tirx as T

from .context import TVM_DTYPES, lowering
from .kernels.schedule import GpuSchedule
from .schedules import schedule_for

R = relax.op


def _cpu_copies(outer: int, rows: int, inner: int):
    """(put, copy_all) as loops: put(x, idx, src, n) writes the n rows, copy_all(x, out) copies x whole."""

    @T.macro
    def put(x, idx, src, n):
        for o, t, i in T.grid(outer, n, inner):
            x[o, idx[t], i] = src[o, t, i]

    @T.macro
    def copy_all(x, out):
        for o, r, i in T.grid(outer, rows, inner):
            out[o, r, i] = x[o, r, i]

    return put, copy_all


def _gpu_copies(outer: int, rows: int, inner: int, threads: int):
    """(put, copy_all) as launches of a thread per element."""
    whole = outer * rows * inner

    @T.macro
    def put(x, idx, src, n):
        for b in T.thread_binding((outer * n * inner + threads - 1) // threads, "blockIdx.x"):
            for tx in T.thread_binding(threads, "threadIdx.x"):
                e: T.let = b * threads + tx
                if e < outer * n * inner:
                    x[e // (n * inner), idx[e // inner % n], e % inner] = src[e // (n * inner), e // inner % n,
                                                                             e % inner]

    @T.macro
    def copy_all(x, out):
        for b in T.thread_binding((whole + threads - 1) // threads, "blockIdx.x"):
            for tx in T.thread_binding(threads, "threadIdx.x"):
                e: T.let = b * threads + tx
                if e < whole:
                    out[e // (rows * inner), e // inner % rows, e % inner] = x[e // (rows * inner), e // inner % rows,
                                                                             e % inner]

    return put, copy_all


@cache
def index_copy_rows(outer: int, rows: int, inner: int, dtype: str, in_place: bool, gpu_threads: int = 0):
    """PrimFunc (x [outer, rows, inner], index [T] int64, src [outer, T, inner][, out]) with T symbolic:
    in place, x[:, index[t], :] = src[:, t, :]; otherwise out = x with those rows replaced. `gpu_threads`: as GPU
    launches of that many threads per block, marked scheduled."""
    name = f"index_copy_{outer}_{rows}_{inner}_{dtype}_{'inplace' if in_place else 'copy'}"
    put, copy_all = _gpu_copies(outer, rows, inner, gpu_threads) if gpu_threads else _cpu_copies(outer, rows, inner)

    @T.prim_func
    def write(x: T.Buffer((outer, rows, inner), dtype), idx_h: T.handle, src_h: T.handle):
        n = T.int64()
        idx = T.match_buffer(idx_h, (n,), "int64")
        src = T.match_buffer(src_h, (outer, n, inner), dtype)
        put(x, idx, src, n)

    @T.prim_func
    def copy(x: T.Buffer((outer, rows, inner), dtype), idx_h: T.handle, src_h: T.handle,
             out: T.Buffer((outer, rows, inner), dtype)):
        n = T.int64()
        idx = T.match_buffer(idx_h, (n,), "int64")
        src = T.match_buffer(src_h, (outer, n, inner), dtype)
        copy_all(x, out)
        put(out, idx, src, n)

    kernel = (write if in_place else copy).with_attr("global_symbol", name + (f"_gpu{gpu_threads}" if gpu_threads
                                                                                  else ""))
    return kernel.with_attr("tirx.is_scheduled", True) if gpu_threads else kernel


@lowering("index_copy")
def _index_copy(ctx, node, args):
    x_node, index_node, src_node = node.inputs
    axis = node.attrs["axis"] % x_node.type.rank
    shape = x_node.shape
    if any(isinstance(d, str) for i, d in enumerate(shape) if i != axis) or isinstance(shape[axis], str):
        raise ValueError(f"index_copy at {node.loc}: the copied tensor needs static dims, got {list(shape)}")
    outer = reduce(lambda a, b: a * b, shape[:axis], 1)
    inner = reduce(lambda a, b: a * b, shape[axis + 1:], 1)
    dtype = TVM_DTYPES[node.dtype]
    x3 = ctx.bb.emit(R.reshape(args[0], [outer, shape[axis], inner]))
    n = ctx.dim(index_node.shape[0])
    src3 = ctx.bb.emit(R.reshape(args[2], [outer, n, inner]))
    index = args[1] if index_node.dtype == "i64" else R.astype(args[1], "int64")
    in_place = x_node.op == "input" and ctx.users.get(id(x_node), 0) == 1
    out_type = relax.TensorType([outer, shape[axis], inner], dtype)
    sched = schedule_for(ctx.target)
    gpu_threads = sched.threads if isinstance(sched, GpuSchedule) else 0
    kernel = ctx.kernel(index_copy_rows(outer, shape[axis], inner, dtype, in_place, gpu_threads))
    if in_place:
        out = ctx.bb.emit(relax.call_tir_inplace(kernel, [x3, index, src3], [0], out_type))
    else:
        out = ctx.bb.emit(relax.call_tir(kernel, [x3, index, src3], out_type))
    return R.reshape(out, ctx.shape(shape))
