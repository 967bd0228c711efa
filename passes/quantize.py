"""quantize: the row-streamed weights of the kernels' ops stored group-wise quantized (ir.quant layouts).

    linear(x, @W)                           -> linear(x, @W.q4_0)                     @W.q4_0 : f32[n,k] q4_0
    gated_mlp(x, @Wg, @Wu, @Wd)             -> gated_mlp(x, @Wg.q4_0, @Wu.q4_0, @Wd.q4_0)        (dense mode)
    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t)    -> sparse_gated_mlp(x, @Wg.q4_0, @Wu.q4_0, @Wd.t.q4_0)   (any mode)

What: `kind` "fp16" -> plain float16 arrays (the kernels read fp16 and accumulate in fp32; the output projection
stays fp16 too), "int8" -> q8_0, "int4" -> q4_0: symmetric, one fp16 scale per group of 32 consecutive elements of
a stored row (int4 two codes per byte). The stored row is what the kernel streams: the input dim for linear,
gate and up; the sparse ops' down projection is stored one neuron per row (transposed by sparsify), so each
neuron's groups are contiguous and a skipped neuron skips whole blocks; the input-sparse variant (threshold mode's
TEAL / WINA methods) stores gate and up transposed too ([d, n_ff], one input channel per row), so their blocks run
along n_ff and a skipped input channel skips whole blocks. Biases, norms and weights used by other ops stay as they
are.

Embedding tables (`embedding(@E, ids)`) are stored too, so an artifact is not dominated by a float32 table (Gemma 3
270M: 671 of 907 MB under int4 before this); the lookup dequantizes only the rows it reads (the interpreter and
codegen/kernels/embedding_rows.py):

    embedding(@E, ids) ; linear(h, @E)      -> embedding(@E.q8_0, ids) ; linear(h, @E.q8_0)    (tied: ONE blob)
    embedding(@E, ids)                      -> embedding(@E.q8_0, ids)                          (untied, int4)
    embedding(@E, ids) : f32                -> cast(embedding(@E.fp16, ids) : f16, f32)          (fp16)

Policy: a table is stored in the output projection's storage (`output`, int8 = q8_0 by default, or `kind` when
`output=None` or under fp16); a tied table (the same weight read by an `embedding` and a `linear`, the output
projection) is stored once that way and both ops read that one blob. Why 8 bits for an untied table under int4 too
(llama.cpp's Q4 files store token_embd at the file's type): a step reads one row of the table, so its storage
changes the artifact's size and resident memory, never the bytes a token streams, while its rounding enters every
token's residual stream (and a position table's, every position's); the disk it saves is not worth an unmeasured
quality risk. `output=None` stores every table as `kind`. A GGUF's stored table (`prequantized`) is taken as it is.

Why here: quantization is a property of a weight's storage, not a sparsity mode: the weight node keeps its
logical type and gains `layout`; every op's semantics (the interpreter dequantizes), every sparse variant and
every kernel family then take quantized weights unchanged. It runs after the sparsity passes, which read the
float weights (calibration, transposition).

Pre-quantized weights (`prequantized`: {weight name: QuantizedWeight}, e.g. `read_gguf_quantized`, keyed by
the HF weight names the frontends keep) are taken as they are where the stored row is that matrix's row (same
name and shape): lossless, whatever their layout (q8_0 / q4_0 / q4_1). A sparse down projection `@Wd.t` of a
pre-quantized `@Wd` is re-quantized from its values: the file's groups run along n_ff, the kernel's along d.

A MoE's router (a `linear` whose logits reach the experts' `topk`) stays float, as llama.cpp keeps `ffn_gate_inp`
in F32: it is E x d, a few KB, and a logit rounded across a tie changes which experts run — a jump, not a small
error (in a tiny Ergo, one choice flipped by upstream int8 rounding moved the logits by 42%).

The output projection (a `linear` that is a graph output, or whose weight an `embedding` also reads: a tied
lm_head) is quantized as `output` ("int8" by default): its error lands on every logit, and llama.cpp likewise
keeps it above 4 bits (Q6_K) in its Q4_0 files. `output=None` quantizes it like the rest.

A rotated threshold method's rotation (`linear(x, @Q)` feeding a `sparse_gated_mlp` with a `rotation_share`) is
stored as `rotation.ROTATION_STORAGE` says for `kind` (int8 under int4: Q turns x before all three
matrices, and calibration priced its bytes so); statistic `rotation-<kind>`.

`wide` names weights the source stored in more than 4 bits (a Q4_K_M GGUF's Q6_K tensors): under int4 they are
stored q8_0 (statistic `wide-int8`), as the file's author kept them wider than the rest.

A sparse block's down projection re-quantized from a 4-bit source (`@Wd.t` of a pre-quantized q4_0 / q4_1 `@Wd`)
is stored q8_0 under int4 too, where the block's variant reads the down projection in a layout of its own
(`SparseVariant.own_down_layout`: exact, threshold, predictor): statistic `requantized-int8`. A second 4-bit
rounding of the file's values cost SmolLM2-135M +8% perplexity (BENCHMARKS.md, session 31); at 8 bits it is below
the file's own, and the block's gate and up stay the file's blocks. It costs bytes on the rows of active neurons
only (q8_0 is 34 bytes a group against q4_0's 18). Routed experts' down projections likewise where they stay a
neuron per row (exact experts, or a kernel family whose routed kernel reads only that): a MoE GGUF's 4-bit
`ffn_down_exps` is found as their source by value, transposed expert by expert (`_down_source_bits`); a K-quant
mix's Q6_K `ffn_down_exps` (held q8_0 from its values, `gguf_quant._wide_stacked_source`) likewise stays at 8 bits
(statistic `wide-int8`). Sources are found by value within SOURCE_TOLERANCE: Q4_K blocks kept as q4_1 round their
products to fp16, and a wide tensor's values are held at 8 bits.

Dense routed experts on a family whose routed kernel reads a down stack by outputs (ir/moe.py's `DOWN_ROWS`: the
CPU and CUDA routed kernels) take that source as it is instead: the op's `down_rows` becomes "outputs" and its down
stack is the file's `ffn_down_exps` blocks, an output per row (statistic `routed-down-as-stored`): no rounding of
its own, the file's bytes; without such a source (float weights, `--requantize-gguf`) the values are quantized an
output per row (`routed-down-by-outputs`), groups along n_ff as a GGUF's (`_down_by_outputs`).

Statistics: `quantized` (from float), `prequantized` (taken as stored), `prequantized-by-value` (a pre-quantized weight
no graph weight is named after whose values this weight's equal, e.g. a MoE GGUF's experts, which transformers merges,
stacked as the routed kernel reads them: `_equal_source`), `requantized` (transposed GGUF rows), `requantized-int8`
(such a down stored 8-bit), `routed-down-as-stored` (a routed op's down stack taken as stored) /
`routed-down-by-outputs` (quantized an output per row), `output-<kind>` for the output projection, `embedding-<kind>`
per embedding table stored, `router-float` per MoE router kept float, `tied-shared` per tied table whose one blob the
embedding and the output projection share, `relaid-<layout>` for a gated MLP's weight quantized again into the layout of
its gate (its kernel reads gate and up in one layout, and the down projection too where the variant has no
`own_down_layout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..ir import Graph, Node, TensorType, rewrite, weight_node
from ..ir.arrays import aligned_contiguous, shared_copy
from ..ir.graph import quantized_weight_node
from ..ir.moe import TRANSPOSED_MODES, down_rows_allowed, down_stack_by_outputs
from ..ir.quant import FLOAT_KINDS, LAYOUTS, QUANTIZE_KINDS, STORAGE_KINDS, QuantizationError, dequantize, quantize
from ..ir.sparse_variants import variant_of
from .base import Pass, record
from .rotation import ROTATION_STORAGE

# op -> indices of the inputs that are row-streamed weights (by the op's attributes)
WEIGHT_INPUTS = {
    "linear": lambda attrs: (1,),
    "gated_mlp": lambda attrs: (1, 2) if attrs.get("fused") else (1, 2, 3),
    "sparse_gated_mlp": lambda attrs: (1, 2, 3),
    "routed_moe": lambda attrs: (1, 2, 3),  # the experts stacked by rows: each row quantized as it is streamed
}


# how far a source's dequantized values may lie from a weight's and still be its source, relative to the row's largest
# magnitude: a K-quant's 6-bit values held q8_0 round by up to 1/254 of a block's largest (gguf_quant.
# _wide_stacked_source), Q4_K's products rounded to fp16 by about 3 * 2^-11 (gguf_kquants.q4_k_as_q4_1); another
# tensor of the same shape differs by the weights themselves
SOURCE_TOLERANCE = 2.0 ** -7


ROWS_PER_CHECK = 4096   # rows compared at once: a MoE layer's stack (200 M weights in Qwen3-30B) never copied whole


def _holds(q, array: np.ndarray, rows: int | None = None) -> bool:
    """Whether pre-quantized `q`'s dequantized values lie within SOURCE_TOLERANCE of `array` [rows, cols], row by
    row (its first `rows` rows only, where given)."""
    end = array.shape[0] if rows is None else rows
    for r0 in range(0, end, ROWS_PER_CHECK):
        part = array[r0:min(r0 + ROWS_PER_CHECK, end)]
        values = dequantize(q.blob[r0:r0 + len(part)], q.layout, q.shape[1])
        if not np.all(np.abs(values - part) <= SOURCE_TOLERANCE * np.abs(part).max(axis=-1, keepdims=True)):
            return False
    return True


# what a router's logits pass through on their way to the top-k (softmax / sigmoid scores, a correction bias, casts)
SCORE_OPS = ("softmax", "sigmoid", "cast", "add", "sub", "mul", "div", "exp", "neg", "reshape")


def router_weights(graph: Graph) -> set[str]:
    """The weights of the linears whose outputs choose a MoE's experts (they reach a `topk` through SCORE_OPS)."""
    found, seen = set(), set()
    stack = [n.inputs[0] for n in graph.nodes if n.op == "topk"]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op == "linear" and node.inputs[1].op == "weight":
            found.add(node.inputs[1].attrs["name"])
        elif node.op in SCORE_OPS:
            stack.extend(i for i in node.inputs if i.op not in ("weight", "constant"))
    return found


