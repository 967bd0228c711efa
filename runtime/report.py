"""The compile report: one row per MLP block found — where it is, its pattern, the mode it runs in, its width,
the sparsity measured on the example inputs — plus the blocks left dense and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..ir import Graph, evaluate
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
    # predictor mode: measured on the example inputs (recall = share of truly active neurons predicted active,
    # predicted_sparsity = share predicted inactive), then what calibration chose and saw
    recall: float | None = None
    predicted_sparsity: float | None = None
    predictor: str | None = None
    rank: int | None = None
    predictor_bytes: int | None = None
    predictor_bytes_pct: float | None = None     # of the block's MLP weight bytes
    calibrated_recall: float | None = None
    neuron_cdf: list[float] | None = None        # share of activations covered by the top 0%, 5%, ..., 100% neurons
    firing_frequency: list[float] | None = None  # per neuron, on the calibration data

    def predictor_notes(self, note: dict) -> None:
        """Take what the sparsify-predictor pass chose and measured on the calibration data."""
        self.calibrated_sparsity, self.threshold = note["calibrated_sparsity"], note["cutoff"]
        for key in ("predictor", "rank", "predictor_bytes", "predictor_bytes_pct", "calibrated_recall", "neuron_cdf",
                    "firing_frequency"):
            setattr(self, key, note[key])


@dataclass
class Report:
    target: str
    mode: str
    blocks: list[BlockReport] = field(default_factory=list)
    pass_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    # lossy modes: ||y - y_dense|| / ||y_dense|| of the outputs (logits) on the example inputs, reference interpreter
    output_rel_error: float | None = None
    # lossy modes: share of output positions whose argmax (top-1 token of logits) equals the dense model's
    top1_agreement: float | None = None

    def to_dict(self) -> dict:
        return {"target": self.target, "mode": self.mode, "blocks": [asdict(b) for b in self.blocks],
                "pass_stats": self.pass_stats, "output_rel_error": self.output_rel_error,
                "top1_agreement": self.top1_agreement}

    @staticmethod
    def from_dict(data: dict) -> Report:
        return Report(data["target"], data["mode"], [BlockReport(**b) for b in data["blocks"]], data["pass_stats"],
                      data.get("output_rel_error"), data.get("top1_agreement"))

    @property
    def mean_sparsity(self) -> float | None:
        values = [b.sparsity for b in self.blocks if b.sparsity is not None]
        return float(np.mean(values)) if values else None

    def __rich__(self):
        from rich.table import Table

        lossy = any(b.calibrated_sparsity is not None for b in self.blocks)
        predicted = any(b.predictor is not None for b in self.blocks)
        caption = None if self.output_rel_error is None else (
            f"outputs vs dense: relative error {self.output_rel_error:.2e}"
            + ("" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.1%}")
            + " (on the example inputs)")
        table = Table(title=f"actsparse report — target {self.target}, mode {self.mode}", caption=caption)
        extra = ("recall", "predicted", "rank", "bytes %", "top 20% cover") if predicted else ()
        numeric = ("n_ff", "sparsity", "calibrated", "threshold", *extra)
        columns = ("location", "pattern", "mode", "n_ff", "sparsity", *(("calibrated", "threshold") if lossy else ()),
                   *extra, "note")
        for col in columns:
            table.add_column(col, justify="right" if col in numeric else "left")
        for b in self.blocks:
            pattern = b.pattern if b.expert is None else f"{b.pattern} (expert {b.expert})"
            lossy_cells = (_percent(b.calibrated_sparsity), "-" if b.threshold is None else f"{b.threshold:.3g}")
            predictor_cells = (_percent(b.recall), _percent(b.predicted_sparsity), str(b.rank or "-"),
                               "-" if b.predictor_bytes_pct is None else f"{b.predictor_bytes_pct:.1f}%",
                               "-" if not b.neuron_cdf else _percent(b.neuron_cdf[len(b.neuron_cdf) // 5]))
            table.add_row(b.location, pattern, b.mode, str(b.n_ff), _percent(b.sparsity),
                          *(lossy_cells if lossy else ()), *(predictor_cells if predicted else ()), b.reason)
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
        cdfs = [b for b in self.blocks if b.neuron_cdf]
        fig, axes = plt.subplots(1, 2 if cdfs else 1, figsize=(max(4, 0.6 * len(rows) + 2) + (4 if cdfs else 0), 3.2),
                                 squeeze=False)
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


MLP_OPS = ("gated_mlp", "sparse_gated_mlp")


def measure_blocks(graph: Graph, example_inputs: Sequence[np.ndarray]) -> list[BlockReport]:
    """Run the reference interpreter once, keeping each MLP's input, and measure its intermediate sparsity."""
    blocks = [n for n in graph.nodes if n.op in MLP_OPS]
    scored = [b for b in blocks if len(b.inputs) == 5]   # predictor mode: the 5th input holds the scores
    values = evaluate(graph, example_inputs, keep=[b.inputs[0] for b in blocks] + [b.inputs[4] for b in scored]
                      ) if blocks else []
    xs = values[len(graph.outputs):len(graph.outputs) + len(blocks)]
    scores = dict(zip(map(id, scored), values[len(graph.outputs) + len(blocks):]))
    reports = []
    for block, x in zip(blocks, xs):
        arrays = [x, *(graph.weights[w.attrs["name"]] for w in block.inputs[1:] if w.op == "weight")]
        attrs = {"threshold": 0.0, "fused": False, **block.attrs}
        if block.op == "sparse_gated_mlp":
            w_gate, w_up, b_gate, b_up = arrays[1], arrays[2], None, None
        else:
            _, w_gate, w_up, _, b_gate, b_up = unpack_gated_inputs(arrays, attrs)
        h = sparse_intermediate(x.reshape(-1, x.shape[-1]), w_gate, w_up, attrs, b_gate, b_up)
        mode = block.attrs.get("mode", "dense")
        pattern = pattern_name(attrs["gate_act"], attrs["up_act"]) + ("-fused" if attrs["fused"] else "")
        expert = attrs.get("expert", -1)
        reports.append(BlockReport(block.loc, pattern, mode, w_gate.shape[0], float(np.mean(h == 0)),
                                   expert=expert if expert >= 0 else None))
        if id(block) in scores:
            predicted = scores[id(block)].reshape(h.shape) > attrs["cutoff"]
            active = h != 0
            reports[-1].recall = float((predicted & active).sum() / max(active.sum(), 1))
            reports[-1].predicted_sparsity = 1.0 - float(predicted.mean())   # `sparsity` stays the true one
    return reports


def top1_agreement(dense: Graph, graph: Graph, example_inputs: Sequence[np.ndarray]) -> float | None:
    """Share of positions where the first output's argmax over its last axis (the next token, for logits) equals
    the dense graph's; None when that output is not a float tensor with a last axis > 1."""
    y, y_dense = evaluate(graph, example_inputs)[0], evaluate(dense, example_inputs)[0]
    if y.ndim == 0 or y.shape[-1] < 2 or not np.issubdtype(y.dtype, np.floating):
        return None
    return float(np.mean(y.argmax(-1) == y_dense.argmax(-1)))


def output_rel_error(dense: Graph, graph: Graph, example_inputs: Sequence[np.ndarray]) -> float:
    """max over outputs of ||y - y_dense|| / ||y_dense||, both graphs run by the reference interpreter."""
    errors = []
    for y, y_dense in zip(evaluate(graph, example_inputs), evaluate(dense, example_inputs)):
        y, y_dense = np.asarray(y, np.float64), np.asarray(y_dense, np.float64)
        errors.append(float(np.linalg.norm(y - y_dense) / max(np.linalg.norm(y_dense), 1e-30)))
    return max(errors) if errors else 0.0
