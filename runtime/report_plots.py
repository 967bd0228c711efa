"""Figures of the report beyond the sparsity bars: the hot/cold split per layer."""

from __future__ import annotations

import numpy as np


def plot_hot_cold(ax, blocks, budget: int | None, objective_us: float | None) -> None:
    """Stacked bars of hot (fast memory) and cold (read on demand) neurons per layer, the cost model's predicted
    time per token on a second axis."""
    x = np.arange(len(blocks))
    hot = np.array([b.hot_neurons for b in blocks])
    cold = np.array([b.cold_neurons for b in blocks])
    ax.bar(x, hot, color="tab:red", label="hot (fast memory)")
    ax.bar(x, cold, bottom=hot, color="tab:blue", label="cold (on demand)")
    ax.set_xticks(x, [b.location for b in blocks], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("neurons")
    title = "hot/cold split"
    if budget is not None:
        title += f", budget {budget / 2**20:.1f} MiB"
    if objective_us is not None:
        title += f", predicted {objective_us:.0f} µs/token"
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, loc="upper left")
    twin = ax.twinx()
    twin.plot(x, [b.predicted_us for b in blocks], "k.-", lw=1)
    twin.set_ylabel("predicted µs / token", fontsize=7)
