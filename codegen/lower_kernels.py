"""Lowerings that call our own TIR kernels: `linear`, `gated_mlp` (dense) and `sparse_gated_mlp` (every variant).

Each flattens the leading dims of x to one token axis M (symbolic when the sequence is), calls the kernel built
for the layer's sizes and the target's schedule, and restores the leading dims:

    linear(x[..., k], @w[n, k])                 -> reshape(call_tir(linear_k_n, [x2d, w]), [..., n])
    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, *extra){mode=v}
                                                -> reshape(call_tir(<kernel of v for the family>,
                                                                    [x2d, Wg, Wu, Wd.t, *extra]), [..., d_out])
    gated_mlp(x, @Wg, @Wu, @Wd)  (dense mode)   -> the gate / up kernel (CPU: both projections and the activations,
                                                   kernels/gate_up.py), then the down projection's linear kernel
                                                   (elsewhere, or gate / up in two layouts: linear kernels for gate /
                                                   up and Relax activations; biases go to the kernels)
    routed_moe(x, @Wg, @Wu, @Wd.t, V, I[, @bg, @bu, @bd | @thr])
                                                -> reshape(call_tir(routed kernel, [x2d, Wg, Wu, Wd.t, V2d, I2d, ...]))
                                                   (threshold experts: the families of ir/moe.py's ROUTED_MODES;
                                                   input experts, [.., @x_thr, @h_thr]: the routed-input kernel)
                                                   (CUDA: x spread over the K slots, the per-slot routed kernel,
                                                   the slots' outputs summed by weight; a family with neither and
                                                   biased experts there: each expert's dense kernel, weighted)

Which kernel a sparse variant uses per family ("cpu", "cuda") and with which options is the variant's entry
(ir/sparse_variants.py: `kernels`, `kernel_options`); nothing here names a variant.
"""

from __future__ import annotations

import dataclasses

from tvm import relax

from ..ir import TensorType
from ..ir.activations import ACTIVATIONS
from ..ir.moe import expert_sizes, routed_kernel_takes
from ..ir.sparse_variants import sizes, variant_of
from .context import KERNEL_DTYPE, TVM_DTYPES, LoweringError, emit_kernel_call, flatten_tokens, kernel_dtype, lowering
from .kernel_input import KernelX, kernel_x
from .lower_siblings import lower_siblings, sibling_group
from .schedules import schedule_for

R = relax.op
# kernel names a variant may declare that are a sequence of launches, not one kernel (lower_predictor.py's
# "predicted": select the predicted neurons, then the indexed kernel): name -> fn(ctx, node, args, sched, options)
COMPOSITE_KERNELS: dict = {}


def linear_call(ctx, x_type: TensorType, x, w_node, w, b=None, float_x: bool = False, flat=None, residual=None,
                x_node=None):
    """x[..., k] @ w[n, k]^T (+ b) (+ residual) through the linear kernel (w_node: the weight's IR node, whose layout
    may be quantized; float_x: no int8-dot rounding of x); returns the un-flattened expression. `flat`: x already
    flattened, (x2d, lead, tokens) as `flatten_tokens` gives them (x then unused; x_type gives the output's dtype).
    `residual`: a value of the output's shape, [M, n] or [B, S, n] (float32, no bias; `residual_add`), the kernel
    adds as it stores. `x_node`: x's IR node, where the kernel may take x's RMS norm in its prologue
    (kernel_input.py)."""
    from .kernels import kernel as target_kernel

    n, k = w_node.shape
    kx = KernelX([flat[0]], *flat[1:]) if flat else kernel_x(ctx, x_node, x, x_type)
    lead, tokens = kx.lead, kx.tokens
    sched = schedule_for(ctx.target)
    if float_x and getattr(sched, "int8_dot", ""):
        sched = dataclasses.replace(sched, int8_dot="")
    if residual is not None:   # r and the output in their own shape ([M, n] or [B, S, n]): no reshapes
        kernel = target_kernel("linear", k, n, dtype=kernel_dtype(w_node), sched=sched, residual=len(lead))
        return relax.call_tir(ctx.kernel(kx.kernel(kernel)), [*kx.args, w, residual],
                              relax.TensorType([*lead, n], TVM_DTYPES[KERNEL_DTYPE]))
    kernel = target_kernel("linear", k, n, dtype=kernel_dtype(w_node), sched=sched, bias=b is not None)
    if b is not None and getattr(b.ty, "dtype", "float32") != "float32":  # the kernels add a float32 bias
        b = ctx.bb.emit(R.astype(b, "float32"))
    out = emit_kernel_call(ctx, kx.kernel(kernel), [*kx.args, w] + ([b] if b is not None else []), tokens, n,
                           x_type.dtype)
    return R.reshape(out, [*lead, n])


