"""Build a graph for a target: lower to Relax, then `tvm.compile` with the target's TVM target.

Our kernels enter as `call_tir`s of PrimFuncs that are already scheduled (CPU: explicit parallel/vector
loops; CUDA: explicit thread bindings, marked `tirx.is_scheduled`). Everything else is legalized by TVM's
default pipeline for the target kind: on CUDA that pipeline schedules the legalized ops with the dlight
GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback), which skip our scheduled kernels. On CPU
`tvm.compile`'s generic pipeline does not fuse, so a decoder step made ~15 small legalized calls per layer
(RMSNorm's five, rotary's eight, ...), each an allocation and a VM call: CPU takes TVM's CPU pipeline, which
fuses them (FuseOps + FuseTIR). Our kernels are marked opaque so that fusion never merges into them. The matmuls it
legalizes (two activations: a hybrid prefill's chunked scan) get a CPU schedule there too (codegen/cpu_matmul.py).

A decoder's graph (first input `input_ids[1, seq]`) also gets a `step` function with that token dim fixed to 1:
static shapes for every op outside attention, so the VM no longer builds and checks a shape per value. On CPU what
every layer computes alike from the step's inputs (the attention mask, the cache positions) is computed once, and the
step's planned buffers of static shape are made once per loaded model, not once per step (codegen/step_workspace.py).

Each Relax function says how many of its parameters are inputs (`num_input`); the rest are weights, whose
addresses do not change between calls. TVM's RewriteCUDAGraph (on with the PassContext option
`relax.backend.use_cuda_graph`) needs that to capture the kernels reading weights in a CUDA graph. A target that
captures a decode step (`Target.graph_capture`) also gets `step_graph` and its smaller buckets `step_graph_S`
(codegen/static_step.py): every shape static and `num_input = 0`, its inputs and the logits held in fixed buffers by
the runtime, so one graph captures the step; such a decoder is built with `relax.backend.use_cuda_graph` on unless
the caller's PassContext sets it (False: no graphs).
"""

from __future__ import annotations

from ..ir import Graph
from ..ir.decoding import STEP_FUNCTION as STEP
from ..ir.decoding import checked_inputs
from ..ir.limits import least_sizes
from ..targets import Target
from .kernels.common import OPAQUE
from .lower import lower_graph
from .lowerings import FUSABLE_TE
from .static_step import returned_through_view, static_steps
from .step_workspace import lift_step_workspace


def _cuda_setup() -> None:
    from .cuda_support import ensure_cuda_build

    ensure_cuda_build()


SETUP = {"cuda": _cuda_setup}  # TVM target kind -> what building for it needs first


