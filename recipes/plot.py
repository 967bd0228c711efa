"""Per-layer sparsity plot (matplotlib, Agg backend): grouped bars, one group per MLP, one bar per series."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def plot_layer_sparsity(series: Mapping[str, Mapping[str, float]] | Mapping[str, float], path: str | Path,
                        title: str = "MLP intermediate sparsity per layer", target: float | None = None) -> Path:
    """Bar chart of exact-zero fractions. `series`: {label: {layer: fraction}} (several bars per layer, e.g.
    "relufied", "after L1", "after FATReLU") or one {layer: fraction}. Layer names are shortened to their
    distinguishing part (`layers.3.mlp` -> `3`). Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if series and all(isinstance(v, (int, float)) for v in series.values()):
        series = {"sparsity": series}
    labels = list(series)
    layers = list(dict.fromkeys(name for s in series.values() for name in s))
    short = _short_names(layers)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(layers) * max(1, len(labels)) / 2 + 2), 3.8), dpi=120)
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(layers))]
        values = [series[label].get(name, 0.0) for name in layers]
        ax.bar(xs, values, width=width, label=label)
        for x, v in zip(xs, values):
            ax.text(x, v + 0.01, f"{v:.0%}", ha="center", fontsize=6)
    if target is not None:
        ax.axhline(target, color="#c44e52", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xticks(range(len(layers)), short)
    ax.set(xlabel="layer", ylabel="exact-zero fraction", ylim=(0, 1.08))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(labels) + (target is not None), fontsize=7,
              frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _short_names(names: list[str]) -> list[str]:
    """Drop the parts every name shares (`layers.0.mlp`, `layers.1.mlp` -> `0`, `1`)."""
    parts = [n.split(".") for n in names]
    if len(parts) < 2 or len({len(p) for p in parts}) != 1:
        return names
    keep = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
    return [".".join(p[i] for i in keep) or n for p, n in zip(parts, names)]


def plot_recovery(history, path: str | Path, title: str = "recovery fine-tune", smooth: int = 10) -> Path:
    """Loss and sparsity curves of a `RecoveryHistory`: task loss and L1-weighted loss (left), the batch's
    exact-zero fraction and λ (right), per step with a `smooth`-step running mean; periodic evals as points."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = [r["step"] for r in history.steps]
    series = {"task loss": [r["loss"] for r in history.steps],
              "loss + λ·L1": [r["loss"] + r["l1_factor"] * r["l1"] for r in history.steps]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for label, values in series.items():
        left.plot(steps, values, alpha=0.3, linewidth=0.8)
        left.plot(steps, _running_mean(values, smooth), label=f"{label} (mean of {smooth})")
    left.set(xlabel="step", ylabel="loss")
    left.legend(fontsize=7, frameon=False)
    right.plot(steps, [r["sparsity"] for r in history.steps], alpha=0.3, linewidth=0.8, color="C2")
    right.plot(steps, _running_mean([r["sparsity"] for r in history.steps], smooth), color="C2",
               label="training batch sparsity")
    for key in ("val_sparsity",):
        points = [(e["step"] - 1, e[key]) for e in history.evals if key in e]
        if points:
            right.plot(*zip(*points), "o", color="C3", label="held-out sparsity")
    right.set(xlabel="step", ylabel="exact-zero fraction")
    lam = right.twinx()
    lam.plot(steps, [r["l1_factor"] for r in history.steps], color="C1", linestyle="--", label="λ")
    lam.set_ylabel("λ (L1 factor)")
    handles = right.get_legend_handles_labels()[0] + lam.get_legend_handles_labels()[0]
    right.legend(handles=handles, fontsize=7, frameon=False, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _running_mean(values: list[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out