def residual_add(ctx, node):
    """(the add node, the other addend's value) where `node` (a linear's output, float32) is read only by an add of
    an already lowered value of its shape — a residual connection the linear kernel can add as it stores (CPU
    kernels; callers pass unbiased linears) — else None. The caller sets the add's value to the kernel's result."""
    from .kernels import family_of

    readers = ctx.readers.get(id(node), [])
    if (family_of(schedule_for(ctx.target)) != "cpu" or ctx.users.get(id(node)) != 1 or len(readers) != 1
            or node.dtype != KERNEL_DTYPE or node.type.rank not in (2, 3)):   # the kernel's r: [M, n] or [B, S, n]
        return None
    add = readers[0]
    if add.op != "add" or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return None
    other = add.inputs[1] if add.inputs[0] is node else add.inputs[0]
    if add.shape != node.shape or other.shape != node.shape or other.dtype != node.dtype or id(other) not in ctx.values:
        return None
    return add, ctx.values[id(other)]


def with_residual(ctx, node, emit):
    """`emit(residual)`: the expression of `node` computed by a linear kernel that takes the residual addend (or
    None); where `residual_add` finds one, the add's value is set to the result (the lowering loop then skips it)."""
    found = residual_add(ctx, node)
    if found is None:
        return emit(None)
    add, residual = found
    value = ctx.bb.emit(emit(residual))
    ctx.values[id(add)] = value
    return value


@lowering("linear")
def _linear(ctx, node, args):
    if node.inputs[1].op != "weight":  # activations times activations: no weight layout to exploit
        out = R.matmul(args[0], R.permute_dims(args[1], [1, 0]))
        return R.add(out, args[2]) if len(args) == 3 else out
    if group := sibling_group(ctx, node):   # q / k / v reading one x: one call (lower_siblings.py)
        return lower_siblings(ctx, group, args[0])
    if len(args) == 3:
        return linear_call(ctx, node.inputs[0].type, args[0], node.inputs[1], args[1], args[2],
                           float_x=node.attrs.get("float_x", False), x_node=node.inputs[0])
    return with_residual(ctx, node, lambda residual: linear_call(
        ctx, node.inputs[0].type, args[0], node.inputs[1], args[1], float_x=node.attrs.get("float_x", False),
        residual=residual, x_node=node.inputs[0]))


