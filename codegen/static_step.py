"""The decode step with every shape static, for targets that capture a step in a CUDA graph (`Target.graph_capture`).

    step_graph(input_ids[1, 1], pos[1], filled[max_seq], k0, v0, ...) -> logits[1, 1, V]   (num_input = 0)

A decoding graph (frontends/kv_cache.py) sizes attention by `kv`, the filled slots, a symbolic dim: each step
reads `cache[:, :, :kv]`, so the shapes, and with them the kernels' launch extents, change per token and TVM's
RewriteCUDAGraph leaves attention out of any captured region. Here `kv` is fixed to `max_seq`: attention spans
every slot, and the slots not yet written are masked by the comparison transformers' mask functions build from
the positions (slot index <= position, a value the kernels read from the `pos` tensor), so the result is the
same; a step then costs attention over max_seq slots instead of kv. The caches are written in place (codegen's
`index_copy`) and read by attention afterwards, so only the logits are returned: a step's outputs no longer
escape from the region that writes them. With `num_input = 0` every parameter counts as fixed, so the runtime
passes the same device buffers each step (runtime/decoder.py copies the token and position into them) and TVM
captures the whole step, the logits projection included, in one graph; only the op producing the returned value
(a reshape's copy) runs outside, into a tensor the VM allocates per call (an in-place write into a runtime-owned
logits buffer, `call_tir_inplace`, failed to build under `use_cuda_graph` in TVM 0.27 last session: "Var res is
not defined"). tests/test_decode_cuda.py asserts this on a build for sm_90.

Only graphs this argument holds for get a `step_graph`: the first three inputs as kv_cache.py names them, every
cache output an `index_copy` into its own input read by the step (K and V: no recurrent state, which is replaced,
not written in place), attention masked by a comparison over the `kv` slots (the mask is built from positions,
not assumed from the slice's length), and `kv` entering only as a slot count: `filled` itself read by nothing and
no size computed from `kv` (the ones-mask and seen-from-shapes export variants, decoder_export.EXPORT_VARIANTS,
derive positions or offsets from it, which max_seq would shift). Others keep only `step` (runtime/decoder.py
falls back to it).
"""

from __future__ import annotations

import re

from ..ir import Graph
from ..ir.graph import topo_order

STEP_GRAPH = "step_graph"  # the static one-token function (runtime/decoder.py calls it when the module has it)
INPUTS = ("input_ids", "pos", "filled")  # frontends/kv_cache.py's inputs before the caches
COMPARISONS = ("le", "lt", "ge", "gt")  # how a mask compares slot indices with positions


def static_step(graph: Graph) -> tuple[Graph, dict[str, int]] | None:
    """(the step's graph: the logits only, {symbolic dim: value} fixing the token count to 1 and the filled
    slots to max_seq), or None where the graph is not a decoding graph this rewrite holds for (module docstring)."""
    names = [n.attrs.get("name") for n in graph.inputs[:3]]
    if names != list(INPUTS) or len(graph.outputs) < 2:
        return None
    seq, kv = graph.inputs[0].shape[1], graph.inputs[2].shape[0]
    if not isinstance(kv, str):
        return None
    caches = set(map(id, graph.inputs[3:]))
    slots = set()
    for out in graph.outputs[1:]:
        if out.op != "index_copy" or id(out.inputs[0]) not in caches:
            return None  # a state the call replaces (recurrent mixers): its output must be returned
        slots.add(out.shape[out.attrs["axis"]])
    if len(slots) != 1 or not _masked_by_position(graph, kv) or not _kv_only_counts_slots(graph, kv):
        return None
    read = set(map(id, topo_order(graph.outputs[:1])))
    if not all(id(out) in read for out in graph.outputs[1:]):
        return None  # a cache written but not read by this step's attention: dropping its output would drop it
    bound = {kv: slots.pop(), **({seq: 1} if isinstance(seq, str) else {})}
    return Graph(graph.inputs, graph.outputs[:1], graph.weights, graph.name), bound


def _masked_by_position(graph: Graph, kv: str) -> bool:
    """Whether some comparison yields a mask over the `kv` slots (its last dim): the one slots past the position
    fail, so attention over max_seq slots equals attention over the filled ones."""
    return any(n.op in COMPARISONS and n.shape and n.shape[-1] == kv for n in graph.nodes)


def _kv_only_counts_slots(graph: Graph, kv: str) -> bool:
    """Whether `kv` is read only as the number of slots: `filled` (whose length it is) has no reader, and no shape
    or attribute is an expression of it (`kv - seq`, a position derived from the filled length)."""
    filled = graph.inputs[2]
    if any(i is filled for n in graph.nodes for i in n.inputs):
        return False

    def dims(value):
        if isinstance(value, (tuple, list)):
            return [d for v in value for d in dims(v)]
        return [value] if isinstance(value, str) else []

    named = re.compile(rf"\b{re.escape(kv)}\b")  # the dim in an expression, not inside another name
    return all(d == kv or not named.search(d) for n in graph.nodes if n.op not in ("input", "weight")
               for d in dims(n.shape) + dims(list(n.attrs.values())))
