"""References for the integer row axpy (codegen/kernels/quant_axpy8.py): the down projection with the kernel's
rounding of its coefficients, and the rounding's bound (shared by tests/test_kernels_axpy8.py and the input-sparse
kernel's tests)."""

import numpy as np

from .kernel_cases import act


def codes_and_scales(blob, dtype, d):
    """(q [n, G*32] centred codes as float64, scale [n, G] f32, offset [n, G] f32 or None) of a blob: w = s * q
    (+ o + 8 s for q4_1, whose q is the nibble - 8 as the kernel centres it)."""
    from actsparse.ir.quant import GROUP, LAYOUTS, to_gguf_blocks

    lay = LAYOUTS[dtype]
    n, G = blob.shape[0], lay.groups(d)
    blocks = to_gguf_blocks(blob, dtype, d).reshape(n, G, lay.block_bytes)
    header = np.ascontiguousarray(blocks[..., :lay.header_bytes]).view(np.float16).astype(np.float32)
    raw = blocks[..., lay.header_bytes:]
    if lay.bits == 8:
        q = raw.view(np.int8).astype(np.float64)
    else:
        q = np.concatenate([raw & 15, raw >> 4], -1).astype(np.float64) - 8   # q4_1: centred, offset o + 8 s
    return q.reshape(n, G * GROUP), header[..., 0], header[..., 1] if lay.offset else None


def down_rounded(h, blob, dtype, d, steps, levels=127):
    """(out [d], slack [d]) for one token: Σ over steps of t * Σ_j a_j q_j (+ Σ_j h_j o_j), in float64, with the
    kernel's float32 rounding of the coefficients (quant_axpy8.py); `steps` lists each step's weight rows; `levels`
    the largest |a_j| (127: int8; 32767: the int16 q8_0 axpy, quant_axpy16.py). The slack window is absolute: at
    32767 levels h's float32 noise can move a_j by more than it, but one step of a_j is then 1/32767 of the largest
    term, inside the fp32 tolerance."""
    q, s, o = codes_and_scales(blob, dtype, d)
    G = s.shape[1]
    out, slack = np.zeros(G * 32), np.zeros(G * 32)
    for rows in steps:
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            continue
        c = h[rows].astype(np.float32)[:, None] * s[rows]                        # [r, G] float32
        mx = np.abs(c).max(0)
        inv = np.divide(np.float32(levels), mx, out=np.zeros_like(mx), where=mx > 0).astype(np.float32)
        v = (c * inv).astype(np.float32)
        a = np.rint(v).astype(np.float64)
        t = (mx / np.float32(levels)).astype(np.float64)
        qr = q[rows].reshape(len(rows), G, 32)
        out += (t[:, None] * np.einsum("rg,rgc->gc", a, qr)).reshape(-1)
        near = np.abs(np.abs(v - np.trunc(v)) - 0.5) < 2e-3                    # may round either way in the kernel
        slack += (t[:, None] * np.einsum("rg,rgc->gc", near.astype(np.float64), np.abs(qr))).reshape(-1)
        if o is not None:
            out += np.repeat(h[rows].astype(np.float64) @ (o[rows] + 8 * s[rows]).astype(np.float64), 32)
    return out[:d], slack[:d]


def down_bound(h_abs, blob, dtype, d, levels=127):
    """[M, d]: the rounding's bound, (max_j |h_j s_{j,g}| / (2 levels)) * Σ_j |q_{j,c}|, for tokens' |h| [M, n]
    (levels: the largest |a_j|, 127 or 32767)."""
    q, s, _ = codes_and_scales(blob, dtype, d)
    mx = (h_abs[:, :, None] * np.abs(s)[None].astype(np.float64)).max(1)      # [M, G]
    return (np.repeat(mx / (2 * levels), 32, axis=1) * np.abs(q).sum(0))[:, :d] * 1.001


def h_of(kind, call, dtype, d, x, acts):
    """float64 h [M, n_ff] of the reference (x as given), with the indexed kernel's per-token mask."""
    from actsparse.ir.quant import dequantize

    gate_act, up_act, threshold = acts[:3]
    wg, wu = (dequantize(b, dtype, d).astype(np.float64) for b in call.args[1:3])
    h = act(gate_act, x.astype(np.float64) @ wg.T, threshold) * act(up_act, x.astype(np.float64) @ wu.T)
    if kind == "indexed":
        idx, count = call.args[4], call.args[5]
        mask = np.zeros_like(h)
        for m in range(h.shape[0]):
            mask[m, idx[m, :count[m]]] = 1
        h = h * mask
    return h
