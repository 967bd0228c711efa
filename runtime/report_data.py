"""The compile report's data and how it is shown: `BlockReport` (one row per MLP block: where it is, its pattern,
the mode it runs in, its width, the sparsity measured on the example inputs, what its variant declares) and
`Report` (the rows, the pass statistics, the lossy modes' error) with its renderings: a rich table, a dict for the
artifact's manifest (and its checked inverse), a figure. The rows are gathered in runtime/report.py."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields

import numpy as np


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


def shared_reasons(reasons: list[str]) -> dict[str, str]:
    """reason -> its footnote mark ("[1]", "[2]", ... in order of first use) for each reason several rows give: the
    table shows the mark, the reason is printed once below it (a MoE model's experts share theirs, hundreds of rows)."""
    counts = Counter(reason for reason in reasons if reason)   # in order of first use
    shared = [reason for reason, n in counts.items() if n > 1]
    return {reason: f"[{k}]" for k, reason in enumerate(shared, 1)}


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
        marks = shared_reasons([b.reason for b in self.blocks])
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
                          *(split_cells if split else ()), marks.get(b.reason, b.reason))
        footnotes = [f"{mark} {reason}" for reason, mark in marks.items()] + [f"note: {note}" for note in self.notes]
        if not footnotes:
            return table
        from rich.console import Group
        from rich.text import Text

        return Group(table, *(Text(line) for line in footnotes))

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
