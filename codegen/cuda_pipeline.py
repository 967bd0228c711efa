"""The Relax pipeline for CUDA: TVM 0.27's own (`tvm.relax.backend.cuda.pipeline`), with one dlight rule changed.

What it changes: dlight's GEMV rule asserts (`analysis/gemv.normalize`: `assert r_loops`) on a matmul whose
reduction axis has static extent 1 — a decoder's one-token `step` has them (attention probabilities [.., 1, 1] @
values [.., 1, hd] when the attention spans the new token only). The access normalization drops extent-1 axes,
so the rule finds no reduction loop and fails instead of declining. `OneTokenSafeGemv` declines such a block
(nothing to reduce: it is a broadcast product), and the next rules schedule it (Reduction, GeneralReduction or
Fallback, as for any other op GEMV does not take). Every other PrimFunc meets the same rules in the same order
as in TVM's default pipeline; our own kernels are `tirx.is_scheduled`, which dlight skips.
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
            return None if _nothing_to_reduce(func) else super().apply(func, target, tunable)

    return OneTokenSafeGemv()


def cuda_pipeline(tvm_target):
    """TVM's default CUDA pipeline with `one_token_safe_gemv` in place of dlight's GEMV."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
                dl.ApplyDefaultSchedule(dl.gpu.Matmul(), one_token_safe_gemv(), dl.gpu.Reduction(),
                                        dl.gpu.GeneralReduction(), dl.gpu.Fallback())]

    @tvm.transform.module_pass(opt_level=0, name="ActsparseCudaPipeline")
    def _pipeline(mod, _ctx):
        with tvm_target:
            seq = tvm.transform.Sequential(cuda.library_dispatch_passes(tvm_target) + legalize
                                           + cuda.dataflow_lower_passes(tvm_target)
                                           + cuda.finalize_passes(tvm_target))
            return seq(mod)

    return _pipeline
