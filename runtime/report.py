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
    def mean_sparsity(self) -> float | None:
        values = [b.sparsity for b in self.blocks if b.sparsity is not None]
        return float(np.mean(values)) if values else None

    def __rich__(self):
        from rich.table import Table

        lossy = any(b.calibrated_sparsity is not None for b in self.blocks)
        caption = None if self.output_rel_error is None else (
            f"outputs vs dense: relative error {self.output_rel_error:.2e} (on the example inputs)")
        table = Table(title=f"actsparse report — target {self.target}, mode {self.mode}", caption=caption)
        numeric = ("n_ff", "sparsity", "calibrated", "threshold")
        columns = ("location", "pattern", "mode", "n_ff", "sparsity", *(("calibrated", "threshold") if lossy else ()),
                   "note")
        for col in columns:
            table.add_column(col, justify="right" if col in numeric else "left")
        for b in self.blocks:
            pattern = b.pattern if b.expert is None else f"{b.pattern} (expert {b.expert})"
            lossy_cells = (_percent(b.calibrated_sparsity), "-" if b.threshold is None else f"{b.threshold:.3g}")
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
ROWS_PER_STEP = 1024  # neurons measured at once


def measure_blocks(graph: Graph, example_inputs: Sequence[np.ndarray]) -> list[BlockReport]:
    """Run the reference interpreter once, keeping each MLP's input, and measure its intermediate sparsity.
    A full numpy forward: for targets that do not run here and for the lossy modes (which run it anyway)."""
    blocks = [n for n in graph.nodes if n.op in MLP_OPS]
    values = evaluate(graph, example_inputs, keep=[b.inputs[0] for b in blocks]) if blocks else []
    return [block_report(graph, block, x) for block, x in zip(blocks, values[len(graph.outputs):])]


def measure_blocks_compiled(module, graph: Graph, example_inputs: Sequence[np.ndarray]) -> list[BlockReport]:
    """The same rows from one run of the compiled module: each block's input is read off the kernel call that
    takes its gate weight (`CompiledModule.kernel_inputs`), then only that block's gate/up products are
    computed in numpy (fp32) — no forward of the whole model in the interpreter."""
    blocks = [n for n in graph.nodes if n.op in MLP_OPS]
    if not blocks:
        return []
    xs = module.kernel_inputs(example_inputs, [b.inputs[1].attrs["name"] for b in blocks])
    return [block_report(graph, block, xs.get(block.inputs[1].attrs["name"])) for block in blocks]


def block_report(graph: Graph, block, x: np.ndarray | None) -> BlockReport:
    """One block's row; its sparsity (the fraction of h = act(x·Wgᵀ) ⊙ act_u(x·Wuᵀ) exactly zero) from its
    input `x`, in fp32 (numpy's fp16 matmul has no BLAS); None when the input was not seen."""
    attrs = {"threshold": 0.0, "fused": False, **block.attrs}
    arrays = [graph.weights[w.attrs["name"]] for w in block.inputs[1:]]
    if block.op == "sparse_gated_mlp":
        w_gate, w_up, b_gate, b_up = arrays[0], arrays[1], None, None
    else:
        _, w_gate, w_up, _, b_gate, b_up = unpack_gated_inputs([None, *arrays], attrs)
    sparsity = None
    if x is not None:
        x32 = np.asarray(x.reshape(-1, x.shape[-1]), np.float32)
        zeros = 0
        for start in range(0, w_gate.shape[0], ROWS_PER_STEP):  # a few float32 rows at a time: no weight copy
            rows = slice(start, start + ROWS_PER_STEP)
            f32 = [None if a is None else np.asarray(a[rows], np.float32) for a in (w_gate, w_up, b_gate, b_up)]
            zeros += int(np.count_nonzero(sparse_intermediate(x32, *f32[:2], attrs, *f32[2:]) == 0))
        sparsity = zeros / (x32.shape[0] * w_gate.shape[0])
    mode = block.attrs.get("mode", "dense")
    pattern = pattern_name(attrs["gate_act"], attrs["up_act"]) + ("-fused" if attrs["fused"] else "")
    expert = attrs.get("expert", -1)
    return BlockReport(block.loc, pattern, mode, w_gate.shape[0], sparsity, expert=expert if expert >= 0 else None)


def output_rel_error(dense: Graph, graph: Graph, example_inputs: Sequence[np.ndarray]) -> float:
    """max over outputs of ||y - y_dense|| / ||y_dense||, both graphs run by the reference interpreter."""
    errors = []
    for y, y_dense in zip(evaluate(graph, example_inputs), evaluate(dense, example_inputs)):
        y, y_dense = np.asarray(y, np.float64), np.asarray(y_dense, np.float64)
        errors.append(float(np.linalg.norm(y - y_dense) / max(np.linalg.norm(y_dense), 1e-30)))
    return max(errors) if errors else 0.0
