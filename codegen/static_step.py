"""The decode step with every shape static, for targets that capture a step in a CUDA graph (`Target.graph_capture`).

    step_graph[_S](input_ids[1, 1], pos[1], filled[S], k0, v0, ..., logits[1, 1, V]) -> logits   (num_input = 0)

A decoding graph (frontends/kv_cache.py) sizes attention by `kv`, the filled slots, a symbolic dim: each step
reads `cache[:, :, :kv]`, so the shapes, and with them the kernels' launch extents, change per token and TVM's
RewriteCUDAGraph leaves attention out of any captured region. Here `kv` is fixed to a bucket of S slots: attention
spans the first S slots of the cache, and the slots not yet written are masked by the comparison transformers'
mask functions build from the positions (slot index <= position, a value the kernels read from the `pos` tensor),
so the result is that of attention over the filled slots whenever position < S. The buckets (`bucket_slots`) are
max_seq and its halvings down to SMALLEST_BUCKET, one function each (`step_graph` for max_seq, `step_graph_S`
for the others): the runtime (runtime/decoder.py) calls the smallest that holds the position, so a short
generation reads S slots of the cache per layer, not max_seq (one captured graph per bucket, each recorded on its
first call).

The caches are written in place (codegen's `index_copy`) and read by attention afterwards; the logits are written
in place too, into `logits`, a buffer the runtime owns (an `index_copy` of the whole tensor into it), so nothing
the step computes escapes the graph. With `num_input = 0` every parameter counts as fixed, so the runtime passes
the same device buffers each step (it copies the token and position into its own) and TVM captures the whole
step in one graph, the logits' write included. One detail of TVM 0.27's RewriteCUDAGraph: it hands a value from a
region to the rest of the function only when a later binding reads it, not when the function returns it, so a
result computed inside a region would be undefined where it is returned ("Var ... is not defined"): the function
returns its result through `vm.builtin.reshape` (`returned_through_view`), a view of the same buffer that launches
and allocates nothing, and is outside any region. tests/test_decode_cuda.py asserts this on a build for sm_90.

Only graphs this argument holds for get a `step_graph`: the first three inputs as kv_cache.py names them, every
cache output an `index_copy` into its own input read by the step (K and V: no recurrent state, which is replaced,
not written in place), attention masked by a comparison over the `kv` slots (the mask is built from positions,
not assumed from the slice's length), and `kv` entering only as a slot count: `filled` itself read by nothing and
no size computed from `kv` (the ones-mask and seen-from-shapes export variants, decoder_export.EXPORT_VARIANTS,
derive positions or offsets from it, which a bucket would shift). Others keep only `step` (runtime/decoder.py
falls back to it).
"""

from __future__ import annotations

from ..ir import Graph
from ..ir.decoding import CALL_INPUTS as INPUTS
from ..ir.decoding import LOGITS, STEP_GRAPH
from ..ir.dims import is_dim_text, names
from ..ir.graph import Node, topo_order
from ..ir.types import TensorType

COMPARISONS = ("le", "lt", "ge", "gt")  # how a mask compares slot indices with positions
BUCKETS = 6  # step functions per decoder at most: max_seq, max_seq // 2, ... (each a captured graph, compiled once)
SMALLEST_BUCKET = 4  # slots; fewer would add functions for the first few tokens only
VIEW = "vm.builtin.reshape"  # TVM VM builtin: a view of a tensor under a new shape (no launch, no allocation)


def bucket_slots(max_seq: int) -> list[int]:
    """The slot counts the step is built for, largest first: max_seq and its halvings down to SMALLEST_BUCKET."""
    return [max_seq >> i for i in range(BUCKETS) if i == 0 or max_seq >> i >= SMALLEST_BUCKET]


def bucket_function(slots: int, max_seq: int) -> str:
    """The name of the step function over `slots` slots (`step_graph` itself over all of them)."""
    return STEP_GRAPH if slots == max_seq else f"{STEP_GRAPH}_{slots}"


def static_steps(graph: Graph) -> dict[str, tuple[Graph, dict[str, int]]]:
    """{function name: (the step's graph, {symbolic dim: value})} for every bucket (module docstring), or {} where
    the rewrite does not hold for `graph`."""
    found = static_step(graph)
    if found is None:
        return {}
    step, bound = found
    kv = graph.inputs[2].shape[0]
    return {bucket_function(s, bound[kv]): (step, {**bound, kv: s}) for s in bucket_slots(bound[kv])}


def static_step(graph: Graph) -> tuple[Graph, dict[str, int]] | None:
    """(the step's graph: the logits written into the `logits` input, {symbolic dim: value} fixing the token count
    to 1 and the filled slots to max_seq), or None where the graph is not a decoding graph this rewrite holds for
    (module docstring)."""
    names_in = [n.attrs.get("name") for n in graph.inputs[:3]]
    if names_in != list(INPUTS) or len(graph.outputs) < 2:
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
    buffer, write = _logits_written_into_a_buffer(graph.outputs[0], bound)
    return Graph((*graph.inputs, buffer), (write,), graph.weights, graph.name), bound


def _logits_written_into_a_buffer(logits: Node, bound: dict[str, int]) -> tuple[Node, Node]:
    """(the `logits` input [1, 1, V] f32, the logits written into it): an `index_copy` of the one row along axis 0,
    which codegen does in place into an input nothing else reads (codegen/lower_state.py)."""
    shape = tuple(bound.get(d, d) if isinstance(d, str) else d for d in logits.shape)
    if logits.dtype != "f32":  # one buffer type for every model: the runtime reads f32 logits
        logits = Node("cast", (logits,), {"dtype": "f32"}, TensorType(logits.shape, "f32"))
    buffer = Node("input", (), {"name": LOGITS}, TensorType(shape, "f32"))
    first = Node("full", (), {"shape": (1,), "value": 0}, TensorType((1,), "i64"))
    return buffer, Node("index_copy", (buffer, first, logits), {"axis": 0}, buffer.type)


def returned_through_view(func):
    """A Relax function returning its result through `vm.builtin.reshape`: a binding after every region TVM's
    CUDA-graph rewrite lifts, so a result computed inside one is handed out of it (module docstring). A final
    `reshape` (index_copy's lowering ends with one) becomes that view, so no reshape copies the result outside."""
    import tvm
    from tvm import relax

    *blocks, last = func.body.blocks
    *bindings, final = last.bindings
    result = final.var
    if isinstance(final.value, relax.Call) and final.value.op.same_as(tvm.ir.Op.get("relax.reshape")):
        source, view = final.value.args[0], result  # the reshape's own binding, as a view
    else:
        bindings, source, view = [*bindings, final], result, relax.Var(f"{result.name}_view", result.ty)
    call = relax.op.call_pure_packed(VIEW, source, result.ty.shape, ty_args=result.ty)
    last = type(last)([*bindings, relax.VarBinding(view, call)])
    return relax.Function(func.params, relax.SeqExpr([*blocks, last], view), func.ret_ty, func.is_pure, func.attrs,
                          func.span)


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
        return [value] if isinstance(value, str) and is_dim_text(value) else []  # not a mode or activation name

    return all(d == kv or kv not in names(d) for n in graph.nodes if n.op not in ("input", "weight")
               for d in dims(n.shape) + dims(list(n.attrs.values())))
