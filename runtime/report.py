"""The compile report: one row per MLP block found — where it is, its pattern, the mode it runs in, its width,
the sparsity measured on the example inputs — plus the blocks left dense and why.

Every field of a block's row comes from its node: location, pattern (the node's own `pattern` attribute),
mode (its variant), expert, and the fields its variant's entry declares (`report` in ir/sparse_variants.py:
threshold, method, calibrated sparsity ...). Nothing is matched up by location strings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..ir import Graph, Node, evaluate, weight_value
from ..ir.activations import exactly_sparse
from ..ir.interpreter import evaluate_from
from ..ir.mlp import pattern_name, unpack_gated_inputs
from ..ir.moe import expert_rows
from ..ir.sparse_variants import VARIANTS, dense_intermediate, sizes, split_inputs, variant_of


@dataclass
class BlockReport:
    location: str
    pattern: str
    mode: str
    n_ff: int
    sparsity: float | None = None    # fraction of intermediate neurons exactly zero, per token, averaged
    reason: str = ""
    expert: int | None = None        # the expert index of an MoE block
    # lossy modes (threshold): what calibration chose and the sparsity it measured on the calibration data;
    # `sparsity` above is then measured on the example inputs, which are held out from calibration
    calibrated_sparsity: float | None = None
    threshold: float | None = None
    method: str | None = None
    # predictor mode: measured on the example inputs (recall = share of truly active neurons predicted active,
    # predicted_sparsity = share predicted inactive; `sparsity` is then the block's own activation sparsity), and
    # what calibration chose and saw (from the node, the CDF and frequencies from the pass's notes)
    recall: float | None = None
    predicted_sparsity: float | None = None
    predictor: str | None = None
    rank: int | None = None
    predictor_bytes_pct: float | None = None     # of the block's MLP weight bytes
    calibrated_recall: float | None = None
    neuron_cdf: list[float] | None = None        # share of activations covered by the top 0%, 5%, ..., 100% neurons
    firing_frequency: list[float] | None = None  # per neuron, on the calibration data
    # fraction of the block's MLP weight bytes a token does not read (what turns into speed), measured on the
    # example inputs; `effective_calibrated` as calibration estimated it; input mode: x's own sparsity too
    effective_sparsity: float | None = None
    effective_calibrated: float | None = None
    input_sparsity: float | None = None
    # a hot/cold split under a memory budget (passes/split_hot_cold.py): the layer's neurons in fast memory, those
    # read on demand, the LRU window kept resident of those, and the cost model's predicted time per token
    hot_neurons: int | None = None
    cold_neurons: int | None = None
    cold_window: int | None = None
    predicted_us: float | None = None
    # exact mode: "certified" where an int8 gate copy certifies neurons inactive before the gate rows are read
    # (passes/certify_exact_gate.py); None: every gate row read
    exact_gate: str | None = None


_FIELD_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "None": (type(None),)}


def _check_field_types(obj) -> None:
    """The dataclass's scalar fields hold what their annotations say (bool is not a number here)."""
    for f in fields(obj):
        allowed = [_FIELD_TYPES.get(t.strip()) for t in str(f.type).split("|")]
        if None in allowed:  # not a scalar annotation (blocks, pass_stats): checked by the caller
            continue
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, tuple(t for ts in allowed for t in ts)):
            raise ValueError(f"report field {f.name} should be {f.type}, got {type(value).__name__}")


