"""A CPU schedule for the functions TVM's CPU pipeline fuses: `schedule_fused_functions()`, a module pass.

FuseOps + FuseTIR merge a chain of legalized ops (reshape, transpose, tril, where, exp, multiply, ...) into one
PrimFunc, but on CPU nothing schedules it: each op of the chain stays its own loop nest writing a whole intermediate
buffer that the next one reads. That costs little on a one-token step, where the tensors are a few rows; in a
hybrid's whole-prompt `prefill` (frontends/prefill.py) Mamba-2's segment sums are chunk x chunk per head (24 heads x
256 x 256 floats = 6 MB at 768 wide), so one fused chain of twelve ops wrote and read twelve such buffers, one thread,
and was the largest item of the call (BENCHMARKS.md, session 14).

Only the functions a whole-prompt function alone calls are scheduled (`schedule_fused_functions(callers)`). The
schedule is what dlight's GPU fallback does before binding threads (`try_inline`: every intermediate block that
can be is computed inline into its consumer, or its consumer into it), then, per block left, its leading spatial
loops fused into one loop run in parallel where the block has enough iterations to pay for waking the thread pool
(PARALLEL_ITERATIONS). Our own kernels and the scheduled matmuls (codegen/cpu_matmul.py) are opaque and left alone;
a function the schedule cannot take stays as it was (slow, not wrong).
"""

from __future__ import annotations

from .cpu_matmul import OPAQUE, left_plain_now

PARALLEL_ITERATIONS = 1 << 14  # a block's iterations below which it runs on one thread


def _schedulable(func) -> bool:
    import tvm

    if not isinstance(func, tvm.tirx.PrimFunc):
        return False
    attrs = func.attrs or {}
    return "tirx.is_scheduled" not in attrs and int(attrs.get("op_pattern", 0)) != OPAQUE


def schedule_fused(func):
    """`func` with its intermediate blocks inlined and its blocks' outer spatial loops parallel (module docstring);
    None where nothing changed."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    infos = try_inline(sch, list(infos))
    for info in infos:
        spatial = []
        for iter_info in info.iters:  # normalize_prim_func orders a block's loops: spatial ones first
            if iter_info.kind != "S":
                break
            spatial.append(iter_info)
        iterations = 1
        for iter_info in spatial:
            iterations *= iter_info.dom if isinstance(iter_info.dom, int) else PARALLEL_ITERATIONS
        if spatial and iterations >= PARALLEL_ITERATIONS:
            loops = [iter_info.loop_rv for iter_info in spatial]
            sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
    return sch.mod["main"]


def _called_only_from(mod, callers: tuple[str, ...]) -> set[str]:
    """The names of the PrimFuncs that only the Relax functions named `callers` call."""
    from tvm import relax

    called: dict[str, set[str]] = {}
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            for callee in relax.analysis.all_global_vars(func):
                called.setdefault(callee.name_hint, set()).add(gv.name_hint)
    return {name for name, by in called.items() if by <= set(callers)}


def schedule_fused_functions(callers: tuple[str, ...]):
    """The module pass: every PrimFunc that only the functions `callers` call (a hybrid decoder's `prefill`) and
    that is not ours or already scheduled, through `schedule_fused`. Not the one-token step's: its tensors are a
    few rows, and on a loaded machine a parallel loop waits for the slowest of its threads (a 768-wide mamba2
    step ran 2.8x slower with its fused functions parallel, load ~7 on 2 cores)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="ScheduleFusedFunctions")
    def transform(mod, _ctx):
        mod = mod.clone()  # the pass's input stays as it was
        wanted = _called_only_from(mod, callers) if callers and not left_plain_now() else set()
        for gv, func in list(mod.functions.items()):
            if gv.name_hint in wanted and _schedulable(func):
                try:
                    scheduled = schedule_fused(func)
                except Exception:  # noqa: BLE001 - see the module docstring: unscheduled is slow, not wrong
                    continue
                if scheduled is not None:
                    mod[gv] = scheduled
        return mod

    return transform