def gate_up_call(ctx, node, args, biases):
    """act_g(x @ Wg^T + bg) * act_u(x @ Wu^T + bu) of an unfused `gated_mlp` through the target's one-call gate / up
    kernel (kernels/gate_up.py; a fused gate_up weight's two halves too): (h2d, lead, tokens), h flattened to one
    token axis as the down projection's linear takes it (a reshape there and back would be fused into a copy); None
    where the target has none or the block does not fit it (gate and up in different layouts; an up factor that
    ignores its input)."""
    from .kernels import has_kernel
    from .kernels import kernel as target_kernel

    a, x_node = node.attrs, node.inputs[0]
    weights = node.inputs[1:2] if a["fused"] else node.inputs[1:3]   # fused: gate and up the halves of one
    sched = schedule_for(ctx.target)
    if (not has_kernel("gate_up", sched) or ACTIVATIONS[a["up_act"]].constant is not None
            or any(w.op != "weight" for w in weights) or len({(w.shape, kernel_dtype(w)) for w in weights}) != 1):
        return None
    rows, k = weights[0].shape
    n = rows // 2 if a["fused"] else rows
    kx = kernel_x(ctx, x_node, args[0])
    bias = [b if getattr(b.ty, "dtype", "float32") == "float32" else ctx.bb.emit(R.astype(b, "float32"))
            for b in biases if b is not None]   # the kernel adds float32 biases
    kernel = target_kernel("gate_up", k, n, gate_act=a["gate_act"], up_act=a["up_act"],
                           threshold=a.get("threshold", 0.0), dtype=kernel_dtype(weights[0]), sched=sched,
                           bias=bool(bias), fused=a["fused"], gate_first=a.get("gate_first", True))
    pair = (lambda vs: [*vs, *vs]) if a["fused"] else list   # fused: the one matrix (and bias) as gate's and up's
    return (emit_kernel_call(ctx, kx.kernel(kernel), [*kx.args, *pair(args[1:1 + len(weights)]), *pair(bias)],
                             kx.tokens, n, node.dtype), kx.lead, kx.tokens)


def _act(kind: str, threshold: float, x, dtype: str):
    return ACTIVATIONS[kind].relax(x, threshold, dtype)


@lowering("gated_mlp")
def _gated_mlp(ctx, node, args):
    a = node.attrs
    x_node = node.inputs[0]
    n_weights = 3 if a["fused"] else 4
    biases = args[n_weights:] if a.get("bias") else [None, None]  # fused: [b_gate_up]
    w_down_node, w_down = node.inputs[n_weights - 1], args[n_weights - 1]
    flat = gate_up_call(ctx, node, args, biases)
    if flat is not None:
        hidden = flat[0]
    else:   # the gate and up linears and Relax activations (CUDA; gate and up in two layouts)
        if a["fused"]:
            both = ctx.bb.emit(linear_call(ctx, x_node.type, args[0], node.inputs[1], args[1], biases[0]))
            n = node.inputs[1].shape[0] // 2
            last = x_node.type.rank - 1
            first = R.strided_slice(both, axes=[last], begin=[0], end=[n])
            second = R.strided_slice(both, axes=[last], begin=[n], end=[2 * n])
            gate, up = (first, second) if a["gate_first"] else (second, first)
        else:
            gate = linear_call(ctx, x_node.type, args[0], node.inputs[1], args[1], biases[0])
            up = linear_call(ctx, x_node.type, args[0], node.inputs[2], args[2], biases[1])
        hidden = ctx.bb.emit(R.multiply(_act(a["gate_act"], a.get("threshold", 0.0), gate, node.dtype),
                                         _act(a["up_act"], 0.0, up, node.dtype)))
    if a.get("hidden_rms_eps") is not None:   # h / sqrt(mean(h²) + eps): BitNet's ffn_sub_norm (weight in Wd)
        mean_square = R.mean(R.multiply(hidden, hidden), axis=[-1], keepdims=True)
        eps = relax.const(float(a["hidden_rms_eps"]), TVM_DTYPES[node.dtype])
        hidden = ctx.bb.emit(R.multiply(hidden, R.rsqrt(R.add(mean_square, eps))))
    hidden_type = TensorType((*x_node.shape[:-1], w_down_node.shape[1]), node.dtype)
    return with_residual(ctx, node, lambda residual: linear_call(
        ctx, hidden_type, hidden, w_down_node, w_down, flat=flat and (hidden, *flat[1:]), residual=residual))


