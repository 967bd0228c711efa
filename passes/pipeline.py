"""The pipelines, top to bottom. Each mode is a list of named passes; the IR is verified after every pass and,
with ACTSPARSE_DUMP_IR=<dir>, written there as text after every pass (NN-<pass>.ir).

A pipeline can also be written as text, xDSL style:
"canonicalize,detect-gated-mlp,sparsify-exact{on_unsupported=error}".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..ir import Graph, print_graph, verify
from .base import Pass, apply_pass
from .canonicalize import Canonicalize
from .densify import Densify
from .detect_gated_mlp import DetectGatedMLP
from .sparsify_exact import SparsifyExact
from .sparsify_predictor import SparsifyPredictor
from .sparsify_threshold import SparsifyThreshold

PASSES: dict[str, type[Pass]] = {p.name: p for p in (Canonicalize, DetectGatedMLP, SparsifyExact, SparsifyThreshold,
                                                     SparsifyPredictor, Densify)}
MODES = ("dense", "exact", "auto", "threshold", "predictor")


def pipeline_for(mode: str, calibration=None, sparsity: float | None = None, method: str = "cats",
                 predictor: str = "lowrank", recall: float = 0.99, predictor_budget: float = 0.1) -> list[Pass]:
    if mode == "dense":
        return [
            Canonicalize(),      # fold decomposed activations / transposed projections into canonical ops
            DetectGatedMLP(),    # find gated MLPs by dataflow -> gated_mlp (kept dense, but reported)
        ]
    if mode in ("exact", "auto"):
        return [
            Canonicalize(),
            DetectGatedMLP(),
            # exact: a non-ReLU block is an error naming it; auto: it stays dense and the report says why
            SparsifyExact(on_unsupported="error" if mode == "exact" else "keep-dense"),
        ]
    if mode == "threshold":
        if sparsity is None:
            raise ValueError("mode 'threshold' needs a target sparsity, e.g. sparsity=0.5")
        return [
            Canonicalize(),
            DetectGatedMLP(),
            # every gated MLP (SwiGLU/GeGLU too): per-layer thresholds calibrated to `sparsity` (lossy)
            SparsifyThreshold(sparsity=sparsity, method=method, calibration=tuple(calibration or ())),
        ]
    if mode == "predictor":
        return [
            Canonicalize(),
            DetectGatedMLP(),
            # ReLU-family blocks: a predictor per block picks the neurons, its cutoff calibrated to `recall`
            SparsifyPredictor(predictor=predictor, recall=recall, sparsity=sparsity or 0.0, budget=predictor_budget,
                              calibration=tuple(calibration or ())),
        ]
    raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")


@dataclass
class PipelineResult:
    graph: Graph
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[dict] = field(default_factory=list)


def run_pipeline(graph: Graph, passes: list[Pass], dump_dir: str | None = None) -> PipelineResult:
    dump_dir = dump_dir or os.environ.get("ACTSPARSE_DUMP_IR")
    if dump_dir:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        (Path(dump_dir) / "00-input.ir").write_text(print_graph(graph))
    verify(graph)
    result = PipelineResult(graph)
    for step, p in enumerate(passes, start=1):
        out = apply_pass(p, result.graph)
        verify(out.graph)
        result.graph = out.graph
        result.stats[p.name] = out.stats
        result.notes.extend(out.notes)
        if dump_dir:
            (Path(dump_dir) / f"{step:02d}-{p.name}.ir").write_text(print_graph(out.graph))
    return result


_ITEM = re.compile(r"\s*([\w-]+)(?:\{([^}]*)\})?\s*")


def parse_pipeline(text: str) -> list[Pass]:
    passes = []
    for item in filter(str.strip, _split_top(text)):
        match = _ITEM.fullmatch(item)
        if not match or match.group(1) not in PASSES:
            raise ValueError(f"unknown pass {item.strip()!r}; valid passes: {', '.join(sorted(PASSES))}")
        cls = PASSES[match.group(1)]
        types = {f.name: f.type for f in fields(cls)}
        opts = {}
        for kv in filter(None, (match.group(2) or "").split(",")):
            key, _, value = kv.partition("=")
            if key.strip() not in types:
                raise ValueError(f"pass {cls.name} has no option {key.strip()!r}; options: {sorted(types)}")
            opts[key.strip()] = value.strip()
        passes.append(cls(**opts))
    return passes


def _split_top(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    return [*items, current]