@dataclass
class Report:
    target: str
    mode: str
    blocks: list[BlockReport] = field(default_factory=list)
    pass_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    # lossy modes: ||y - y_dense|| / ||y_dense|| of the outputs (logits) on the example inputs, reference interpreter
    output_rel_error: float | None = None
    # lossy modes on a language model: share of positions whose top-1 next token equals the dense model's
    top1_agreement: float | None = None
    # a hot/cold split: the budget (bytes) and the solver's objective (predicted MLP time per token, µs)
    memory_budget: int | None = None
    solver_objective_us: float | None = None
    # what the user should know about the whole model, one sentence each (a decoder that recomputes: why, the cost)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"target": self.target, "mode": self.mode, "blocks": [asdict(b) for b in self.blocks],
                "pass_stats": self.pass_stats, "output_rel_error": self.output_rel_error,
                "top1_agreement": self.top1_agreement, "memory_budget": self.memory_budget,
                "solver_objective_us": self.solver_objective_us, "notes": list(self.notes)}

    @staticmethod
    def from_dict(data: dict) -> Report:
        """The inverse of `to_dict`; data of the wrong shape or type (a manifest read from disk) is a ValueError."""
        if not isinstance(data, dict) or not isinstance(data.get("blocks"), list):
            raise ValueError("a report is a dict with a list of blocks")
        report = Report(data["target"], data["mode"], [BlockReport(**b) for b in data["blocks"]], data["pass_stats"],
                        data.get("output_rel_error"), data.get("top1_agreement"), data.get("memory_budget"),
                        data.get("solver_objective_us"), data.get("notes", []))
        if not isinstance(report.notes, list) or not all(isinstance(n, str) for n in report.notes):
            raise ValueError("report notes must be a list of strings")
        for obj in (report, *report.blocks):
            _check_field_types(obj)
        stats = report.pass_stats
        if not isinstance(stats, dict) or not all(isinstance(v, dict) and all(type(c) is int for c in v.values())
                                                  for v in stats.values()):
            raise ValueError("report pass_stats must map pass names to {pattern: count}")
        return report

    @property
    def effective_sparsity(self) -> float | None:
        """Model-wide fraction of MLP weight bytes not read per token (blocks weighted by their width)."""
        rows = [b for b in self.blocks if b.effective_sparsity is not None]
        if not rows:
            return None
        return float(np.average([b.effective_sparsity for b in rows], weights=[max(b.n_ff, 1) for b in rows]))

    @property
    def mean_sparsity(self) -> float | None:
        values = [b.sparsity for b in self.blocks if b.sparsity is not None]
        return float(np.mean(values)) if values else None

    def __rich__(self):
        from rich.table import Table

        lossy = any(b.calibrated_sparsity is not None for b in self.blocks)
        # exact mode's certified gate carries the bound predictor's figures: one "certified" column is enough there
        predicted = any(b.predictor is not None and b.exact_gate is None for b in self.blocks)
        certified = not predicted and any(b.exact_gate == "certified" for b in self.blocks)
        caption = None if self.output_rel_error is None else (
            f"outputs vs dense: relative error {self.output_rel_error:.2e}"
            + ("" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.1%}")
            + " (on the example inputs)")
        if lossy and self.effective_sparsity is not None:
            caption = (caption or "") + (f"; model: {self.effective_sparsity:.1%} of MLP weight bytes not read per "
                                         "token (effective sparsity)")
        table = Table(title=f"actsparse report — target {self.target}, mode {self.mode}", caption=caption)
        extra = (("recall", "predicted", "rank", "bytes %", "top 20% cover") if predicted else
                 ("certified",) if certified else ())
        lossy_columns = ("calibrated", "threshold", "x sparsity", "effective")
        split = ("hot", "cold", "window", "pred µs") if any(b.hot_neurons is not None for b in self.blocks) else ()
        numeric = ("n_ff", "sparsity", *lossy_columns, *extra, *split)
        columns = ("location", "pattern", "mode", "n_ff", "sparsity", *(lossy_columns if lossy else ()), *extra,
                   *split, "note")
        for col in columns:  # the cells that name a block never wrap: a long note wraps instead
            table.add_column(col, justify="right" if col in numeric else "left",
                             no_wrap=col in ("location", "pattern", "mode", "certified"), overflow="fold")
        for b in self.blocks:
            pattern = b.pattern if b.expert is None else f"{b.pattern} (expert {b.expert})"
            lossy_cells = (_percent(b.calibrated_sparsity), "-" if b.threshold is None else f"{b.threshold:.3g}",
                           _percent(b.input_sparsity), _percent(b.effective_sparsity))
            predictor_cells = (_percent(b.recall), _percent(b.predicted_sparsity), str(b.rank or "-"),
                               "-" if b.predictor_bytes_pct is None else f"{b.predictor_bytes_pct:.1f}%",
                               "-" if not b.neuron_cdf else _percent(b.neuron_cdf[len(b.neuron_cdf) // 5]))
            split_cells = tuple("-" if v is None else f"{v:g}" for v in (b.hot_neurons, b.cold_neurons, b.cold_window,
                                                                          b.predicted_us))
            table.add_row(b.location, pattern, b.mode, str(b.n_ff), _percent(b.sparsity),
                          *(lossy_cells if lossy else ()),
                          *(predictor_cells if predicted else (_percent(b.predicted_sparsity),) if certified else ()),
                          *(split_cells if split else ()), b.reason)
        if not self.notes:
            return table
        from rich.console import Group
        from rich.text import Text

        return Group(table, *(Text(f"note: {note}") for note in self.notes))

    def __str__(self) -> str:
        from io import StringIO

        from rich.console import Console

        buffer = StringIO()
        Console(file=buffer, width=140, force_terminal=False).print(self)
        return buffer.getvalue()

    def plot(self, path: str) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [b for b in self.blocks if b.sparsity is not None]
        cdfs = [b for b in self.blocks if b.neuron_cdf]
        split = {b.location: b for b in self.blocks if b.hot_neurons is not None}
        panels = 1 + bool(cdfs) + bool(split)
        fig, axes = plt.subplots(1, panels, figsize=(max(4, 0.6 * len(rows) + 2) + 4 * (panels - 1), 3.2),
                                 squeeze=False)
        if split:
            from .report_plots import plot_hot_cold

            plot_hot_cold(axes[0][panels - 1], list(split.values()), self.memory_budget, self.solver_objective_us)
        ax = axes[0][0]
        ax.bar(range(len(rows)), [100 * b.sparsity for b in rows],
               color=["tab:green" if b.mode != "dense" else "tab:gray" for b in rows])
        ax.set_xticks(range(len(rows)), [b.location for b in rows], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("inactive neurons per token (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"MLP activation sparsity ({self.mode}, {self.target})")
        if cdfs:   # per layer: share of activations covered by the top x% most frequently firing neurons
            cdf_ax = axes[0][1]
            for b in cdfs:
                cdf_ax.plot(np.linspace(0, 100, len(b.neuron_cdf)), 100 * np.asarray(b.neuron_cdf), lw=1,
                            label=b.location)
            cdf_ax.plot([0, 100], [0, 100], ls=":", color="gray")
            cdf_ax.set_xlabel("top neurons by firing frequency (%)")
            cdf_ax.set_ylabel("activations covered (%)")
            cdf_ax.set_title("neuron CDF (calibration data)")
            if len(cdfs) <= 12:
                cdf_ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


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
    for e in range(attrs["experts"]):  # the sparsity of each expert over every token (the routing is not kept)
        part = expert_rows(attrs, w_gate.shape[0], e)
        fields: dict = {"expert": e, "sparsity": None}
        if mode != "dense" and not exactly_sparse(attrs["gate_act"]):
            fields["reason"] = (f"{pattern_name(attrs['gate_act'], attrs['up_act'])} is not exactly sparse "
                                f"(act={attrs['gate_act']}); exact mode needs ReLU-family")
        if x2d is not None:
            biases = [np.asarray(weight_value(graph, b), np.float32)[part] for b in block.inputs[6:8]]  # bias=True
            h = dense_intermediate(x2d, np.asarray(w_gate[part], np.float32), np.asarray(w_up[part], np.float32),
                                   attrs, *biases)
            fields["sparsity"] = float(np.mean(h == 0))
            if attrs["mode"] in VARIANTS:
                fields.update(VARIANTS[attrs["mode"]].measure(x2d, None, None, {}, attrs, h))
        rows.append(BlockReport(f"{block.loc}.{e}", attrs["pattern"], attrs["mode"], part.stop - part.start,
                                **fields))
    return rows


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
    report = Report(target, mode, rows + finding_rows(notes), pass_stats)
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
