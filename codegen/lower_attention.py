"""Lowering of `attention` (passes/fuse_attention.py): one call of the CPU attention kernel per layer.

    attention(q, K, V, mask){...}  -> call_tir(attention kernel, [q, K', V', mask as float32 [B, Hm, S, kv]])

K' and V' are the cache tensors themselves when K and V are their filled prefix `slice(cache){axis 2, 0:kv}`:
the kernel reads kv slots from the mask's shape, so the prefix is never copied. Where the kernel does not apply
— a family without it (CUDA), a float16 or float64 model — the op is lowered as the Relax ops it stands for
(matmuls per KV head over its query heads, softmax): correct everywhere, no copy of K or V per query head.
"""

from __future__ import annotations

from tvm import relax

from ..ir.attention import ATTENTION_ATTRS
from ..ir.dims import mul
from ..ir.ops import accumulation_dtype
from .context import TVM_DTYPES, lowering
from .schedules import schedule_for

R = relax.op


@lowering("attention")
def _attention(ctx, node, args):
    from .kernels import FAMILIES
    from .kernels import kernel as target_kernel

    q_node, k_node, _, mask_node = node.inputs
    sched = schedule_for(ctx.target)
    b, heads, seq, head_dim = q_node.shape
    static = all(isinstance(d, int) for d in (b, heads, head_dim))  # the kernel is built per batch and head shape
    if "attention" not in FAMILIES[type(sched).__name__] or node.dtype != "f32" or k_node.dtype != "f32" or not static:
        return _composed(ctx, node, args)
    kv_heads, kv = k_node.shape[1], mask_node.shape[-1]
    a = node.attrs
    mask_heads = heads if len(mask_node.shape) == 4 and mask_node.shape[1] == heads else 1
    mask = args[3] if mask_node.dtype == "f32" else R.astype(args[3], "float32")
    mask = ctx.bb.emit(R.broadcast_to(mask, ctx.shape((b, mask_heads, seq, kv))))
    kernel = target_kernel("attention", b, heads, kv_heads, head_dim, mask_heads, scale=float(a["scale"]),
                           softcap=float(a["softcap"]), mask_kind=a["mask_kind"], fill=_fill(a), sched=sched)
    return relax.call_tir(ctx.kernel(kernel), [args[0], args[1], args[2], mask],
                          relax.TensorType(ctx.shape(node.shape), TVM_DTYPES["f32"]))


def _fill(attrs) -> float:
    return float(attrs.get("fill", ATTENTION_ATTRS["fill"]))  # an 'add' mask's op carries no fill


def _as(x, ir_dtype: str, dtype: str):
    """x, whose IR dtype is `ir_dtype`, in `dtype` (a cast only where it is another: float32 graphs keep their ops)."""
    return x if TVM_DTYPES[ir_dtype] == dtype else R.astype(x, dtype)


def _composed(ctx, node, args):
    """The Relax ops `attention` stands for (ir/attention.py). Grouped-query heads: each KV head's G query heads
    are one [G*seq, head_dim] matrix against that head's keys and values (q and the probabilities reshaped, which
    are views), so K and V are never copied once per query head: at Mistral-7B's 32 query and 8 KV heads the
    repeated copies were 4x the slots' bytes, written and read again (BENCHMARKS.md, session 13)."""
    q, k, v, mask = args
    a = node.attrs
    kv = ctx.dim(node.inputs[3].shape[-1])
    # in bounds (kv <= the cache's slots, the runtime checks room): a shape of kv, not min(kv, slots), which the
    # mask's kv would not match (the scores' shape, then softmax's, would be unknown and fail to legalize)
    k, v = (R.strided_slice(x, axes=[2], begin=[0], end=[kv], assume_inbound=True) for x in (k, v))
    b, heads, seq, head_dim = node.inputs[0].shape
    kv_heads = node.inputs[1].shape[1]
    group = heads // kv_heads if isinstance(heads, int) and isinstance(kv_heads, int) else 1
    grouped = ctx.shape((b, kv_heads, mul(seq, group), head_dim))
    if group > 1:  # [B, Hk*G, seq, D] -> [B, Hk, G*seq, D]: query head h uses KV head h // G, as repeat did
        q = R.reshape(q, grouped)
    # scores, softmax and the weighted sum accumulate in the op's summing dtype (the op table's `accumulate`: float32
    # for float16, as torch's attention and the reference): a float16 sum over a long context stalls; the
    # probabilities go back to q's dtype
    wide = accumulation_dtype("attention", node.dtype)
    dtype = TVM_DTYPES[wide]
    s = R.matmul(q, R.permute_dims(k, [0, 1, 3, 2]), out_dtype=dtype)
    if group > 1:
        s = R.reshape(s, ctx.shape((b, heads, seq, node.inputs[3].shape[-1])))
    s = R.multiply(s, relax.const(a["scale"], dtype))
    if a["softcap"] > 0:
        cap = relax.const(a["softcap"], dtype)
        s = R.multiply(R.tanh(R.divide(s, cap)), cap)
    own = TVM_DTYPES[node.dtype]
    s = R.where(mask, s, relax.const(_fill(a), dtype)) if a["mask_kind"] == "select" \
        else R.add(s, _as(mask, node.inputs[3].dtype, dtype))
    p = _as(R.nn.softmax(s, axis=-1), wide, own)
    if group > 1:
        p = R.reshape(p, ctx.shape((b, kv_heads, mul(seq, group), node.inputs[3].shape[-1])))
    out = _as(R.matmul(p, v, out_dtype=dtype), wide, own)
    return out if group == 1 else R.reshape(out, ctx.shape(node.shape))
