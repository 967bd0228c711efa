"""The compile report: one row per MLP block found — where it is, its pattern, the mode it runs in, its width,
the sparsity measured on the example inputs — plus the blocks left dense and why.

Every field of a block's row comes from its node: location, pattern (the node's own `pattern` attribute),
mode (its variant), expert, and the fields its variant's entry declares (`report` in ir/sparse_variants.py:
threshold, method, calibrated sparsity ...). Nothing is matched up by location strings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..ir import Graph, Node, evaluate
from ..ir.activations import exactly_sparse
from ..ir.mlp import pattern_name, unpack_gated_inputs
from ..ir.sparse_variants import dense_intermediate, sizes, split_inputs, variant_of


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
    # fraction of the block's MLP weight bytes a token does not read (what turns into speed), measured on the
    # example inputs; `effective_calibrated` as calibration estimated it; input mode: x's own sparsity too
    effective_sparsity: float | None = None
    effective_calibrated: float | None = None
    input_sparsity: float | None = None


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

    def to_dict(self) -> dict:
        return {"target": self.target, "mode": self.mode, "blocks": [asdict(b) for b in self.blocks],
                "pass_stats": self.pass_stats, "output_rel_error": self.output_rel_error}

    @staticmethod
    def from_dict(data: dict) -> Report:
        """The inverse of `to_dict`; data of the wrong shape or type (a manifest read from disk) is a ValueError."""
        if not isinstance(data, dict) or not isinstance(data.get("blocks"), list):
            raise ValueError("a report is a dict with a list of blocks")
        report = Report(data["target"], data["mode"], [BlockReport(**b) for b in data["blocks"]], data["pass_stats"],
                        data.get("output_rel_error"))
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
        caption = None if self.output_rel_error is None else (
            f"outputs vs dense: relative error {self.output_rel_error:.2e} (on the example inputs)")
        if lossy and self.effective_sparsity is not None:
            caption = (caption or "") + (f"; model: {self.effective_sparsity:.1%} of MLP weight bytes not read per "
                                         "token (effective sparsity)")
        table = Table(title=f"actsparse report — target {self.target}, mode {self.mode}", caption=caption)
        numeric = ("n_ff", "sparsity", "calibrated", "threshold", "x sparsity", "effective")
        lossy_columns = ("calibrated", "threshold", "x sparsity", "effective")
        columns = ("location", "pattern", "mode", "n_ff", "sparsity", *(lossy_columns if lossy else ()),
                   "note")
        for col in columns:
            table.add_column(col, justify="right" if col in numeric else "left")
        for b in self.blocks:
            pattern = b.pattern if b.expert is None else f"{b.pattern} (expert {b.expert})"
            lossy_cells = (_percent(b.calibrated_sparsity), "-" if b.threshold is None else f"{b.threshold:.3g}",
                           _percent(b.input_sparsity), _percent(b.effective_sparsity))
            table.add_row(b.location, pattern, b.mode, str(b.n_ff), _percent(b.sparsity),
                          *(lossy_cells if lossy else ()), b.reason)
        return table

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
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(rows) + 2), 3.2))
        ax.bar(range(len(rows)), [100 * b.sparsity for b in rows],
               color=["tab:green" if b.mode != "dense" else "tab:gray" for b in rows])
        ax.set_xticks(range(len(rows)), [b.location for b in rows], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("inactive neurons per token (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"MLP activation sparsity ({self.mode}, {self.target})")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


MLP_OPS = ("gated_mlp", "sparse_gated_mlp")


def measure_blocks(graph: Graph, example_inputs: Sequence[np.ndarray], mode: str = "dense") -> list[BlockReport]:
    """One row per gated MLP node, every field from the node (its variant's `report` fields included), and the
    intermediate sparsity measured by running the reference interpreter once on the example inputs."""
    blocks = [n for n in graph.nodes if n.op in MLP_OPS]
    values = evaluate(graph, example_inputs, keep=[b.inputs[0] for b in blocks]) if blocks else []
    xs = values[len(graph.outputs):]
    return [_block_row(block, x, graph, mode) for block, x in zip(blocks, xs)]


def _block_row(block: Node, x: np.ndarray, graph: Graph, mode: str) -> BlockReport:
    arrays = [x, *(graph.weights[w.attrs["name"]] if w.op == "weight" else None for w in block.inputs[1:])]
    attrs = {"threshold": 0.0, "fused": False, **block.attrs}
    x2d = x.reshape(-1, x.shape[-1])
    expert = attrs.get("expert", -1)
    fields: dict = {"expert": expert if expert >= 0 else None}
    if block.op == "sparse_gated_mlp":
        (_, w_gate, w_up, _), extras = split_inputs(arrays, attrs)
        variant = variant_of(attrs)
        h = variant.intermediate(x2d, w_gate, w_up, extras, attrs)
        row_mode, pattern = variant.name, attrs["pattern"]
        fields.update(variant.report(attrs))
        fields.update(variant.measure(x2d, w_gate, w_up, extras, attrs, h))
        n_ff = sizes(attrs, w_gate.shape)[0]
    else:
        _, w_gate, w_up, _, b_gate, b_up = unpack_gated_inputs(arrays, attrs)
        h = dense_intermediate(x2d, w_gate, w_up, attrs, b_gate, b_up)
        row_mode, n_ff = "dense", w_gate.shape[0]
        pattern = pattern_name(attrs["gate_act"], attrs["up_act"]) + ("-fused" if attrs["fused"] else "")
        if mode != "dense" and not exactly_sparse(attrs["gate_act"]):
            fields["reason"] = (f"{pattern_name(attrs['gate_act'], attrs['up_act'])} is not exactly sparse "
                                f"(act={attrs['gate_act']}); exact mode needs ReLU-family")
    return BlockReport(block.loc, pattern, row_mode, n_ff, float(np.mean(h == 0)), **fields)


def finding_rows(notes: Sequence[dict]) -> list[BlockReport]:
    """Rows for what the passes found but left as ordinary ops (notes with kind 'row', e.g. plain MLPs)."""
    return [BlockReport(n["location"], n["pattern"], n["mode"], n.get("n_ff", 0), None, n["reason"])
            for n in notes if n.get("kind") == "row"]


def build_report(target: str, mode: str, graph: Graph, dense_graph: Graph | None, example_inputs, pass_stats: dict,
                 notes: Sequence[dict] = ()) -> Report:
    """The compile report: a row per gated MLP node, rows for the passes' findings, and for lossy modes
    (`dense_graph` given) the outputs' relative error vs the dense graph."""
    report = Report(target, mode, measure_blocks(graph, example_inputs, mode) + finding_rows(notes), pass_stats)
    if dense_graph is not None:
        report.output_rel_error = output_rel_error(dense_graph, graph, example_inputs)
    return report


def output_rel_error(dense: Graph, graph: Graph, example_inputs: Sequence[np.ndarray]) -> float:
    """max over outputs of ||y - y_dense|| / ||y_dense||, both graphs run by the reference interpreter."""
    errors = []
    for y, y_dense in zip(evaluate(graph, example_inputs), evaluate(dense, example_inputs)):
        y, y_dense = np.asarray(y, np.float64), np.asarray(y_dense, np.float64)
        errors.append(float(np.linalg.norm(y - y_dense) / max(np.linalg.norm(y_dense), 1e-30)))
    return max(errors) if errors else 0.0
