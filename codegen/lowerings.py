"""The lowering table entries: IR op -> Relax expression. Kernel-backed ops (linear, gated MLPs) are in
`lower_kernels.py`; this file holds the ops that map straight onto Relax's own. Activations (relu, silu, gelu,
fatrelu) take their Relax form from the activation table (ir/activations.py)."""

from __future__ import annotations

from functools import partial

from tvm import relax

from ..ir.activations import ACTIVATIONS
from ..ir.ops import accumulation_dtype, gelu_activation
from .context import TVM_DTYPES, const, lowering

R = relax.op

UNARY = {"neg": R.negative, "exp": R.exp, "log": R.log, "sqrt": R.sqrt, "rsqrt": R.rsqrt, "abs": R.abs,
         "tanh": R.tanh, "sigmoid": R.sigmoid, "erf": R.erf, "sin": R.sin, "cos": R.cos, "logical_not": R.logical_not,
         "isnan": R.isnan, "isinf": R.isinf, "floor": R.floor, "trunc": R.trunc}
BINARY = {"add": R.add, "sub": R.subtract, "mul": R.multiply, "div": R.divide, "pow": R.power,
          "maximum": R.maximum, "minimum": R.minimum, "gt": R.greater, "ge": R.greater_equal, "lt": R.less,
          "le": R.less_equal, "eq": R.equal, "ne": R.not_equal, "logical_and": R.logical_and,
          "logical_or": R.logical_or, "logical_xor": R.logical_xor, "bitwise_and": R.bitwise_and,
          "bitwise_or": R.bitwise_or, "bitwise_xor": R.bitwise_xor}


@lowering(*UNARY)
def _unary(ctx, node, args):
    return UNARY[node.op](args[0])


@lowering(*BINARY)
def _binary(ctx, node, args):
    a, b = _promoted(node, args)
    if _squared(node) is not None:
        return R.multiply(a, a)  # x ** 2 (RMSNorm's): one multiply, where power calls libm's pow per element
    return BINARY[node.op](a, b)


def _promoted(node, args):
    """Relax wants equal dtypes; the IR promotes int to float as torch does."""
    types = [i.dtype for i in node.inputs]
    target = node.dtype if node.dtype != "bool" else next((t for t in types if t.startswith("f")), types[0])
    logical = ("logical_and", "logical_or", "logical_xor")
    return [R.astype(a, TVM_DTYPES[target]) if t != target and node.op not in logical else a
            for a, t in zip(args, types)]


@lowering("where")
def _where(ctx, node, args):
    cond, a, b = args
    dtype = TVM_DTYPES[node.dtype]
    a, b = [x if i.dtype == node.dtype else R.astype(x, dtype) for x, i in zip((a, b), node.inputs[1:])]
    return R.where(cond, a, b)


@lowering("relu", "silu", "fatrelu", "gelu", "relu2", "relu6")
def _activation(ctx, node, args):
    name = gelu_activation(node.attrs.get("approximate", "none")) if node.op == "gelu" else node.op
    return ACTIVATIONS[name].relax(args[0], node.attrs.get("threshold", 0.0), node.dtype)


@lowering("reciprocal")
def _reciprocal(ctx, node, args):
    return R.divide(const(1.0, node.dtype), args[0])


@lowering("cast")
def _cast(ctx, node, args):
    return R.astype(args[0], TVM_DTYPES[node.attrs["dtype"]])


@lowering("constant")
def _constant(ctx, node, args):
    return const(node.attrs["value"], node.dtype)


@lowering("arange")
def _arange(ctx, node, args):
    a = node.attrs
    start, end, step, dtype = a.get("start", 0), ctx.dim(a["end"]), a.get("step", 1), TVM_DTYPES[node.dtype]
    if isinstance(start, int):
        return R.arange(start, end, step, dtype)
    # a symbolic start (positions after a cache: arange(kv-seq, kv)) as a slice of arange(0, end): Relax's arange
    # takes it as a value argument, which FuseTIR then fails to fuse with its shape variables ("VarRemapGet")
    if step == 1:
        return R.strided_slice(R.arange(0, end, 1, dtype), axes=[0], begin=[ctx.dim(start)], end=[end],
                               assume_inbound=True)
    # another step (XLNet's relative positions, arange(seq, -seq, -1)): start + step * arange(0, length)
    first = R.astype(R.shape_to_tensor(relax.ShapeExpr([ctx.dim(start)])), dtype)
    steps = R.arange(0, ctx.dim(node.shape[0]), 1, dtype)
    return R.add(R.multiply(steps, relax.const(step, dtype)), first)


