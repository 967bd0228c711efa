"""The Relax pipeline for CUDA: TVM 0.27's own (`tvm.relax.backend.cuda.pipeline`), with one dlight rule changed.

What it changes: dlight's GEMV rule asserts (`analysis/gemv.normalize`: `assert r_loops`) on a matmul whose
reduction axis has static extent 1 — a decoder's one-token `step` has them (attention probabilities [.., 1, 1] @
values [.., 1, hd] when the attention spans the new token only). The access normalization drops extent-1 axes,
so the rule finds no reduction loop and fails instead of declining. `OneTokenSafeGemv` declines such a block
(nothing to reduce: it is a broadcast product), and the next rules schedule it (Reduction, GeneralReduction or
Fallback, as for any other op GEMV does not take). Every other PrimFunc meets the same rules in the same order
as in TVM's default pipeline; our own kernels are `tirx.is_scheduled`, which dlight skips. The rule declines as
well where its tiling reads a tile count it could not simplify as a number (`extent.value` of an expression: a
Zamba Mamba step's 264 rows, which do not divide into its tiles).

What else it changes: dlight's Fallback fuses all spatial loops of a block into one, and TVM's iterator analysis
fails to fuse a symbolic extent with a negative coefficient (a pad to the next chunk, `64 - seq` once the
frontend's guards bound seq: Qwen3-Next's and Kimi-Linear's chunked delta rule). `SymbolicSafeFallback` then
schedules elementwise blocks without that fusion: the static loops on blockIdx.x × threadIdx.x, the symbolic one
on blockIdx.y.
"""

from __future__ import annotations


def _nothing_to_reduce(func) -> bool:
    """The block GEMV would schedule reduces over nothing: dlight's normalization keeps no reduction axis (those
    of extent 1 are dropped)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline_contiguous_spatial

    try:
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
    except Exception:  # noqa: BLE001 - what dlight cannot analyse, GEMV declines by itself
        return False
    if not infos:
        return False
    return not any(it.kind == "R" for it in infos[0].iters)


def one_token_safe_gemv():
    """dlight's GEMV rule, declining matmuls that reduce over an axis of extent 1 (see the module docstring)."""
    from tvm.s_tir import dlight as dl

    class OneTokenSafeGemv(dl.gpu.GEMV):
        def apply(self, func, target, tunable):
            if _nothing_to_reduce(func):
                return None
            try:
                return super().apply(func, target, tunable)
            except (AssertionError, AttributeError):  # its tiling reads a symbolic extent as a number: decline
                return None

    return OneTokenSafeGemv()


def symbolic_safe_fallback():
    """dlight's Fallback rule, and where it fails, a grid that does not fuse symbolic loops (see the module
    docstring)."""
    from tvm.s_tir import dlight as dl

    class SymbolicSafeFallback(dl.gpu.Fallback):
        def apply(self, func, target, tunable):
            try:
                return super().apply(func, target, tunable)
            except Exception as err:  # noqa: BLE001 - TVM's arith raises InternalError; retried, else re-raised
                sch = _spatial_grid(func, target)
                if sch is None:
                    raise err
                return sch

    return SymbolicSafeFallback()


def _spatial_grid(func, target):
    """Elementwise blocks only: each block's static loops fused into blockIdx.x × threadIdx.x, its one symbolic
    loop on blockIdx.y (None where a block reduces or has several symbolic loops)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight import base
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos or any(set(info.dom_kind()) != {"S"} for info in infos):
        return None
    threads = base.max_threads_per_block(target)
    for info in infos:
        loops = sch.get_loops(info.block_rv)
        symbolic = [lp for lp in loops if not isinstance(sch.get(lp).extent, tirx.IntImm)]
        static = [lp for lp in loops if isinstance(sch.get(lp).extent, tirx.IntImm)]
        if len(symbolic) != 1:
            return None
        sch.reorder(*symbolic, *static)
        bx, tx = sch.split(sch.fuse(*static) if static else sch.add_unit_loop(info.block_rv), [None, threads])
        sch.bind(symbolic[0], "blockIdx.y")
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    return sch


def cuda_pipeline(tvm_target):
    """TVM's default CUDA pipeline with `one_token_safe_gemv` in place of dlight's GEMV."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
                dl.ApplyDefaultSchedule(dl.gpu.Matmul(), one_token_safe_gemv(), dl.gpu.Reduction(),
                                        dl.gpu.GeneralReduction(), symbolic_safe_fallback())]

    @tvm.transform.module_pass(opt_level=0, name="ActsparseCudaPipeline")
    def _pipeline(mod, _ctx):
        with tvm_target:
            seq = tvm.transform.Sequential(cuda.library_dispatch_passes(tvm_target) + legalize
                                           + cuda.dataflow_lower_passes(tvm_target)
                                           + cuda.finalize_passes(tvm_target))
            return seq(mod)

    return _pipeline
