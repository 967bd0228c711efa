"""Lowering of predictor mode (the `predictor` entry of ir/sparse_variants.py declares the composite kernel
"predicted"): ReLU-family gates (all the predictors but a hand-made one) take the CPU's scored kernel, which makes
the neuron list itself (`kernels/scored_mlp.py`: each task scans its own neurons' scores, reads the gate rows of the
listed ones and the up and down rows only of those whose gate fired); other gates get an index list first:

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, s){mode='predictor', cutoff=t, gate_act=relu|fatrelu}
        -> reshape(call_tir(gmlp_scored_d_n_<acts>, [x2d, Wg, Wu, Wd.t, s2d, t]), [..., d_out])
    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, s){mode='predictor', cutoff=t, gate_act=silu|...}
        -> (idx, count) = call_tir(select_n, [s2d, t])           # idx[m, :count[m]] = {j : s[m, j] > t}
           reshape(call_tir(gmlp_indexed_d_n_<acts>, [x2d, Wg, Wu, Wd.t, idx, count]), [..., d_out])
    sign_score(x, @bits){d} -> reshape(call_tir(signscore_d_n, [x2d, bits]), [..., n])

The bound predictor's scores (add(linear(x, @w8){float_x}, mul(sqrt(sum(mul(x, x))), @coef)), no gate bias) go
into the certified kernel instead, which scores the int8 rows itself a block ahead of the gate rows it reads:

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, <bound scores>){mode='predictor', cutoff=t}
        -> reshape(call_tir(gmlp_certified_d_n_<acts>, [x2d, Wg, Wu, Wd.t, w8, coef, t]), [..., d_out])

On CUDA the variant declares the composite "scored" instead: one kernel takes the scores and the cutoff, flags the
predicted neurons itself and reads only their rows (three launches, no index list, no single-block select):

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, s){mode='predictor', cutoff=t}
        -> reshape(call_tir(gmlp_scored_d_n_<acts>, [x2d, Wg, Wu, Wd.t, s2d, t]), [..., d_out])

The scores of the lowrank and svd predictors are ordinary linears in front (the linear kernel); the sign
predictor is its own kernel. Every kernel is the target family's (`kernels.kernel(...)`), as everywhere.
"""

from __future__ import annotations

from tvm import relax

from ..ir.activations import ZERO_BELOW
from ..passes.certified_gate import LAYOUT as SCORE_LAYOUT
from .context import const, emit_kernel_call, flatten_tokens, kernel_dtype, lowering
from .kernel_input import kernel_x
from .lower_kernels import COMPOSITE_KERNELS, down_layout
from .schedules import schedule_for

R = relax.op
CERTIFIED_DTYPES = ("float32", "float16")  # gate rows the certified kernel reads (the bound refuses quantized ones)


def _lower_scored_block(ctx, node, args, sched, options, name: str, inputs_after_weights):
    """What both predictor lowerings share: x and the scores flattened to [tokens, .], the cutoff a constant, then
    the target family's kernel `name` on (x2d, Wg, Wu, Wd.t, *inputs_after_weights(cutoff, tokens, n_ff)),
    reshaped back to x's leading dims. `inputs_after_weights` may emit what it needs (the flat scores, the select
    call)."""
    from .kernels import kernel as target_kernel

    x_node, w_gate = node.inputs[0], node.inputs[1]
    n_ff, d = w_gate.shape
    d_out = node.inputs[3].shape[1]
    kx = kernel_x(ctx, x_node, args[0])   # an RMS norm's output: the kernel computes it (kernel_input.py)
    cutoff = const([float(node.attrs["cutoff"])], "f32")
    extra = inputs_after_weights(cutoff, kx.tokens, n_ff)
    kernel = target_kernel(name, d, n_ff, dtype=kernel_dtype(w_gate), sched=sched,   # quantized: its layout
                           **down_layout(node), **options)
    out = emit_kernel_call(ctx, kx.kernel(kernel), [*kx.args, *args[1:4], *extra], kx.tokens, d_out, node.dtype)
    return R.reshape(out, [*kx.lead, d_out])