@lowering("full")
def _full(ctx, node, args):
    return R.full(ctx.shape(node.attrs["shape"]), const(node.attrs["value"], node.dtype), TVM_DTYPES[node.dtype])


def accumulated(node, x, fn):
    """fn(x) computed in the dtype node's op runs its sums in (the op table's `accumulate`), returned in its dtype."""
    wide = accumulation_dtype(node.op, node.dtype)
    if wide == node.dtype:
        return fn(x)
    return R.astype(fn(R.astype(x, TVM_DTYPES[wide])), TVM_DTYPES[node.dtype])


@lowering("matmul")
def _matmul(ctx, node, args):
    wide = accumulation_dtype(node.op, node.dtype)
    if wide == node.dtype or node.inputs[0].dtype != node.dtype:
        return R.matmul(*args)
    return R.astype(R.matmul(*args, out_dtype=TVM_DTYPES[wide]), TVM_DTYPES[node.dtype])  # operands stay float16


@lowering("embedding")
def _embedding(ctx, node, args):
    w, ids = args
    table = node.inputs[0]
    layout = table.attrs.get("layout", "dense") if table.op == "weight" else "dense"
    if layout != "dense":  # a quantized table (passes/quantize.py): the looked-up rows dequantized, nothing else read
        from .kernels.embedding_rows import dequantized_rows

        return ctx.bb.call_te(dequantized_rows, w, ids, layout, *table.shape)
    # "clip", not TVM's default "fast" (no bounds check: an id past the table reads outside it). The compiled
    # module rejects such ids before the call (ir/limits.py); clipping is the backstop for computed indices.
    return R.take(w, ids, axis=0, mode="clip")


# the PrimFuncs lowerings make from TE (name hints) that FuseOps may fuse with their neighbours, as Relax's own ops;
# codegen/build.py marks every other PrimFunc present before legalization (our kernels) opaque
FUSABLE_TE = ("mean_square",)


def _squared(node):
    """x where `node` is x ** 2 (a constant exponent 2), else None."""
    if node.op == "pow" and node.inputs[1].op == "constant" and node.inputs[1].attrs.get("value") == 2:
        return node.inputs[0]
    return None


def _mean_of_squares(t, keepdims: bool):
    """TE: mean(t ** 2) over the last axis, the square inside the sum (one stage: Relax's FuseOps does not fuse an
    elementwise producer into a reduction, so RMSNorm's x * x was a call of its own in every layer and step)."""
    from tvm import te, tirx

    k = te.reduce_axis((0, t.shape[-1]), "k")
    total = te.compute((*t.shape[:-1], 1), lambda *i: te.sum(t[(*i[:-1], k)] * t[(*i[:-1], k)], axis=k), name="sq")
    n = tirx.Cast(t.dtype, t.shape[-1])
    if keepdims:
        return te.compute(total.shape, lambda *i: total(*i) / n, name="mean_sq")
    return te.compute(total.shape[:-1], lambda *i: total[(*i, 0)] / n, name="mean_sq")


@lowering("sum", "mean", "max")
def _reduce(ctx, node, args):
    x = node.inputs[0]
    base = _squared(x)
    if (node.op == "mean" and base is not None and ctx.users.get(id(x)) == 1 and base.dtype == node.dtype
            and tuple(a % x.type.rank for a in node.attrs["axes"]) == (x.type.rank - 1,)
            and accumulation_dtype(node.op, node.dtype) == node.dtype
            and all(isinstance(d, int) for d in ctx.shape(x.shape))):   # RMSNorm's mean(x ** 2): one kernel
        # (static shapes only, as in a decode step: FuseTIR fails to match a TE function's symbolic buffers)
        return ctx.bb.call_te(_mean_of_squares, ctx.values[id(base)], node.attrs.get("keepdim", False),
                              primfunc_name_hint="mean_square")
    fn = {"sum": R.sum, "mean": R.mean, "max": R.max}[node.op]
    reduce = partial(fn, axis=list(node.attrs["axes"]), keepdims=node.attrs.get("keepdim", False))
    return accumulated(node, args[0], reduce)  # max does not accumulate: in its own dtype


