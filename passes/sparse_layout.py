"""The weight layout of `sparse_gated_mlp`, shared by the passes that produce it (sparsify-exact, -threshold).

    gated_mlp(x, @Wg, @Wu, @Wd)               -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){attrs}
    gated_mlp(x, @Wgu, @Wd){fused}            -> sparse_gated_mlp(x, @Wgu.gate, @Wgu.up, @Wd.t){attrs}
    gated_mlp(x, @Wg, @Wu, @Wd, @bg, @bu)     -> slice(sparse_gated_mlp(concat(x, 1), @Wg.aug, @Wu.aug,
                                                                        @Wd.t.aug){attrs}, last axis, 0:d)

Why: the kernels stream one contiguous row per neuron, so the down projection is stored transposed
([n_ff, d]); they take no biases, so biases ride in the weights as an extra column (exact: the same
activations, hence the same zeros). The new weights are computed once, at compile time.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, TensorType, weight_node
from ..ir.arrays import aligned_contiguous
from ..ir.mlp import split_fused


def to_sparse_layout(node: Node, sparse_attrs: dict, graph: Graph, new_weights: dict) -> Node:
    """`gated_mlp` node -> `sparse_gated_mlp` with `sparse_attrs` (plus the node's expert index) on the kernel
    layout: fused gate_up split, down transposed, biases folded in homogeneous coordinates (then a slice)."""
    attrs = node.attrs
    if attrs["fused"]:
        x, w_gate_up, w_down = node.inputs[:3]
        base = w_gate_up.attrs["name"]
        gate, up = split_fused(graph.weights[base], attrs["gate_first"])
        w_gate = _new_weight(f"{base}.gate", gate, new_weights)
        w_up = _new_weight(f"{base}.up", up, new_weights)
    else:
        x, w_gate, w_up, w_down = node.inputs[:4]
    down_name = w_down.attrs["name"]
    w_down_t = _new_weight(f"{down_name}.t", graph.weights[down_name].T, new_weights)
    sparse_attrs = dict(sparse_attrs)
    if attrs.get("expert", -1) >= 0:
        sparse_attrs["expert"] = attrs["expert"]
    if not attrs.get("bias"):
        return Node("sparse_gated_mlp", (x, w_gate, w_up, w_down_t), sparse_attrs, node.type, node.loc)
    inputs = _homogeneous(node, x, w_gate, w_up, w_down_t, graph, new_weights)
    last, d = node.type.rank - 1, node.shape[-1]
    wide = Node("sparse_gated_mlp", inputs, sparse_attrs, TensorType((*node.shape[:-1], d + 1), node.dtype), node.loc)
    return Node("slice", (wide,), {"axis": last, "start": 0, "end": d, "step": 1}, node.type, node.loc)


def _homogeneous(node: Node, x: Node, w_gate: Node, w_up: Node, w_down_t: Node, graph: Graph, new_weights: dict):
    """Fold the gate/up biases into the weights: [x, 1], [W | b] for gate and up, [Wdᵀ | 0] for down."""
    arrays = {**graph.weights, **new_weights}
    if node.attrs["fused"]:
        b_gate, b_up = split_fused(arrays[node.inputs[3].attrs["name"]], node.attrs["gate_first"])
    else:
        b_gate, b_up = (arrays[b.attrs["name"]] for b in node.inputs[4:6])
    down_t = arrays[w_down_t.attrs["name"]]
    columns = ((w_gate, b_gate), (w_up, b_up), (w_down_t, np.zeros(down_t.shape[0], down_t.dtype)))
    augmented = [_new_weight(f"{w.attrs['name']}.aug", np.concatenate([arrays[w.attrs["name"]], b[:, None]], 1),
                             new_weights) for w, b in columns]
    ones = Node("full", (), {"shape": (*x.shape[:-1], 1), "value": 1.0}, TensorType((*x.shape[:-1], 1), x.dtype),
                node.loc)
    x_aug = Node("concat", (x, ones), {"axis": x.type.rank - 1},
                 TensorType((*x.shape[:-1], x.shape[-1] + 1), x.dtype), node.loc)
    return (x_aug, *augmented)


def _new_weight(name: str, array: np.ndarray, new_weights: dict) -> Node:
    if name not in new_weights:
        new_weights[name] = aligned_contiguous(array)  # the runtime views it in place (see ir/arrays.py)
    array = new_weights[name]
    return weight_node(name, array)
