"""The compile report: one row per MLP block found — where it is, its pattern, the mode it runs in, its width,
the sparsity measured on the example inputs — plus the blocks left dense and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..ir import Graph, evaluate
from ..ir.mlp import intermediate, pattern_name, unpack_gated_inputs


@dataclass
class BlockReport:
    location: str
    pattern: str
    mode: str
    n_ff: int
    sparsity: float | None = None    # fraction of intermediate neurons exactly zero, per token, averaged
    reason: str = ""


@dataclass
class Report:
    target: str
    mode: str
    blocks: list[BlockReport] = field(default_factory=list)
    pass_stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"target": self.target, "mode": self.mode, "blocks": [asdict(b) for b in self.blocks],
                "pass_stats": self.pass_stats}

    @staticmethod
    def from_dict(data: dict) -> Report:
        return Report(data["target"], data["mode"], [BlockReport(**b) for b in data["blocks"]], data["pass_stats"])

    @property
    def mean_sparsity(self) -> float | None:
        values = [b.sparsity for b in self.blocks if b.sparsity is not None]
        return float(np.mean(values)) if values else None

    def __str__(self) -> str:
        from io import StringIO

        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"actsparse report — target {self.target}, mode {self.mode}")
        for col in ("location", "pattern", "mode", "n_ff", "sparsity", "note"):
            table.add_column(col, justify="right" if col in ("n_ff", "sparsity") else "left")
        for b in self.blocks:
            table.add_row(b.location, b.pattern, b.mode, str(b.n_ff),
                          "-" if b.sparsity is None else f"{b.sparsity:.1%}", b.reason)
        buffer = StringIO()
        Console(file=buffer, width=140, force_terminal=False).print(table)
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
        if block.op == "sparse_gated_mlp":
            w_gate, w_up = arrays[1], arrays[2]
            n_ff = w_gate.shape[0]
        else:
            _, w_gate, w_up, _ = unpack_gated_inputs(arrays, attrs)
            n_ff = w_gate.shape[0]
        h = intermediate(x.reshape(-1, x.shape[-1]), w_gate, w_up, attrs)
        mode = block.attrs.get("mode", "dense")
        reports.append(BlockReport(block.loc, pattern_name(attrs["gate_act"], attrs["up_act"]), mode, n_ff,
                                   float(np.mean(h == 0))))
    return reports