@lowering("softmax")
def _softmax(ctx, node, args):
    return accumulated(node, args[0], lambda x: R.nn.softmax(x, axis=node.attrs.get("axis", -1)))


@lowering("layer_norm")
def _layer_norm(ctx, node, args):
    return R.nn.layer_norm(*args, axes=[-1], epsilon=node.attrs.get("eps", 1e-5))


@lowering("reshape")
def _reshape(ctx, node, args):
    return R.reshape(args[0], ctx.shape(node.shape))


@lowering("permute")
def _permute(ctx, node, args):
    return R.permute_dims(args[0], list(node.attrs["axes"]))


@lowering("expand")
def _expand(ctx, node, args):
    return R.broadcast_to(args[0], ctx.shape(node.shape))


@lowering("slice")
def _slice(ctx, node, args):
    a = node.attrs
    rank = node.type.rank
    axis = a["axis"] + rank if a["axis"] < 0 else a["axis"]
    end = a.get("end")
    in_dim = node.inputs[0].shape[axis]
    clamp = end is None or (isinstance(in_dim, int) and isinstance(end, int) and end > in_dim)
    # in bounds by construction (the frontend's guards prove e.g. seq <= table size); without it Relax infers
    # min(seq, dim) and then loses the shape at the next broadcast
    begin, end = ctx.dim(a.get("start", 0)), ctx.dim(in_dim if clamp else end)
    return R.strided_slice(args[0], axes=[axis], begin=[begin], end=[end], strides=[a.get("step", 1)],
                           assume_inbound=True)


@lowering("concat")
def _concat(ctx, node, args):
    # empty operands are dropped by canonicalize (concat-empty-operand): Relax would fold one into an empty constant,
    # which a saved artifact cannot hold (the failure would surface only at save)
    axis = node.attrs["axis"]
    if any(x.shape[axis] == 0 for x in node.inputs):
        raise ValueError(f"internal: a concat ({node.loc or 'no location'}) has an empty operand at codegen; the "
                         "canonicalize pass drops them (passes/canonicalize.py EMPTY_RULES): run it first")
    return R.concat(args, axis=axis)


@lowering("index_select")
def _index_select(ctx, node, args):
    # "wrap": negative indices count from the end (as numpy's take, the op's reference; static windows such as
    # x[:, -1:] use them), and nothing reads outside the tensor (see _embedding)
    return R.take(args[0], args[1], axis=node.attrs["axis"], mode="wrap")


@lowering("topk")
def _topk(ctx, node, args):
    a = node.attrs
    ret = "values" if a.get("output", "values") == "values" else "indices"
    return R.topk(args[0], a["k"], a.get("axis", -1), ret_type=ret, largest=a.get("largest", True), dtype="int64")


@lowering("sort")
def _sort(ctx, node, args):
    a = node.attrs
    if a.get("output", "values") == "values":
        return R.sort(args[0], axis=a.get("axis", -1), descending=a.get("descending", False))
    return R.argsort(args[0], axis=a.get("axis", -1), descending=a.get("descending", False), dtype="int64")


# Giles, "Approximating the erfinv function" (GPU Computing Gems, 2011), single precision: two polynomials in
# w = -log(1 - x²), central (w < 5) and tail; a few ulp in float32. erfinv(±1) = ±inf, |x| > 1 -> NaN (log < 0).
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
                0.00943887047, 1.00167406, 2.83297682)


@lowering("erfinv")
def _erfinv(ctx, node, args):
    x, dtype = args[0], node.dtype

    def horner(coeffs, v):
        p = const(coeffs[0], dtype)
        for c in coeffs[1:]:
            p = R.add(const(c, dtype), R.multiply(p, v))
        return p

    one = const(1.0, dtype)
    w = R.negative(R.log(R.multiply(R.subtract(one, x), R.add(one, x))))
    central = horner(_ERFINV_CENTRAL, R.subtract(w, const(2.5, dtype)))
    tail = horner(_ERFINV_TAIL, R.subtract(R.sqrt(w), const(3.0, dtype)))
    p = R.multiply(R.where(R.less(w, const(5.0, dtype)), central, tail), x)
    return R.where(R.equal(R.abs(x), one), R.multiply(x, const(float("inf"), dtype)), p)


@lowering("triu", "tril")
def _tri(ctx, node, args):
    return (R.triu if node.op == "triu" else R.tril)(args[0], node.attrs.get("diagonal", 0))