@lowering("sparse_gated_mlp")
def _sparse_gated_mlp(ctx, node, args):
    from .kernels import family_of
    from .kernels import kernel as target_kernel

    variant = variant_of(node.attrs)
    sched = schedule_for(ctx.target)
    family = family_of(sched)
    if family not in variant.kernels:
        raise LoweringError(f"sparse_gated_mlp{{mode={variant.name!r}}} at {node.loc or 'unknown location'} has no "
                            f"{family} kernel (it has: {', '.join(variant.kernels) or 'none'}); pick another target "
                            "or mode")
    if node.attrs.get("hidden_rms_eps") is not None and family not in variant.hidden_norm_families:
        raise LoweringError(f"sparse_gated_mlp{{mode={variant.name!r}}} at {node.loc or 'unknown location'} normalises "
                            f"its hidden vector (a hidden RMS norm), which its {family} kernel does not apply (it "
                            f"does on: {', '.join(variant.hidden_norm_families) or 'none'}); pick another target or "
                            "mode='dense'")
    if variant.kernels[family] in COMPOSITE_KERNELS:
        return COMPOSITE_KERNELS[variant.kernels[family]](ctx, node, args, sched,
                                                          variant.kernel_options(dict(node.attrs)))
    x_node, w_gate = node.inputs[0], node.inputs[1]
    n_ff, d = sizes(node.attrs, w_gate.shape)
    d_out = node.inputs[3].shape[1]
    kx = kernel_x(ctx, x_node, args[0])
    kernel = target_kernel(variant.kernels[family], d, n_ff, dtype=kernel_dtype(w_gate), sched=sched,
                           **down_layout(node), **variant.kernel_options(dict(node.attrs)))
    out = emit_kernel_call(ctx, kx.kernel(kernel), [*kx.args, *args[1:]], kx.tokens, d_out, node.dtype)
    return R.reshape(out, [*kx.lead, d_out])


def down_layout(node) -> dict:
    """The kernel argument for a down projection stored in a layout of its own (q8_0 rows beside a GGUF's 4-bit gate
    / up, passes/quantize.py; only variants with `own_down_layout` get one): {} where it is the gate's."""
    gate, down = kernel_dtype(node.inputs[1]), kernel_dtype(node.inputs[3])
    return {} if down == gate else {"down_dtype": down}


