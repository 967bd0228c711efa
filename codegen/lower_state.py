"""Lowering of `index_copy`, the op a KV-cache write imports as: in place when the copied tensor is dead after.

    index_copy(%cache, %positions, %new){axis}   (%cache an input read by nothing else)
        -> call_tir_inplace(index_copy_rows, [%cache, %positions, %new])

A decoding graph takes each layer's KV cache as an input and returns the updated cache
(`frontends/kv_cache.py`); written functionally, every step would copy the whole cache. When the cache input has
no other reader, the kernel writes the new rows into the caller's buffer and the output aliases it, so a step
touches only the T rows it writes. Otherwise (any other reader of the old value) the kernel copies first.
The kernel views its tensors as 3-D [outer, S, inner] itself (no reshape call around it each step: 4 VM calls a
layer), so one loop nest serves every rank and axis.
On a GPU target the same copies run as one launch each, a thread per element (`tirx.is_scheduled`: dlight's rules
take only block-form PrimFuncs and would reject these loops).
"""

from __future__ import annotations

import math
from functools import cache

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
def index_copy_rows(shape: tuple[int, ...], axis: int, dtype: str, in_place: bool, gpu_threads: int = 0):
    """PrimFunc (x [shape], index [T] int64, src [shape with T at `axis`][, out]) with T symbolic: in place,
    x[..., index[t], ...] = src[..., t, ...] along `axis`; otherwise out = x with those rows replaced. The tensors
    are viewed as [outer, shape[axis], inner]. `gpu_threads`: as GPU launches of that many threads per block, marked
    scheduled."""
    outer, rows, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    name = f"index_copy_{'x'.join(map(str, shape))}_a{axis}_{dtype}_{'inplace' if in_place else 'copy'}"
    put, copy_all = _gpu_copies(outer, rows, inner, gpu_threads) if gpu_threads else _cpu_copies(outer, rows, inner)
    before, after = tuple(shape[:axis]), tuple(shape[axis + 1:])

    @T.prim_func
    def write(x_h: T.handle, idx_h: T.handle, src_h: T.handle):
        n = T.int64()
        xs = T.match_buffer(x_h, shape, dtype)
        idx = T.match_buffer(idx_h, (n,), "int64")
        srcs = T.match_buffer(src_h, (*before, n, *after), dtype)
        x = T.decl_buffer((outer, rows, inner), dtype, data=xs.data)
        src = T.decl_buffer((outer, n, inner), dtype, data=srcs.data)
        put(x, idx, src, n)

    @T.prim_func
    def copy(x_h: T.handle, idx_h: T.handle, src_h: T.handle, out_h: T.handle):
        n = T.int64()
        xs = T.match_buffer(x_h, shape, dtype)
        idx = T.match_buffer(idx_h, (n,), "int64")
        srcs = T.match_buffer(src_h, (*before, n, *after), dtype)
        outs = T.match_buffer(out_h, shape, dtype)
        x = T.decl_buffer((outer, rows, inner), dtype, data=xs.data)
        src = T.decl_buffer((outer, n, inner), dtype, data=srcs.data)
        out = T.decl_buffer((outer, rows, inner), dtype, data=outs.data)
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
    dtype = TVM_DTYPES[node.dtype]
    src_shape = (*shape[:axis], index_node.shape[0], *shape[axis + 1:])
    src = args[2] if tuple(src_node.shape) == src_shape else ctx.bb.emit(R.reshape(args[2], ctx.shape(src_shape)))
    index = args[1] if index_node.dtype == "i64" else R.astype(args[1], "int64")
    in_place = x_node.op == "input" and ctx.users.get(id(x_node), 0) == 1
    out_type = relax.TensorType(list(shape), dtype)
    sched = schedule_for(ctx.target)
    gpu_threads = sched.threads if isinstance(sched, GpuSchedule) else 0
    kernel = ctx.kernel(index_copy_rows(tuple(shape), axis, dtype, in_place, gpu_threads))
    if in_place:
        return relax.call_tir_inplace(kernel, [args[0], index, src], [0], out_type)
    return relax.call_tir(kernel, [args[0], index, src], out_type)