def _cpu_pipeline(tvm_target, target: Target):
    """TVM's CPU pipeline with the legalized matmuls scheduled right after legalization (codegen/cpu_matmul.py)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from .cpu_matmul import calls_matmul, schedule_legalized_matmuls

    legalize = cpu.legalize_passes(tvm_target)  # LegalizeOps first, then pattern annotation and fusion
    # common subexpressions merged first: every layer of an imported decoder builds the same attention mask and cache
    # positions from the step's inputs (SmolLM2's step: 89 fewer legalized calls, 300 fewer VM calls)
    head = cpu.library_dispatch_passes(tvm_target) + [tvm.relax.transform.EliminateCommonSubexpr()] + legalize[:1]
    plan, *finalize = cpu.finalize_passes(tvm_target)  # StaticPlanBlockMemory first: a step's plan lifted after it
    assert plan.info.name == "StaticPlanBlockMemory", f"TVM's CPU pipeline changed: {plan.info.name} first"
    tail = legalize[1:] + cpu.dataflow_lower_passes(tvm_target) + [plan, lift_step_workspace((STEP,))] + finalize

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod, _ctx):
        schedule = [schedule_legalized_matmuls(target.lanes)] if calls_matmul(mod) else []  # none: nothing to do
        with tvm_target:
            return tvm.transform.Sequential(head + schedule + tail)(mod)

    return pipeline


def _cuda_pipeline(tvm_target, _target: Target):
    from .cuda_pipeline import cuda_pipeline

    return cuda_pipeline(tvm_target)


# TVM target kind -> its Relax pipeline (others: tvm.compile's default). CUDA: TVM's own, with a GEMV rule that
# declines the one-token step's extent-1 attention matmuls where dlight's asserts (codegen/cuda_pipeline.py)
PIPELINES = {"llvm": _cpu_pipeline, "cuda": _cuda_pipeline}


def specializations(graph: Graph, target: Target | None = None) -> tuple[dict[str, dict[str, int]], dict[str, Graph]]:
    """({function name: {symbolic dim: value}} to build beside `main`, {function name: the graph it computes where
    not `graph`}): a decoder's one-token `step` (every target), and its static `step_graph` functions (one per
    bucket of slots) where the target captures decode steps in a graph and the rewrite holds
    (codegen/static_step.py)."""
    first = graph.inputs[0] if graph.inputs else None
    bound, graphs = {}, {}
    if first is not None and first.attrs.get("name") == "input_ids" and len(first.shape) == 2 \
            and isinstance(first.shape[1], str) and least_sizes(graph.inputs).get(first.shape[1], 1) <= 1:
        bound[STEP] = {first.shape[1]: 1}  # not below the least length the graph holds for (ir/limits.py)
    for name, (step, dims) in (static_steps(graph) if target is not None and target.graph_capture else {}).items():
        graphs[name], bound[name] = step, dims
    return bound, graphs


def with_functions_weights(graph: Graph, functions: dict[str, Graph]) -> Graph:
    """`graph` holding the weights of every function too (each function is lowered with all of them as parameters:
    one weight list for the module). A name two graphs hold must be the same array: the functions come from one
    model through one pipeline (a decoder's `prefill`, frontends/prefill.py), so a pass derives the same weight."""
    import numpy as np

    weights = dict(graph.weights)
    for name, function in functions.items():
        for wname, array in function.weights.items():
            held = weights.setdefault(wname, array)
            if held is not array and not np.shares_memory(held, array) and not (
                    held.shape == array.shape and held.dtype == array.dtype and np.array_equal(held, array)):
                raise ValueError(f"internal: function {name!r} holds another weight {wname!r} than main")
    return Graph(graph.inputs, graph.outputs, weights, graph.name)


def build(graph: Graph, target: Target, functions: dict[str, Graph] | None = None):
    """Returns (executable, weight names in the order the executable's functions take them after the inputs).
    `functions`: graphs built beside `main` under their names (a decoder's `prefill`), whose weights `graph` holds
    (`with_functions_weights`)."""
    import tvm

    tvm_target = target.tvm_target()
    mod, weight_order, static = relax_module(graph, target, functions)
    SETUP.get(target.kind, lambda: None)()
    pipeline = PIPELINES.get(tvm_target.kind.name)
    with tvm_target, _build_context(static):  # nvcc and dlight read the current target
        executable = tvm.compile(mod, target=tvm_target,
                                 relax_pipeline=pipeline(tvm_target, target) if pipeline else "default")
    return executable, weight_order


def relax_module(graph: Graph, target: Target, functions: dict[str, Graph] | None = None):
    """(the Relax module `build` compiles, weight names in parameter order, whether it has static steps)."""
    import tvm

    bound, graphs = specializations(graph, target)
    static = set(graphs)
    for name, function in (functions or {}).items():
        bound[name], graphs[name] = {}, Graph(function.inputs, function.outputs, graph.weights, name)
    mod, weight_order = lower_graph(graph, target, bound, graphs)
    for gv, func in list(mod.functions.items()):  # before legalization: only our own kernels are PrimFuncs here,
        if isinstance(func, tvm.tirx.PrimFunc) and not gv.name_hint.startswith(FUSABLE_TE):  # and TE ops to fuse
            mod[gv] = func.with_attr("op_pattern", OPAQUE)
        elif gv.name_hint in static:  # a static step: the runtime keeps every parameter in a fixed buffer, so the
            mod[gv] = returned_through_view(func).with_attr("num_input", 0)  # whole step is capturable
        elif isinstance(func, tvm.relax.Function):  # the parameters after the inputs are weights: fixed addresses
            # (and a decoder's caches: the runtime's own buffers, whose checks would be ~2 VM calls each a step)
            inputs = graphs.get(gv.name_hint, graph).inputs
            mod[gv] = func.with_attr("num_input", checked_inputs(n.attrs["name"] for n in inputs))
    return mod, weight_order, bool(static)


CUDA_GRAPH_OPTION = "relax.backend.use_cuda_graph"
# TIR's argument checks (type, rank, shape, strides of every buffer) in each kernel's entry: the Relax VM checks the
# module's inputs at its boundary (`match_cast` builtins, kept) and hands kernels only tensors of the shapes it
# derived, so inside the module they repeat those checks. They were half the LLVM code of a tiny decoder and 1.7 s
# of its 5.2 s build (codegen and JIT); off unless the caller's PassContext sets the option.
ASSERT_OPTION = "tirx.disable_assert"


def _build_context(step_graph: bool):
    """The PassContext to build in: the caller's, with TIR's argument checks off and, for a module with a
    `step_graph`, TVM's CUDA-graph rewrite on, each unless the caller set that option either way."""
    import tvm

    current = tvm.transform.PassContext.current()
    defaults = {ASSERT_OPTION: True, **({CUDA_GRAPH_OPTION: True} if step_graph else {})}
    config = {**defaults, **dict(current.config)}
    return tvm.transform.PassContext(opt_level=current.opt_level, required_pass=current.required_pass,
                                     disabled_pass=current.disabled_pass, instruments=current.instruments,
                                     config=config)
