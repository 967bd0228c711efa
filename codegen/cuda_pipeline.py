"""The Relax pipeline for CUDA: TVM 0.27's own (`tvm.relax.backend.cuda.pipeline`), with its dlight rules made to
decline where they fail.

dlight tries its rules in order (Matmul, GEMV, Reduction, GeneralReduction, Fallback) and expects each to decline
(return None) a function it does not fit. Several fail instead, and one failure stops the whole build:
- GEMV asserts (`analysis/gemv.normalize`: `assert r_loops`) on a matmul whose reduction axis has static extent
  1 — a decoder's one-token `step` has them (attention probabilities [.., 1, 1] @ values [.., 1, hd] when the
  attention spans the new token only: nothing to reduce, a broadcast product).
- GEMV reads a tile count it could not simplify as a number (`extent.value` of an expression: a Zamba Mamba
  step's 264 rows, which do not divide into its tiles); Reduction asserts in `detect_dominant_read` (MPT's
  ALiBi). `declining` wraps every rule but the last: such a failure is a decline, and the next rule schedules the
  function, as for any op the rule does not take.
- Fallback, the last, fuses all spatial loops of a block into one, and TVM's iterator analysis fails to fuse a
  symbolic extent with a negative coefficient (a pad to the next chunk, `64 - seq` once the frontend's guards
  bound seq: Qwen3-Next's and Kimi-Linear's chunked delta rule). `SymbolicSafeFallback` then schedules
  elementwise blocks without that fusion: the static loops on blockIdx.x × threadIdx.x, the symbolic one on
  blockIdx.y.
Every PrimFunc meets the same rules in the same order as in TVM's default pipeline; our own kernels are
`tirx.is_scheduled`, which dlight skips.
"""

from __future__ import annotations


def declining(rule_class):
    """dlight rule `rule_class`, declining (None: the next rule tries) where it fails on a function instead of
    declining it: an assertion of its analysis (Reduction's `detect_dominant_read` on MPT's ALiBi bias, GEMV's
    reduction loops), a symbolic tile count read as a number (`extent.value`), a cross-thread reduction its
    schedule cannot form (Zaya's grouped conv). A rule schedules a copy of the function, so nothing of its failed
    try remains."""

    class Declining(rule_class):
        def apply(self, func, target, tunable):
            try:
                return super().apply(func, target, tunable)
            except Exception:  # noqa: BLE001 - any failure: a schedule only orders the same computation, so the
                return None  # next rule's is as right (and the Fallback, last, still raises what it cannot do)

    Declining.__name__ = Declining.__qualname__ = f"Declining{rule_class.__name__}"
    return Declining


def schedule_rules() -> list:
    """TVM's default CUDA rules in their order, each declining where it fails, the Fallback last."""
    from tvm.s_tir import dlight as dl

    return [declining(rule)() for rule in (dl.gpu.Matmul, dl.gpu.GEMV, dl.gpu.Reduction, dl.gpu.GeneralReduction)] + [
        symbolic_safe_fallback()]


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
    """TVM's default CUDA pipeline with `schedule_rules` in place of dlight's default rules."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
                dl.ApplyDefaultSchedule(*schedule_rules())]

    @tvm.transform.module_pass(opt_level=0, name="ActsparseCudaPipeline")
    def _pipeline(mod, _ctx):
        with tvm_target:
            seq = tvm.transform.Sequential(cuda.library_dispatch_passes(tvm_target) + legalize
                                           + cuda.dataflow_lower_passes(tvm_target)
                                           + cuda.finalize_passes(tvm_target))
            return seq(mod)

    return _pipeline
