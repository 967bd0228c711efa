"""When an input-sparse block does not pay: threshold mode's rule for keeping a calibrated block dense.

Two reasons, both decided before the block is rewritten (sparsify_threshold.py):

- *Time* (`dense_pays`): the input-sparse kernel reads (1 - s) of the block's bytes at the target's
  `input_byte_cost` times dense's time per byte, plus `input_fixed_bytes` of dense's time per call; a block whose
  predicted time is above `PAYING_TIME` of dense's stays dense.
- *A second rounding at 4 bits* (`file_blocks_reason`): the input-sparse kernels read gate and up as columns and
  down as rows of neurons, layouts a GGUF's blocks (groups along d) are not in, so under 4-bit storage a file's
  quantized matrices (kept as stored in dense mode: 4-bit, or Q5_0 / Q8_0 held at 8 bits) would be dequantized and
  rounded at 4 bits again, along the other axis. That costs far more than the file's own rounding: SmolLM2-135M's
  Q4_1 file in threshold mode at 0.5, perplexity +84% over dense int4 (BENCHMARKS.md session 31), +82% again in
  session 44, where it decoded at 1.21x dense int4's tokens/s; Gemma 3 270M's Q4_K_M (gate / up Q5_0, its rows of
  640 fit no K-quant) +31% at 22% effective sparsity (session 44). Such a block stays dense (three linears on the
  file's blocks) and is not calibrated; the way to threshold mode at 4 bits is float weights, or `quantize="int8"`
  (8-bit re-laid copies). (A tensor the file stores in 5-6 bit K-quants is held at 8 bits in every copy, quantize.py's
  `wide`: not rounded to 4 bits, not in `file_layouts`.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..ir import Graph, Node
from ..ir.quant import bytes_per_weight

# the bar: a block goes input-sparse where its predicted time is at most this share of dense's. The fit is good to
# about 10% (threshold_step's medians, run to run), and under quantized storage a sparse block's re-laid rows are
# rounded a second time: SmolLM2's Q4_1 file at 0.5 with a bar of 1, the blocks predicted at 0.92-1.0 went
# input-sparse, for +13.6% perplexity at 1.01x dense's tokens/s (BENCHMARKS.md, session 42)
PAYING_TIME = 0.9

FILE_BLOCKS_REASON = ("kept dense: its weights are the file's quantized blocks, which the input-sparse kernel's 4-bit "
                      "layouts would round again (+84% perplexity on SmolLM2-135M's Q4_1 file at 0.5); threshold "
                      "mode at 4 bits pays from float weights, or build with quantize='int8'")


def dense_pays(effective: float, cost: float, fixed: float = 0.0, wider: float = 1.0) -> str:
    """Why the dense kernel is at least as fast as the input-sparse one for a block of `effective` sparsity ("" when
    it is not): reading (1 - s) of the bytes at `cost` times dense's time per byte, plus `fixed` of dense's time per
    call; `wider`: the sparse copies' bytes over those dense reads (> 1 where dense keeps a file's 4-bit blocks and
    the sparse copies are 8-bit)."""
    if (1.0 - effective) * cost * wider + fixed <= PAYING_TIME:
        return ""
    return (f"kept dense by cost: {effective:.0%} effective sparsity reads {1 - effective:.0%} of the bytes"
            + (f" of copies {wider:.2g}x the size of the file's blocks dense reads" if wider != 1.0 else "")
            + f" at {cost:g}x dense's time per byte" + (f", plus a call's fixed cost of {fixed:.0%} of dense's time at "
                                                        "this block's size" if fixed else "")
            + f" (the target's input_byte_cost, input_fixed_bytes): not {1 - PAYING_TIME:.0%} faster than dense")


def block_bytes(node: Node, graph: Graph, storage: str, file_layouts: Mapping[str, str] | None = None) -> float:
    """Bytes of a gated block's matrices stored as `storage` (one copy of a weight two inputs share: a unit up); a
    matrix in `file_layouts` ({weight name: layout}, a source file's blocks the dense build keeps) at its layout's."""
    matrices = {id(w): w for w in node.inputs[1:] if w.op == "weight" and w.type.rank == 2}
    kept = file_layouts or {}
    return max(sum(float(np.prod(w.shape)) * bytes_per_weight(kept.get(w.attrs["name"].removesuffix(".t"), storage))
                   for w in matrices.values()), 1.0)


def file_blocks_reason(node: Node, storage: str, file_layouts: Mapping[str, str]) -> str:
    """FILE_BLOCKS_REASON where one of `node`'s matrices (input mode re-lays all three) is a source file's quantized
    blocks (`file_layouts`: {weight name: layout} of those dense mode keeps, compile() gives them) and the
    input-sparse copies would be stored at 4 bits; else ""."""
    names = {w.attrs["name"].removesuffix(".t") for w in node.inputs[1:] if w.op == "weight"}
    return FILE_BLOCKS_REASON if storage == "int4" and names & set(file_layouts) else ""