@lowering("routed_moe")
def _routed_moe(ctx, node, args):
    from .kernels import FAMILIES
    from .kernels import kernel as target_kernel
    from .kernels.routed_moe import absent_biases

    a = node.attrs
    x_node, w_gate = node.inputs[0], node.inputs[1]
    experts, d_out, k = a["experts"], node.shape[-1], node.inputs[4].shape[-1]
    d, n_ff = expert_sizes(a, w_gate.shape)
    sched = schedule_for(ctx.target)
    x2d, lead, tokens = flatten_tokens(ctx, x_node.type, args[0])
    route_w = ctx.bb.emit(R.astype(R.reshape(args[4], [tokens, k]), "float32"))
    route_i = ctx.bb.emit(R.astype(R.reshape(args[5], [tokens, k]), "int64"))
    if a["mode"] == "input":   # input-sparse experts: the CPU family's routed-input kernel (ir/moe.py's ROUTED_MODES)
        if "routed-input" not in FAMILIES[type(sched).__name__]:
            raise LoweringError(f"routed_moe at {node.loc or 'unknown location'}: input-sparse experts need a routed "
                                f"kernel that takes them, which {ctx.target.name}'s kernel family lacks; compile the "
                                "model for this target from its source (threshold mode then gives its routed experts "
                                "per-neuron cuts) or pick a CPU target")
        if down_layout(node):   # passes/quantize.py stores the three stacks in one layout for these experts
            raise LoweringError(f"routed_moe at {node.loc or 'unknown location'}: input-sparse experts read their "
                                "gate, up and down stacks in one layout; store them alike (quantize all three)")
        kernel = target_kernel("routed-input", d, n_ff, experts, gate_act=a["gate_act"], up_act=a["up_act"],
                               criterion=a.get("criterion", "product"), dtype=kernel_dtype(w_gate), sched=sched)
        cuts = [ctx.bb.emit(R.astype(c, "float32")) for c in args[6:8]]
        out = emit_kernel_call(ctx, kernel, [x2d, *args[1:4], route_w, route_i, *cuts], tokens, d_out, node.dtype)
        return R.reshape(out, [*lead, d_out])
    options = {"gate_act": a["gate_act"], "up_act": a["up_act"], "threshold": a["threshold"],
               "dtype": kernel_dtype(w_gate), **down_layout(node)}
    thresholded = a["mode"] == "threshold"
    thresholds = [ctx.bb.emit(R.astype(args[6], "float32"))] if thresholded else []
    biases = [ctx.bb.emit(R.astype(b, "float32")) for b in args[6:9]] if a.get("bias") else []
    down_rows = a.get("down_rows", "neurons")
    if thresholded and not routed_kernel_takes("threshold", ctx.target.kernel_family):
        raise LoweringError(f"routed_moe at {node.loc or 'unknown location'}: experts with thresholds need a routed "
                            f"kernel that takes them, which {ctx.target.name}'s kernel family lacks; compile the model "
                            "for this target from its source (threshold mode then leaves its routed experts lossless) "
                            "or pick a CPU target")
    if "routed" in FAMILIES[type(sched).__name__]:  # one parameter list: an unbiased call passes empty biases
        kernel = target_kernel("routed", d, n_ff, experts, exact=a["mode"] == "exact", thresholds=thresholded,
                               sched=sched, **options, bias=bool(biases), down_rows=down_rows)
        given = biases or [relax.const(b) for b in absent_biases(d)]
        out = emit_kernel_call(ctx, kernel, [x2d, *args[1:4], route_w, route_i, *given, *thresholds], tokens, d_out,
                               node.dtype)
        return R.reshape(out, [*lead, d_out])
    if "routed-slots" in FAMILIES[type(sched).__name__] and not biases:
        return R.reshape(_slot_routed(ctx, node, x2d, args, route_w, route_i, tokens, k, sched,
                                      {**options, "down_rows": down_rows}, thresholds), [*lead, d_out])
    if down_rows != "neurons":  # passes/quantize.py stores it so only for families in ir/moe.py's DOWN_ROWS
        raise LoweringError(f"routed_moe at {node.loc or 'unknown location'}: its down stack by {down_rows} needs "
                            f"a routed kernel, which {ctx.target.name}'s kernel family lacks for these experts; "
                            "let the quantize pass store the down stack a neuron per row for this target")
    # no routed kernel for this family: every expert on every token, weighted (the all-experts form)
    dense = None if biases else target_kernel("dense", d, n_ff, sched=sched, **options)
    out = None
    for e in range(experts):
        weights = [ctx.bb.emit(R.strided_slice(w, axes=[0], begin=[e * n_ff], end=[(e + 1) * n_ff])) for w in args[1:4]]
        parts = [_expert_slice(ctx, b, e, n_ff, k == 2) for k, b in enumerate(biases)]
        y = (_biased_expert(ctx, node, x2d, weights, parts) if biases
             else emit_kernel_call(ctx, dense, [x2d, *weights], tokens, d_out, "f32"))
        mask = R.astype(R.equal(route_i, relax.const(e, "int64")), "float32")
        term = ctx.bb.emit(R.multiply(y, R.sum(R.multiply(route_w, mask), axis=[1], keepdims=True)))
        out = term if out is None else ctx.bb.emit(R.add(out, term))
    out = out if node.dtype == "f32" else ctx.bb.emit(R.astype(out, "float16" if node.dtype == "f16" else "float32"))
    return R.reshape(out, [*lead, d_out])