@lowering("gather")
def _gather(ctx, node, args):
    return R.gather_elements(args[0], args[1], axis=node.attrs["axis"])


@lowering("scatter")
def _scatter(ctx, node, args):
    x, index, src = args
    if 0 in node.inputs[1].shape:  # nothing written (an empty section of interleaved M-RoPE): TVM's kernel would
        return x  # divide by the zero extent
    src = src if node.inputs[2].shape == node.inputs[1].shape else R.broadcast_to(src, ctx.shape(node.inputs[1].shape))
    return R.scatter_elements(x, index, src, axis=node.attrs["axis"])


@lowering("cumsum")
def _cumsum(ctx, node, args):
    return R.cumsum(args[0], axis=node.attrs["axis"], dtype=TVM_DTYPES[node.dtype])


@lowering("argmax")
def _argmax(ctx, node, args):
    return R.astype(R.argmax(args[0], axis=node.attrs["axis"], keepdims=node.attrs.get("keepdim", False)), "int64")


@lowering("conv1d")
def _conv1d(ctx, node, args):
    a = node.attrs
    if _is_depthwise(node):
        out = _depthwise_conv1d(ctx, node, args[0], args[1])
    elif a.get("groups", 1) > 1:
        out = _grouped_conv1d(ctx, node, args[0], args[1])
    else:
        out = R.nn.conv1d(args[0], args[1], strides=a.get("stride", 1), padding=a.get("padding", 0),
                          dilation=a.get("dilation", 1), groups=a.get("groups", 1))
    return out if len(args) == 2 else R.add(out, R.reshape(args[2], [1, -1, 1]))


def _is_depthwise(node) -> bool:
    """One filter per channel, stride 1: the short causal convolution of Mamba and linear-attention mixers."""
    channels, (out_channels, per_group, _) = node.inputs[0].shape[1], node.inputs[1].shape
    return node.attrs.get("stride", 1) == 1 and per_group == 1 and node.attrs.get("groups", 1) == channels == \
        out_channels


def _grouped_conv1d(ctx, node, x, w):
    """A grouped conv as one batched matmul per group over its K shifted windows (im2col): W [G, O/G, C/G·K] @
    cols [N, G, C/G·K, L], the terms of TOPI's reduction (channel, then tap). TVM's CUDA rules cannot form the
    cross-thread reduction of its grouped conv1d (Zaya's convolutional attention)."""
    a = node.attrs
    (n, _, _), (out_channels, per_group, k) = node.inputs[0].shape, node.inputs[1].shape
    groups, stride, dilation, padding = a["groups"], a.get("stride", 1), a.get("dilation", 1), a.get("padding", 0)
    padded = R.nn.pad(x, [0, 0, 0, 0, padding, padding]) if padding else x
    length = ctx.dim(node.shape[2])
    taps = [R.strided_slice(padded, axes=[2], begin=[j * dilation], end=[j * dilation + (length - 1) * stride + 1],
                            strides=[stride], assume_inbound=True) for j in range(k)]
    cols = R.reshape(R.stack(taps, axis=2), [ctx.dim(n), groups, per_group * k, length])  # [N, C, K, L] by group
    weights = R.reshape(w, [groups, out_channels // groups, per_group * k])
    return R.reshape(R.matmul(weights, cols), [ctx.dim(n), out_channels, length])


def _depthwise_conv1d(ctx, node, x, w):
    """sum_j w[:, 0, j] * x_padded[:, :, j·dilation : j·dilation + L_out], j in order (the order of TOPI's reduction,
    so the same sums): elementwise ops that fuse into one kernel, where TVM's CUDA rules (dlight) fail on the
    grouped conv fused with its consumer (Mamba's conv then SiLU)."""
    padding, dilation = node.attrs.get("padding", 0), node.attrs.get("dilation", 1)
    padded = R.nn.pad(x, [0, 0, 0, 0, padding, padding]) if padding else x
    length, channels = ctx.dim(node.shape[2]), ctx.dim(node.inputs[1].shape[0])
    out = None
    for j in range(node.inputs[1].shape[2]):
        tap = R.strided_slice(padded, axes=[2], begin=[j * dilation], end=[length + j * dilation],
                              assume_inbound=True)
        tap_weight = R.reshape(R.strided_slice(w, axes=[2], begin=[j], end=[j + 1]), [1, channels, 1])
        term = R.multiply(tap, tap_weight)
        out = term if out is None else R.add(out, term)
    return out