def _flat_scores(ctx, node, args):
    return flatten_tokens(ctx, node.inputs[4].type, args[4])[0]


def certified_inputs(node):
    """(w8, coef) weight nodes when the scores are the bound predictor's x·deq(w8)ᵀ + ‖x‖₂·coef on the block's own
    x with no gate bias (passes/sparsify_predictor.bound_scores), else None."""
    x, scores = node.inputs[0], node.inputs[4]
    if scores.op != "add" or [i.op for i in scores.inputs] != ["linear", "mul"]:
        return None
    approx, slack = scores.inputs
    norm, coef = slack.inputs
    if (not approx.attrs.get("float_x") or len(approx.inputs) != 2 or approx.inputs[0] is not x
            or approx.inputs[1].attrs.get("layout") != SCORE_LAYOUT or coef.op != "weight" or norm.op != "sqrt"):
        return None
    total = norm.inputs[0]
    squares = total.inputs[0] if total.op == "sum" else None
    if squares is None or squares.op != "mul" or any(i is not x for i in squares.inputs):
        return None
    return approx.inputs[1], coef


def lower_predicted(ctx, node, args, sched, options):
    from .kernels import kernel as target_kernel

    # the bound predictor's scores: the certified kernel computes them itself, and the score nodes lowered before
    # this one go unused (lower.py drops them). The schedule's `certified_in_kernel` (target data) may say a score
    # linear + the scored kernel instead: quiet, the fused kernel was neutral in time (BENCHMARKS.md session 9)
    # and saves ~6 small calls and allocations per layer
    parts = certified_inputs(node) if sched.certified_in_kernel else None
    if parts and node.attrs["gate_act"] in ZERO_BELOW and kernel_dtype(node.inputs[1]) in CERTIFIED_DTYPES:
        w8, coef = (ctx.values[id(p)] for p in parts)
        return _lower_scored_block(ctx, node, args, sched, options, "certified",
                                   lambda cutoff, tokens, n_ff: [w8, coef, cutoff])

    def index_list(cutoff, tokens, n_ff):
        s2d = _flat_scores(ctx, node, args)
        select = ctx.kernel(target_kernel("select", n_ff, sched=sched))
        picked = ctx.bb.emit(relax.call_tir(select, [s2d, cutoff], [relax.TensorType([tokens, n_ff], "int32"),
                                                                   relax.TensorType([tokens], "int32")]))
        return [ctx.bb.emit(relax.TupleGetItem(picked, 0)), ctx.bb.emit(relax.TupleGetItem(picked, 1))]

    # ReLU-family gates (all of predictor mode's): one kernel lists, and a listed neuron whose gate is 0 skips its
    # up and down rows
    if node.attrs["gate_act"] in ZERO_BELOW:
        return lower_scored(ctx, node, args, sched, options)
    return _lower_scored_block(ctx, node, args, sched, options, "indexed", index_list)


def lower_scored(ctx, node, args, sched, options):
    return _lower_scored_block(ctx, node, args, sched, options, "scored",
                               lambda cutoff, tokens, n_ff: [_flat_scores(ctx, node, args), cutoff])


COMPOSITE_KERNELS["predicted"] = lower_predicted
COMPOSITE_KERNELS["scored"] = lower_scored


@lowering("sign_score")
def _sign_score(ctx, node, args):
    from .kernels import kernel as target_kernel

    n = node.inputs[1].shape[0]
    x2d, lead, tokens = flatten_tokens(ctx, node.inputs[0].type, args[0])
    kernel = target_kernel("sign_score", node.attrs["d"], n, sched=schedule_for(ctx.target))
    out = emit_kernel_call(ctx, kernel, [x2d, args[1]], tokens, n, "f32")
    return R.reshape(out, [*lead, n])