def _slot_routed(ctx, node, x2d, args, route_w, route_i, tokens, k: int, sched, options: dict, thresholds: list):
    """The routed experts through the per-slot kernel (`kernels/cuda_routed.py`): each token's x repeated for its k
    slots, each slot's expert output, summed by the routing weights: [tokens, d_out] in the node's dtype. Threshold
    experts (`thresholds`: [the [2, E·n] cuts]) get the slot table [slots, 1 + 2n]: each slot's expert id, then its
    expert's neurons' gate cuts and cuts on h, over the slot's |routing weight| (ir/moe.py's |a|·|r| > t)."""
    from .kernels import kernel as target_kernel

    a, w_gate = node.attrs, node.inputs[1]
    experts, d, d_out = a["experts"], w_gate.shape[1], node.shape[-1]
    n_ff = w_gate.shape[0] // experts
    kernel = target_kernel("routed-slots", d, n_ff, experts, exact=a["mode"] == "exact",
                           thresholds=bool(thresholds), sched=sched, **options)
    slots = tokens * k
    x_slots = ctx.bb.emit(R.reshape(R.repeat(x2d, k, axis=0), [slots, d]))
    expert = ctx.bb.emit(R.reshape(route_i, [slots]))
    if thresholds:   # exact in float32: expert ids are far below 2^24
        # |a|·|r| > t as |a| > t / |r|: the slot's routing weight folded into its row of thresholds
        cuts = R.take(R.reshape(thresholds[0], [2, experts, n_ff]), expert, axis=1)   # [2, slots, n]
        slot_thresholds = R.divide(R.reshape(R.permute_dims(cuts, [1, 0, 2]), [slots, 2 * n_ff]),
                                   R.abs(R.reshape(route_w, [slots, 1])))
        expert = ctx.bb.emit(R.concat([R.reshape(R.astype(expert, "float32"), [slots, 1]), slot_thresholds], axis=1))
    y = emit_kernel_call(ctx, kernel, [x_slots, *args[1:4], expert], slots, d_out, "f32")
    weighted = R.multiply(R.reshape(y, [tokens, k, d_out]), R.reshape(route_w, [tokens, k, 1]))
    out = ctx.bb.emit(R.sum(weighted, axis=[1]))
    return out if node.dtype == "f32" else ctx.bb.emit(R.astype(out, TVM_DTYPES[node.dtype]))


def _expert_slice(ctx, bias, e: int, n_ff: int, per_expert: bool):
    """Expert e's part of a stacked bias: rows e·n .. (e+1)·n of b_gate / b_up, row e of b_down [E, d_out]."""
    rows = (e, e + 1) if per_expert else (e * n_ff, (e + 1) * n_ff)
    part = ctx.bb.emit(R.strided_slice(bias, axes=[0], begin=[rows[0]], end=[rows[1]]))
    return ctx.bb.emit(R.reshape(part, [-1]))


def _biased_expert(ctx, node, x2d, weights, biases):
    """One biased expert on every token in Relax ops (a family without a routed kernel): act_gate(x·Wgᵀ + bg) ⊙
    act_up(x·Wuᵀ + bu), times Wd (stored transposed, one neuron per row), + bd, in float32."""
    if any(w.attrs.get("layout", "dense") != "dense" for w in node.inputs[1:4]):
        raise LoweringError(f"routed_moe at {node.loc or 'unknown location'}: biased experts with quantized weights "
                            "need the routed kernel, which this target's family lacks; keep the experts' weights "
                            "unquantized or pick a CPU target")
    a = node.attrs
    w_gate, w_up, w_down_t = (ctx.bb.emit(R.astype(w, "float32")) for w in weights)
    x = ctx.bb.emit(R.astype(x2d, "float32"))
    gate = ctx.bb.emit(R.add(R.matmul(x, R.permute_dims(w_gate, [1, 0])), biases[0]))
    up = ctx.bb.emit(R.add(R.matmul(x, R.permute_dims(w_up, [1, 0])), biases[1]))
    hidden = ctx.bb.emit(R.multiply(_act(a["gate_act"], a["threshold"], gate, "f32"),
                                    _act(a["up_act"], 0.0, up, "f32")))
    return ctx.bb.emit(R.add(R.matmul(hidden, w_down_t), biases[2]))
