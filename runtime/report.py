"""The compile report: one row per MLP block found — where it is, its pattern, the mode it runs in, its width,
the sparsity measured on the example inputs — plus the blocks left dense and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..ir import Graph, evaluate
from ..ir.input_sparse import input_sparse_parts
from ..ir.mlp import pattern_name, unpack_gated_inputs
from ..ir.threshold import sparse_intermediate


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
    # example inputs; `effective_calibrated` as calibration estimated it. Input mode: x's own sparsity too.
    effective_sparsity: float | None = None
    effective_calibrated: float | None = None
    input_sparsity: float | None = None


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
        return Report(data["target"], data["mode"], [BlockReport(**b) for b in data["blocks"]], data["pass_stats"],
                      data.get("output_rel_error"))

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
        if self.effective_sparsity is not None:
            caption = (caption or "") + (f"; model: {self.effective_sparsity:.1%} of MLP weight bytes not read per "
                                         "token (effective sparsity)")
        table = Table(title=f"actsparse report — target {self.target}, mode {self.mode}", caption=caption)
        numeric = ("n_ff", "sparsity", "calibrated", "threshold", "x sparsity", "effective")
        lossy_columns = ("calibrated", "threshold", "x sparsity", "effective")
        columns = ("location", "pattern", "mode", "n_ff", "sparsity", *(lossy_columns if lossy else ()), "note")
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


def measure_blocks(graph: Graph, example_inputs: Sequence[np.ndarray]) -> list[BlockReport]:
    """Run the reference interpreter once, keeping each MLP's input, and measure its intermediate sparsity."""
    blocks = [n for n in graph.nodes if n.op in MLP_OPS]
    values = evaluate(graph, example_inputs, keep=[b.inputs[0] for b in blocks]) if blocks else []
    xs = values[len(graph.outputs):]
    reports = []
    for block, x in zip(blocks, xs):
        arrays = [x, *(graph.weights[w.attrs["name"]] for w in block.inputs[1:])]
        attrs = {"threshold": 0.0, "fused": False, **block.attrs}
        mode = block.attrs.get("mode", "dense")
        pattern = pattern_name(attrs["gate_act"], attrs["up_act"]) + ("-fused" if attrs["fused"] else "")
        expert = attrs.get("expert", -1)
        rows = x.reshape(-1, x.shape[-1]).astype(np.float32)
        if mode == "input":
            keep_x, keep_h, _ = input_sparse_parts(rows, *arrays[1:3], *arrays[4:6], attrs)
            sx, sh = float(1 - keep_x.mean()), float(1 - keep_h.mean())
            report = BlockReport(block.loc, pattern, mode, arrays[1].shape[1], sh, input_sparsity=sx,
                                 effective_sparsity=(2 * sx + sh) / 3)   # gate + up behind x, down behind h
        else:
            if block.op == "sparse_gated_mlp":
                w_gate, w_up, b_gate, b_up = arrays[1], arrays[2], None, None
            else:
                _, w_gate, w_up, _, b_gate, b_up = unpack_gated_inputs(arrays, attrs)
            s = float(np.mean(sparse_intermediate(rows, w_gate, w_up, attrs, b_gate, b_up) == 0))
            # exact / gate criterion: up and down rows of the inactive neurons; product: down rows only
            skipped = {"threshold": 1 / 3 if attrs.get("criterion") == "product" else 2 / 3, "exact": 2 / 3}
            report = BlockReport(block.loc, pattern, mode, w_gate.shape[0], s,
                                 effective_sparsity=s * skipped.get(mode, 0.0))
        report.expert = expert if expert >= 0 else None
        reports.append(report)
    return reports


def output_rel_error(dense: Graph, graph: Graph, example_inputs: Sequence[np.ndarray]) -> float:
    """max over outputs of ||y - y_dense|| / ||y_dense||, both graphs run by the reference interpreter."""
    errors = []
    for y, y_dense in zip(evaluate(graph, example_inputs), evaluate(dense, example_inputs)):
        y, y_dense = np.asarray(y, np.float64), np.asarray(y_dense, np.float64)
        errors.append(float(np.linalg.norm(y - y_dense) / max(np.linalg.norm(y_dense), 1e-30)))
    return max(errors) if errors else 0.0