@dataclass(frozen=True)
class Quantize(Pass):
    name = "quantize"
    data_options = ("prequantized", "wide")
    kind: str = "int4"
    output: str | None = "int8"
    prequantized: Mapping = field(default_factory=dict, compare=False, hash=False)
    # weights a source stored in more than 4 bits (a GGUF's Q6_K): under int4 stored int8, not rounded to 4 bits again
    wide: frozenset = field(default_factory=frozenset, compare=False, hash=False)
    # the target's kernel family (`Target.kernel_family`): whether its routed kernel reads a down stack by outputs
    kernel_family: str = "cpu"

    def __post_init__(self) -> None:
        for value in (self.kind, self.output or self.kind):
            if value not in STORAGE_KINDS:
                raise QuantizationError(f"unknown quantization {value!r}; valid: {', '.join(STORAGE_KINDS)}")


    def run(self, graph: Graph) -> Graph:
        new_weights: dict = {}
        made: dict[tuple, Node] = {}
        # weights of the output projection: of a linear that is a graph output, or read by an embedding (tied)
        heads = {n.inputs[0].attrs["name"] for n in graph.nodes if n.op == "embedding" and n.inputs[0].op == "weight"}
        heads |= {o.inputs[1].attrs["name"] for o in graph.outputs if o.op == "linear" and o.inputs[1].op == "weight"}
        rotations = {n.inputs[0].inputs[1].attrs["name"] for n in graph.nodes
                     if n.op == "sparse_gated_mlp" and n.attrs.get("rotation_share") and n.inputs[0].op == "linear"}

        def quantized(w: Node, kind: str) -> Node:
            key = (w.attrs["name"], kind)
            if key not in made:
                made[key] = self._quantized(graph, w, kind, new_weights)
            return made[key]

        def is_output(node: Node) -> bool:
            return node.op == "linear" and node.inputs[1].attrs.get("name") in heads

        # the output projection's (higher) precision applies to the integer kinds
        output_kind = self.output if self.output and self.kind in QUANTIZE_KINDS else self.kind
        tied = {n.inputs[1].attrs["name"] for n in graph.nodes if n.op == "linear" and n.inputs[1].op == "weight"}
        # a table some other op reads as floats (a matmul, an index_select) stays: a stored copy would add bytes
        read_as_float = {i.attrs["name"] for n in graph.nodes if n.op not in ("embedding", *WEIGHT_INPUTS)
                         for i in n.inputs if i.op == "weight"}

        routers = router_weights(graph)

        def visit(node: Node) -> Node | None:
            if node.op == "embedding":
                return embedding(node)
            if node.op == "linear" and node.inputs[1].attrs.get("name") in routers:
                record("router-float")   # a rounded router logit changes which experts run (a discrete jump)
                return None
            pick = WEIGHT_INPUTS.get(node.op)
            if pick is None:
                return None
            if node.op == "sparse_gated_mlp" and not variant_of(node.attrs).quantized_kernels:
                record("kept-float")  # e.g. the cold part of a hot/cold split: its host-side store reads floats
                return None
            slots = [i for i in pick(node.attrs) if node.inputs[i].op == "weight" and node.inputs[i].type.rank == 2
                     and node.inputs[i].attrs.get("layout", "dense") == "dense"]
            if not slots:
                return None
            inputs = list(node.inputs)
            if node.op == "routed_moe" and 3 in slots and (stored := self._down_by_outputs(graph, node, new_weights)):
                inputs[3] = stored
                slots = [i for i in slots if i != 3]
                node = Node(node.op, node.inputs, {**node.attrs, "down_rows": "outputs"}, node.type, node.loc)
            kind = output_kind if is_output(node) else self.kind
            if kind != self.kind:
                record(f"output-{kind}")
            if node.op == "linear" and node.inputs[1].attrs.get("name") in rotations:
                kind = ROTATION_STORAGE[self.kind]
                record(f"rotation-{kind}")
            # (routed input experts: one layout for the three stacks, as the input kernel's axpys read them)
            own_down = (node.op == "routed_moe" and node.attrs.get("mode") not in TRANSPOSED_MODES
                        or node.op == "sparse_gated_mlp" and variant_of(node.attrs).own_down_layout)
            for i in slots:
                name = inputs[i].attrs["name"]
                eight_bits = kind == "int4" and name.removesuffix(".t") in self.wide
                if eight_bits:
                    record("wide-int8")   # the source's 5-6 bit blocks stay above 4 bits
                elif kind == "int4" and own_down and i == 3 and (bits := self._down_source_bits(graph, node, name)):
                    eight_bits = True
                    # a file's down re-laid: rounded again at 8 bits, not 4 (a K-quant's 6-bit down: not to 4 bits)
                    record("requantized-int8" if bits < 8 else "wide-int8")
                inputs[i] = quantized(inputs[i], "int8" if eight_bits else kind)
            if node.op in ("sparse_gated_mlp", "routed_moe"):  # gate and up: one row dot, one layout for the two
                layout = inputs[1].attrs.get("layout", "dense")
                for i in slots:
                    if inputs[i].attrs.get("layout", "dense") != layout and not (own_down and i == 3):
                        record(f"relaid-{layout}")  # e.g. a GGUF's Q4_1 gate beside a re-quantized down
                        inputs[i] = self._relaid(graph, node.inputs[i], layout, new_weights)
            return Node(node.op, tuple(inputs), node.attrs, node.type, node.loc)

        def embedding(node: Node) -> Node | None:
            table = node.inputs[0]
            if (table.op != "weight" or table.type.rank != 2 or table.attrs.get("layout", "dense") != "dense"
                    or table.attrs["name"] in read_as_float):
                return None
            shared = table.attrs["name"] in tied   # one blob for the lookup and the output projection
            kind = output_kind   # a table streams one row a token: its precision costs memory, not speed
            record(f"embedding-{kind}")
            if shared:
                record("tied-shared")
            stored = quantized(table, kind)
            if stored is table:
                return None
            looked_up = Node("embedding", (stored, node.inputs[1]), node.attrs, TensorType(node.shape, stored.dtype),
                             node.loc)
            if looked_up.dtype == node.dtype:
                return looked_up
            return Node("cast", (looked_up,), {"dtype": node.dtype}, node.type, node.loc)  # fp16 rows -> f32

        return rewrite(graph, visit, new_weights)

    def _equal_source(self, graph: Graph, name: str):
        """A pre-quantized weight no graph weight is named after (a GGUF's stacked expert rows,
        `gguf_quant._stacked_source`) whose dequantized values equal weight `name`'s bit for bit, else None: the
        routed experts' stacks are those rows, and taking them keeps the file's blocks instead of rounding the
        file's values a second time."""
        return self._source_of(graph, graph.weights[name])

    def _source_of(self, graph: Graph, array):
        """The pre-quantized weight, not named after any graph weight, whose dequantized values are `array`'s [rows,
        cols] (bit for bit where the file's blocks are kept as they are; within SOURCE_TOLERANCE where keeping them
        rounds: a Q4_K's fp16 products, a Q6_K's values at 8 bits), else None. A first row decides cheaply which
        candidate to check in full."""
        if array.ndim != 2 or not array.size:
            return None
        for key, q in self.prequantized.items():
            if key in graph.weights or tuple(q.shape) != array.shape:
                continue
            if _holds(q, array, rows=1) and _holds(q, array):
                return q
        return None

    def _down_source_bits(self, graph: Graph, node: Node, name: str) -> int | None:
        """The bits of the pre-quantized weight down projection `name` of `node` is a transposed copy of, where
        that copy is stored at 8 bits under int4: a sparse block's `<w>.t` of a `<w>` stored in under 8 bits, or a
        routed op's stacked experts, transposed back expert by expert (a MoE GGUF's `ffn_down_exps` [E * d, n_ff],
        `gguf_quant._stacked_source`; any source: a 4-bit file's blocks or a K-quant's 6-bit values at 8 bits,
        `_wide_stacked_source`, which a 4-bit copy would round again); else None."""
        if node.op == "routed_moe":
            source = self._routed_down_source(graph, node)
            return None if source is None else LAYOUTS[source.layout].bits
        source = self.prequantized.get(name.removesuffix(".t")) if name.endswith(".t") else None
        bits = None if source is None else LAYOUTS[source.layout].bits
        return bits if bits is not None and bits < 8 else None

    def _routed_down_source(self, graph: Graph, node: Node, by_outputs: np.ndarray | None = None):
        """The pre-quantized [E * d, n_ff] weight (a MoE GGUF's `ffn_down_exps`) whose rows are routed op `node`'s
        down stack [E * n_ff, d] transposed back expert by expert (`by_outputs`, where the caller has it), else
        None."""
        w = node.inputs[3]
        if w.op != "weight" or w.attrs.get("layout", "dense") != "dense" or node.attrs.get("down_rows") == "outputs":
            return None
        down_t, experts = graph.weights[w.attrs["name"]], node.attrs["experts"]
        if down_t.ndim != 2 or down_t.shape[0] % experts:
            return None
        n_ff, d = down_t.shape[0] // experts, down_t.shape[1]
        if not any(tuple(q.shape) == (experts * d, n_ff) for q in self.prequantized.values()):
            return None   # no candidate: no transposed copy made
        return self._source_of(graph, down_stack_by_outputs(down_t, experts) if by_outputs is None else by_outputs)

    def _down_by_outputs(self, graph: Graph, node: Node, new_weights: dict) -> Node | None:
        """A routed op's down stack an output per row (`ir.moe.DOWN_ROWS`), where its experts run dense on a kernel
        family whose routed kernel reads that: a pre-quantized weight whose values it holds as that weight stores
        them (a MoE GGUF's `ffn_down_exps`: the file's blocks, statistic `routed-down-as-stored`), else its values
        quantized in that form (`routed-down-by-outputs`: groups along n_ff, as a GGUF groups them; the row dots
        over h read it faster than the neuron rows' axpy, BENCHMARKS.md session 34)."""
        if self.kind not in QUANTIZE_KINDS or not down_rows_allowed("outputs", node.attrs["mode"], self.kernel_family):
            return None
        name = node.inputs[3].attrs["name"]
        by_outputs = down_stack_by_outputs(graph.weights[name], node.attrs["experts"])   # one copy for both uses
        source = self._routed_down_source(graph, node, by_outputs)
        if source is not None:
            record("routed-down-as-stored")   # the file's own down blocks, an output per row: not re-laid
        else:
            source = quantize(by_outputs, self.kind)
            record("routed-down-by-outputs")
        qname = f"{name}.outputs.{source.layout}"
        new_weights[qname] = source.blob
        return quantized_weight_node(qname, source)

    def _relaid(self, graph: Graph, w: Node, layout: str, new_weights: dict) -> Node:
        """`w` quantized from its float values in `layout` (a layout name: GGUF's own rule for it)."""
        name = w.attrs["name"]
        qw = quantize(graph.weights[name], layout)
        qname = f"{name}.{qw.layout}"
        new_weights[qname] = qw.blob
        return quantized_weight_node(qname, qw)

    def _quantized(self, graph: Graph, w: Node, kind: str, new_weights: dict) -> Node:
        name = w.attrs["name"]
        if kind in FLOAT_KINDS:  # a plain narrower float: same layout, no blocks
            record(kind)
            array = graph.weights[name]
            if array.dtype == FLOAT_KINDS[kind]:
                return w
            qname = f"{name}.{kind}"
            # a second compile of the same weights (another mode) shares the first one's copy: bit-identical
            new_weights[qname] = shared_copy(qname, aligned_contiguous(array.astype(np.dtype(FLOAT_KINDS[kind]))))
            return weight_node(qname, new_weights[qname])
        pre = self.prequantized.get(name)
        if pre is not None and tuple(pre.shape) == tuple(w.shape):
            record("prequantized")
            qw = pre
        elif (found := self._equal_source(graph, name)) is not None:
            record("prequantized-by-value")   # e.g. a MoE GGUF's expert rows, stacked as the routed kernel reads them
            qw = found
        else:
            # a transposed pre-quantized matrix: its float values (the file's, dequantized) quantized anew
            source = self.prequantized.get(name[:-2]) if name.endswith(".t") else None
            record("requantized" if source is not None and tuple(source.shape) == tuple(w.shape)[::-1]
                   else "quantized")
            qw = quantize(graph.weights[name], kind)
        qname = f"{name}.{qw.layout}"
        new_weights[qname] = qw.blob
        return quantized_weight_node(qname, qw)
