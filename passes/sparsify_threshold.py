"""sparsify-threshold: training-free sparsity for any gated MLP (SwiGLU, GeGLU, ReLU family) from calibrated
per-layer thresholds.

Matches every `gated_mlp` and produces (weights laid out as in `sparsify-exact`: down transposed, fused gate_up
split, biases folded in homogeneous coordinates)

    gated_mlp(x, @Wg, @Wu, @Wd) -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='threshold', threshold=t, criterion=c}

whose semantics (the "threshold" entry of `ir/sparse_variants.py`) zero a neuron for a token when |act(g)| <= t
(criterion 'gate', CATS) or |act(g)·up| <= t (criterion 'product', TurboSparse's top-k% and TEAL's
intermediate). TEAL also sparsifies the block's input, which is spelled as ordinary ops in front of the block
(no kernel skips input columns yet, so it runs densely with a mask):

    x -> where(gt(abs(x), t_x), x, 0)

It is lossy by design: `t` is chosen per block by `calibrate.py` as the quantile of the calibration data's
activations at the target `sparsity`, so each layer hits the target; the report shows the calibrated sparsity
next to the sparsity measured on held-out inputs and the error of the outputs.

Options: `sparsity` (target fraction of inactive neurons per token, 0 < s < 1), `method` ("cats" | "teal" |
"topk"), `thresholds` (explicit per-location thresholds, `((location, t), ...)`, that skip calibration for those
blocks; with teal `(location, t, t_x)`), `calibration` (input tuples; not part of the text form),
`max_tokens` (calibration rows kept per block), `progress` (tqdm bar while calibrating).

Statistics: one count per pattern rewritten (`swiglu`, `geglu-fused`, ...). The node carries what calibration
chose (`method`, `calibrated_sparsity`, `input_threshold`) for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import ActsparseError
from ..ir import Graph, Node, TensorType, rewrite
from ..ir.mlp import pattern_name
from .base import Pass, record
from .calibrate import METHODS, Calibrated, calibrate, threshold_attrs
from .sparse_layout import to_sparse_layout


@dataclass(frozen=True)
class SparsifyThreshold(Pass):
    name = "sparsify-threshold"
    sparsity: float = 0.5
    method: str = "cats"
    thresholds: tuple = ()
    calibration: tuple = field(default=(), repr=False, compare=False)
    max_tokens: int = 4096
    progress: bool = True

    def __post_init__(self):
        # the text form passes strings: coerce them
        object.__setattr__(self, "sparsity", float(self.sparsity))
        object.__setattr__(self, "max_tokens", int(self.max_tokens))
        if isinstance(self.progress, str):
            object.__setattr__(self, "progress", self.progress.lower() not in ("0", "false", "no"))
        if isinstance(self.thresholds, dict):
            object.__setattr__(self, "thresholds", tuple((k, *((v,) if isinstance(v, (int, float)) else v))
                                                         for k, v in self.thresholds.items()))
        if self.method not in METHODS:
            raise ValueError(f"sparsify-threshold: unknown method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsify-threshold: sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")

    def __str__(self) -> str:
        opts = ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name != "calibration")
        return f"{self.name}{{{opts}}}"

    def run(self, graph: Graph) -> Graph:
        blocks = [n for n in graph.nodes if n.op == "gated_mlp"]
        if not blocks:
            return graph
        chosen = self._given(blocks)
        missing = [i for i, b in enumerate(blocks) if chosen[i] is None]
        if missing:
            if not self.calibration:
                where = ", ".join(blocks[i].loc or "?" for i in missing[:3]) + (" ..." if len(missing) > 3 else "")
                raise ActsparseError(f"sparsify-threshold has no thresholds for {where}: pass calibration data "
                                     "(compile(..., mode='threshold', calibration=[...], sparsity=...)) or explicit "
                                     "thresholds")
            found = calibrate(graph, [blocks[i] for i in missing], self.calibration, self.method, self.sparsity,
                              self.max_tokens, self.progress)
            for i, c in zip(missing, found):
                chosen[i] = c
        in_order = iter(chosen)   # rewrite visits graph.nodes in order (rebuilt nodes have a new identity)
        new_weights: dict = {}

        def visit(node: Node) -> Node | None:
            if node.op != "gated_mlp":
                return None
            c = next(in_order)
            pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"]) + (
                "-fused" if node.attrs.get("fused") else "")
            record(pattern)
            return _threshold_block(node, c, self.method, graph, new_weights)

        return rewrite(graph, visit, new_weights)

    def _given(self, blocks: list[Node]) -> list[Calibrated | None]:
        given = {}
        for entry in self.thresholds:
            loc, t, *rest = entry
            given[loc] = (float(t), float(rest[0]) if rest else 0.0)
        unknown = set(given) - {b.loc for b in blocks}
        if unknown:
            raise ActsparseError(f"sparsify-threshold: thresholds given for unknown blocks {sorted(unknown)}; "
                                 f"blocks: {[b.loc for b in blocks]}")
        criterion = "gate" if self.method == "cats" else "product"
        return [Calibrated(given[b.loc][0], criterion, given[b.loc][1], float("nan"), 0) if b.loc in given else None
                for b in blocks]


def _threshold_block(node: Node, c: Calibrated, method: str, graph: Graph, new_weights: dict) -> Node:
    x = node.inputs[0]
    if c.input_threshold > 0:   # TEAL: zero the small input entries (dense mask, see the module docstring)
        x = _input_mask(x, c.input_threshold, node.loc)
        node = Node(node.op, (x, *node.inputs[1:]), node.attrs, node.type, node.loc)
    attrs = {"pattern": pattern_name(node.attrs["gate_act"], node.attrs["up_act"]),
             **threshold_attrs(node.attrs, c.threshold, c.criterion), "method": method}
    # what calibration chose rides on the node (the report reads it there): provenance, not semantics
    if c.sparsity == c.sparsity:  # not NaN: calibrated here, not given
        attrs["calibrated_sparsity"] = float(c.sparsity)
    if c.input_threshold > 0:
        attrs["input_threshold"] = float(c.input_threshold)
    return to_sparse_layout(node, attrs, graph, new_weights)


def _input_mask(x: Node, t: float, loc: str) -> Node:
    """where(gt(abs(x), t), x, 0)."""
    scalar = TensorType((), x.dtype)
    magnitude = Node("abs", (x,), {}, x.type, loc)
    keep = Node("gt", (magnitude, Node("constant", (), {"value": float(t)}, scalar, loc)), {},
                TensorType(x.shape, "bool"), loc)
    return Node("where", (keep, x, Node("constant", (), {"value": 0.0}, scalar, loc)), {}, x.type, loc)
