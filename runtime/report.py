"""The compile report: one row per MLP block found — where it is, its pattern, the mode it runs in, its width,
the sparsity measured on the example inputs — plus the blocks left dense and why. This file gathers the rows;
their types and renderings (table, dict, plot) are in runtime/report_data.py, re-exported here.

Every field of a block's row comes from its node: location, pattern (the node's own `pattern` attribute),
mode (its variant), expert, and the fields its variant's entry declares (`report` in ir/sparse_variants.py:
threshold, method, calibrated sparsity ...). Nothing is matched up by location strings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Graph, Node, evaluate, weight_value
from ..ir.activations import exactly_sparse
from ..ir.input_sparse import input_intermediate, input_measure
from ..ir.interpreter import evaluate_from
from ..ir.mlp import pattern_name, unpack_gated_inputs
from ..ir.moe import (
    MODE_INPUTS,
    ROUTED_INPUTS,
    ROUTED_REASONS,
    expert_rows,
    expert_sizes,
    routed_reason,
    routing_weight,
)
from ..ir.sparse_variants import (
    dense_intermediate,
    neuron_threshold_parts,
    sizes,
    split_inputs,
    two_cut_effective,
    variant_of,
)
from .report_data import BlockReport, Report

__all__ = ["BlockReport", "Report", "MLP_OPS", "build_report", "finding_rows", "measure_blocks",
           "measure_blocks_compiled", "output_rel_error", "top1_agreement"]


MLP_OPS = ("gated_mlp", "sparse_gated_mlp", "routed_moe")  # routed_moe: a row per expert


def measure_blocks(graph: Graph, example_inputs: Sequence[np.ndarray], mode: str = "dense") -> list[BlockReport]:
    """One row per gated MLP node, every field from the node (its variant's `report` fields included), and the
    intermediate sparsity measured by running the reference interpreter once on the example inputs. A full
    numpy forward: for modules that do not run here and for the lossy modes (whose error check runs it anyway)."""
    blocks = [n for n in graph.nodes if n.op in MLP_OPS]
    # each block's x and its computed extra inputs (e.g. a predictor's scores); weights are read from the graph
    keep = [(b, i) for b in blocks for i in b.inputs if i is b.inputs[0] or (i.op != "weight" and b.op != "gated_mlp")]
    values = evaluate(graph, example_inputs, keep=[i for _, i in keep]) if blocks else []
    computed = {(id(b), id(i)): v for (b, i), v in zip(keep, values[len(graph.outputs):])}
    return [row for block in blocks for row in _rows(block, computed[(id(block), id(block.inputs[0]))], graph, mode,
                                                     computed)]


def measure_blocks_compiled(module, graph: Graph, example_inputs: Sequence[np.ndarray],
                            mode: str = "dense") -> list[BlockReport]:
    """The same rows from one run of the compiled module: each block's input is read off the kernel call that
    takes its gate weight (`CompiledModule.kernel_inputs`), then only that block's gate/up products are computed
    in numpy (float32, a few rows at a time) — no forward of the whole model in the interpreter."""
    blocks = [n for n in graph.nodes if n.op in MLP_OPS]
    if not blocks:
        return []
    xs = module.kernel_inputs(example_inputs, [b.inputs[1].attrs["name"] for b in blocks])
    return [row for block in blocks for row in _rows(block, xs.get(block.inputs[1].attrs["name"]), graph, mode, {})]


def _rows(block: Node, x: np.ndarray | None, graph: Graph, mode: str, computed: dict) -> list[BlockReport]:
    if block.op != "routed_moe":
        return [_block_row(block, x, graph, mode, computed)]
    attrs = {"threshold": 0.0, **block.attrs}
    w_gate, w_up = (weight_value(graph, w) for w in block.inputs[1:3])
    x2d = None if x is None else np.asarray(x.reshape(-1, x.shape[-1]), np.float32)
    rows = []
    # threshold experts (cuts per neuron) and input experts (x_thr, h_thr), stacked by the experts' rows
    cuts = ([np.asarray(weight_value(graph, w), np.float32) for w in block.inputs[len(ROUTED_INPUTS):]]
            if attrs["mode"] in MODE_INPUTS else None)
    # they are measured on the tokens routed to each, from the routing of the example (the interpreter's, or
    # recomputed from x); other experts over every token
    routing = _routing(block, x, graph, computed) if cuts is not None and x2d is not None else None
    _, n = expert_sizes(attrs, w_gate.shape)
    for e in range(attrs["experts"]):
        part = expert_rows(attrs, w_gate.shape[0], e)   # (input experts: its input channels)
        neurons = slice(e * n, (e + 1) * n)
        fields: dict = {"expert": e, "sparsity": None}
        if cuts is not None:   # a threshold per neuron (the median shown: the gate cut's, or h's for input experts)
            calibrated = (attrs.get("expert_calibrated") or ())[e:e + 1]
            shown = cuts[1][neurons] if attrs["mode"] == "input" else cuts[0][0, neurons]
            fields.update(threshold=float(np.median(shown)),
                          method=attrs.get("method"), reason=attrs.get("reason") or "",
                          calibrated_sparsity=calibrated[0] if calibrated else None)
        elif mode in ROUTED_REASONS:   # a lossy mode: its experts lossless, routed
            fields["reason"] = routed_reason(mode, attrs["mode"])
        elif mode != "dense" and not exactly_sparse(attrs["gate_act"]):
            fields["reason"] = (f"{pattern_name(attrs['gate_act'], attrs['up_act'])} is not exactly sparse "
                                f"(act={attrs['gate_act']}); exact mode needs ReLU-family")
        if x2d is not None:
            gate, up = np.asarray(w_gate[part], np.float32), np.asarray(w_up[part], np.float32)
            r = None if routing is None else routing_weight(*routing, e)
            if cuts is None:
                biases = [np.asarray(weight_value(graph, b), np.float32)[part] for b in block.inputs[6:8]]  # bias
                fields["sparsity"] = float(np.mean(dense_intermediate(x2d, gate, up, attrs, *biases) == 0))
            elif r is not None and r.any():
                fields.update(_expert_measure(attrs, x2d[r != 0], gate, up, cuts, part, neurons, r[r != 0, None]))
        rows.append(BlockReport(f"{block.loc}.{e}", attrs["pattern"], attrs["mode"], n, **fields))
    return rows


def _expert_measure(attrs: dict, x: np.ndarray, gate: np.ndarray, up: np.ndarray, cuts: list[np.ndarray],
                    part: slice, neurons: slice, scale: np.ndarray) -> dict:
    """A threshold or input expert's measured fields on the tokens routed to it (`scale`: their routing weights):
    its sparsity of h and its effective sparsity (threshold experts: the gate cut's up rows, the cut on h's down
    rows; input experts: x's rows of gate / up, h's of down, less a rotation's share)."""
    if attrs["mode"] == "input":
        extras = {"x_thr": cuts[0][part], "h_thr": cuts[1][neurons]}
        h = input_intermediate(x, gate, up, extras, attrs)
        return {"sparsity": float(np.mean(h == 0)), **input_measure(x, gate, up, extras, attrs, h)}
    kept, h = neuron_threshold_parts(x, gate, up, attrs, cuts[0][0, neurons], cuts[0][1, neurons], scale=scale)
    return {"sparsity": float(np.mean(h == 0)), **two_cut_effective(attrs, kept, h)}


ROWS_PER_STEP = 1024  # neurons measured at once: float32 copies of that many weight rows, not of whole matrices


def _block_row(block: Node, x: np.ndarray | None, graph: Graph, mode: str, computed: dict) -> BlockReport:
    arrays = [x, *(weight_value(graph, w) if w.op == "weight" else computed.get((id(block), id(w)))
                   for w in block.inputs[1:])]
    attrs = {"threshold": 0.0, "fused": False, **block.attrs}
    expert = attrs.get("expert", -1)
    fields: dict = {"expert": expert if expert >= 0 else None, "sparsity": None}
    x2d = None if x is None else x.reshape(-1, x.shape[-1])
    if x2d is not None and x2d.dtype == np.float16:  # numpy's float16 matmul has no BLAS
        x2d = x2d.astype(np.float32)
    if block.op == "sparse_gated_mlp":
        (_, w_gate, w_up, _), extras = split_inputs(arrays, attrs)
        variant = variant_of(attrs)
        if x is not None and not variant.lossy:   # e.g. the certified variant's scores: from the block's input
            extras = {name: _from_input(graph, block, node, x) if value is None else value
                      for (name, value), node in zip(extras.items(), block.inputs[4:])}
        row_mode, pattern, n_ff = variant.report_mode or variant.name, attrs["pattern"], sizes(attrs, w_gate.shape)[0]
        # each matrix's stored bytes, for the effective sparsity (layouts may differ: a q8_0 down beside q4 rows)
        if all(w.op == "weight" for w in block.inputs[1:4]):
            attrs["weight_bytes"] = tuple(float(graph.weights[w.attrs["name"]].nbytes) for w in block.inputs[1:4])
        fields.update(variant.report(attrs))
        # the variant's own semantics, whole block (a lossless variant's h needs no extra input)
        if x2d is not None and (not variant.lossy or all(e is not None for e in extras)):
            h = variant.intermediate(x2d, w_gate, w_up, extras, attrs)
            fields["sparsity"] = float(np.mean(h == 0))
            fields.update(variant.measure(x2d, w_gate, w_up, extras, attrs, h))
    else:
        _, w_gate, w_up, w_down, b_gate, b_up = unpack_gated_inputs(arrays, attrs)
        row_mode, n_ff = "dense", w_gate.shape[0]
        pattern = pattern_name(attrs["gate_act"], attrs["up_act"]) + ("-fused" if attrs["fused"] else "")
        if mode != "dense" and not exactly_sparse(attrs["gate_act"]):
            fields["reason"] = (f"{pattern_name(attrs['gate_act'], attrs['up_act'])} is not exactly sparse "
                                f"(act={attrs['gate_act']}); exact mode needs ReLU-family")
        elif mode != "dense" and not all(np.isfinite(w).all() for w in (w_gate, w_up, w_down)):  # sparsify-exact
            fields["reason"] = ("its weights hold NaN/Inf: skipping inactive neurons would hide the NaN that 0 * Inf "
                                "gives (as torch computes it)")
        if x2d is not None:  # a few rows at a time: float32 copies of ROWS_PER_STEP weight rows, not whole matrices
            zeros = 0
            for start in range(0, n_ff, ROWS_PER_STEP):
                rows = slice(start, start + ROWS_PER_STEP)
                wg, wu, bg, bu = (None if a is None else np.asarray(a[rows], x2d.dtype)
                                  for a in (w_gate, w_up, b_gate, b_up))
                zeros += int(np.count_nonzero(dense_intermediate(x2d, wg, wu, attrs, bg, bu) == 0))
            fields["sparsity"] = zeros / (x2d.shape[0] * n_ff)
    return BlockReport(block.loc, pattern, row_mode, n_ff, **fields)


def _routing(block: Node, x: np.ndarray, graph: Graph, computed: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """A routed_moe's (route_w, route_i) on the example as [tokens, k] each, or None where they cannot be had."""
    pair = [computed.get((id(block), id(n))) for n in block.inputs[4:6]]
    if any(v is None for v in pair):
        pair = [_from_input(graph, block, n, x) for n in block.inputs[4:6]]
    if any(v is None for v in pair):
        return None
    k = np.shape(pair[0])[-1]
    return np.asarray(pair[0], np.float32).reshape(-1, k), np.asarray(pair[1]).reshape(-1, k)


def _from_input(graph: Graph, block: Node, node: Node, x: np.ndarray) -> np.ndarray | None:
    """An extra input of `block` computed from the block's input `x` alone (None when it needs more)."""
    x = np.asarray(x, np.float32)
    rank = block.inputs[0].type.rank
    if x.ndim < rank:  # the kernel call's flattened tokens: ops of one token at a time see the same rows
        x = x.reshape((1,) * (rank - x.ndim) + x.shape)
    try:
        return evaluate_from(graph, node, {id(block.inputs[0]): x})
    except KeyError:
        return None


def finding_rows(notes: Sequence[dict]) -> list[BlockReport]:
    """Rows for what the passes found but left as ordinary ops (notes with kind 'row', e.g. plain MLPs)."""
    return [BlockReport(n["location"], n["pattern"], n["mode"], n.get("n_ff", 0), None, n["reason"])
            for n in notes if n.get("kind") == "row"]


def build_report(target: str, mode: str, graph: Graph, dense_graph: Graph | None, example_inputs, pass_stats: dict,
                 notes: Sequence[dict] = (), module=None) -> Report:
    """The compile report: a row per gated MLP node, rows for the passes' findings, and for lossy modes
    (`dense_graph` given) the outputs' relative error vs the dense graph. With `module` (the compiled graph, runnable
    here) and no lossy mode, the sparsity comes from the module's own run, not from a numpy forward."""
    if module is not None and module.runnable and dense_graph is None:
        rows = measure_blocks_compiled(module, graph, example_inputs, mode)
    else:
        rows = measure_blocks(graph, example_inputs, mode)
    # a finding a later pass turned into a block (threshold mode's plain MLPs) is reported by its block's row
    found = [r for r in finding_rows(notes) if r.location not in {b.location for b in rows}]
    report = Report(target, mode, rows + found, pass_stats)
    # why a pass left a block in the form it runs in (e.g. threshold mode's cost rule: three linears), said by its note
    kept = {n["location"]: n for n in notes if str(n.get("kind", "")).startswith("kept-") and n.get("reason")}
    for b in report.blocks:
        if b.location in kept and kept[b.location].get("mode") == b.mode:
            b.reason = kept[b.location]["reason"]
    splits = {n["location"]: n for n in notes if n.get("kind") == "hot-cold"}
    for b in report.blocks:
        if b.location in splits:
            n = splits[b.location]
            b.hot_neurons, b.cold_neurons, b.cold_window, b.predicted_us = (n["hot"], n["cold"], n["window"],
                                                                            n["predicted_us"])
            report.memory_budget, report.solver_objective_us = n["budget"], n["objective_us"]
    statistics = {n["location"]: n for n in notes if n.get("kind") == "activation-statistics"}
    for b in report.blocks:   # per-neuron data is too big for node attributes: it comes with the pass's notes
        if b.location in statistics:
            b.neuron_cdf, b.firing_frequency = statistics[b.location]["neuron_cdf"], statistics[b.location]["frequency"]
    if dense_graph is not None:
        report.output_rel_error = output_rel_error(dense_graph, graph, example_inputs)
        if dense_graph.count("embedding"):   # a language model: its first output is logits
            report.top1_agreement = top1_agreement(dense_graph, graph, example_inputs)
    return report


def top1_agreement(dense: Graph, graph: Graph, example_inputs: Sequence[np.ndarray]) -> float | None:
    """Share of positions where the first output's argmax over its last axis (the next token, for logits) equals
    the dense graph's."""
    y, y_dense = evaluate(graph, example_inputs)[0], evaluate(dense, example_inputs)[0]
    return float(np.mean(y.argmax(-1) == y_dense.argmax(-1)))


def output_rel_error(dense: Graph, graph: Graph, example_inputs: Sequence[np.ndarray]) -> float:
    """max over outputs of ||y - y_dense|| / ||y_dense||, both graphs run by the reference interpreter."""
    errors = []
    for y, y_dense in zip(evaluate(graph, example_inputs), evaluate(dense, example_inputs)):
        y, y_dense = np.asarray(y, np.float64), np.asarray(y_dense, np.float64)
        errors.append(float(np.linalg.norm(y - y_dense) / max(np.linalg.norm(y_dense), 1e-30)))
    return max(errors) if errors else 0.0
