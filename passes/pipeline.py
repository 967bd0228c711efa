"""The pipelines, top to bottom. Each mode is a list of named passes (`PIPELINES`, for a target: passes that decide
by cost read the target's data); the IR is verified after every pass and,
with ACTSPARSE_DUMP_IR=<dir>, written there as text after every pass (NN-<pass>.ir).

A pipeline can also be written as text, xDSL style:
"canonicalize,detect-gated-mlp,sparsify-exact{on_unsupported=error}".
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from .. import targets
from ..errors import MemoryBudgetError
from ..ir import Graph, print_graph, verify
from ..ir.sparse_variants import VARIANTS
from ..targets import Target
from .base import Pass, apply_pass
from .canonicalize import Canonicalize
from .certify_exact_gate import CertifyExactGate
from .densify import Densify
from .detect_gated_mlp import DetectGatedMLP
from .fuse_attention import FuseAttention
from .fuse_gated_mlp import FuseGatedMLP
from .reorder_neurons import ReorderNeurons
from .route_moe import RouteMoE
from .sparsify_exact import SparsifyExact
from .sparsify_predictor import SparsifyPredictor
from .sparsify_threshold import SparsifyThreshold
from .split_hot_cold import SplitHotCold

PASSES: dict[str, type[Pass]] = {p.name: p for p in (Canonicalize, DetectGatedMLP, SparsifyExact, SparsifyThreshold,
                                                     SparsifyPredictor, Densify, RouteMoE, ReorderNeurons,
                                                     SplitHotCold, FuseGatedMLP, FuseAttention, CertifyExactGate)}
BUDGET_MODES = ("exact", "auto", "predictor")   # modes whose blocks a memory budget splits hot / cold


@dataclass(frozen=True)
class PipelineOptions:
    """What a mode's pipeline may depend on. Passes that decide by cost (sparse vs dense, predictor rank, the
    hot/cold split) take `target` — pure data: its memory levels and bandwidths — never codegen."""

    target_spec: Target | str | None = None   # a Target or a registry name; None: the host (x86)
    calibration: tuple = ()
    sparsity: float | None = None
    method: str = "cats"
    predictor: str = "lowrank"            # predictor mode: its kind, target recall and byte budget
    recall: float = 0.99
    predictor_budget: float = 0.1
    memory_budget: int | None = None       # bytes of fast memory for the MLP weights: the hot/cold split
    storage: str | None = None             # the `quantize=` kind the weights will be stored in (None: as they are)
    sensitivity: tuple = ()                # threshold mode: per block g² of the loss on the calibration rows
    loss_guard: object = None              # threshold mode: quality_guard.LossGuard (held-out loss bound)
    fallback_method: str | None = None    # threshold mode: for blocks `method` cannot take (None: an error)
    calibration_skip: int = 0              # threshold mode: each sample's first positions left out (a decoder's sink)
    # threshold mode: {weight name: layout} of a source file's blocks the dense build keeps (passes/input_cost.py)
    file_layouts: dict = field(default_factory=dict, compare=False)

    @property
    def target(self) -> Target:
        """The Target (resolved when a pass asks: resolving the host's target loads TVM's LLVM)."""
        return targets.get(self.target_spec if self.target_spec is not None else "x86")


def _detect(o: PipelineOptions) -> list[Pass]:
    return [
        Canonicalize(),      # fold decomposed activations / transposed projections into canonical ops
        DetectGatedMLP(),    # find gated MLPs by dataflow -> gated_mlp (kept dense, but reported)
        FuseAttention(),     # each layer's attention chain -> one attention op (one kernel, no KV-head copies)
    ]


def _dense(o: PipelineOptions) -> list[Pass]:
    # MoE experts weighted by their routing -> routed_moe: each runs on its routed tokens only (it stacks the
    # experts' final weights); then every other gated MLP onto the fused dense kernel (one call: gate, up,
    # activation, down)
    return [*_detect(o), RouteMoE(), FuseGatedMLP(storage=o.storage)]


def _exact(o: PipelineOptions, on_unsupported: str = "error") -> list[Pass]:
    # exact: a non-ReLU block is an error naming it; auto: it stays dense and the report says why
    # then, where the target's data says an int8 gate copy pays (and no memory budget claims the bytes), each block
    # reads the gate rows only of the neurons the copy cannot certify inactive: the same outputs
    return [*_detect(o), SparsifyExact(on_unsupported=on_unsupported, kernel_family=o.target.kernel_family), RouteMoE(),
            CertifyExactGate(exact_gate=o.target.exact_gate, storage=o.storage or "",
                             memory_budget=-1 if o.memory_budget is None else o.memory_budget), *_hot_cold(o)]


def _hot_cold(o: PipelineOptions) -> list[Pass]:
    if o.memory_budget is None:
        return []
    # neurons by calibrated frequency, then the hot prefix per layer that the target's memory levels favour (routed
    # MoE experts, stacked by route-moe, are not split)
    return [ReorderNeurons(calibration=o.calibration),
            SplitHotCold(memory_budget=o.memory_budget, target=o.target)]


def _threshold(o: PipelineOptions) -> list[Pass]:
    if o.sparsity is None:
        raise ValueError("mode 'threshold' needs a target sparsity, e.g. sparsity=0.5")
    # every gated MLP (SwiGLU/GeGLU too): per-layer thresholds calibrated to `sparsity` (lossy); MoE experts stay
    # dense and route (each on its tokens only: E/k times less work than thresholded experts run all-experts)
    return [*_detect(o), SparsifyThreshold(sparsity=o.sparsity, method=o.method, calibration=o.calibration,
                                           storage=o.storage, sensitivity=o.sensitivity, target=o.target,
                                           loss_guard=o.loss_guard, fallback=o.fallback_method,
                                           skip_positions=o.calibration_skip, file_layouts=o.file_layouts),
            RouteMoE()]


def _predictor(o: PipelineOptions) -> list[Pass]:
    # ReLU-family blocks: a predictor per block picks the neurons, its cutoff calibrated to `recall` (lossy)
    # (MoE experts a predictor sparsified keep the all-experts form; dense ones route)
    return [*_detect(o), SparsifyPredictor(predictor=o.predictor, recall=o.recall, sparsity=o.sparsity or 0.0,
                                          budget=o.predictor_budget, calibration=o.calibration,
                                          kernel_family=o.target.kernel_family), RouteMoE(),
            *_hot_cold(o)]


# mode -> its passes, top to bottom. A sparse variant that is a mode of its own (ir/sparse_variants.py) adds a line
PIPELINES: dict[str, Callable[[PipelineOptions], list[Pass]]] = {
    "dense": _dense,
    "exact": _exact,
    "auto": lambda o: _exact(o, on_unsupported="keep-dense"),   # exact where lossless, dense elsewhere
    "threshold": _threshold,
    "predictor": _predictor,
}
MODES = tuple(PIPELINES)
LOSSY_MODES = tuple(m for m in MODES if m in VARIANTS and VARIANTS[m].lossy)


def pipeline_for(mode: str, target: Target | str | None = None, calibration=None, sparsity: float | None = None,
                 method: str = "cats", predictor: str = "lowrank", recall: float = 0.99,
                 predictor_budget: float = 0.1, memory_budget: int | None = None,
                 storage: str | None = None, sensitivity=None, loss_guard=None,
                 fallback_method: str | None = None, calibration_skip: int = 0,
                 file_layouts: dict | None = None) -> list[Pass]:
    """The passes of `mode` for `target` (a Target or a registry name; default the host's x86 target).
    `memory_budget` (bytes of fast memory for the MLP weights; modes in BUDGET_MODES) adds the hot/cold split,
    which counts neuron firing on `calibration`; `storage`: the `quantize=` kind the weights will get (the
    quantize pass itself is appended by the caller), which lossy calibration prices bytes in; `sensitivity`:
    threshold mode's Fisher weights (passes/loss_sensitivity.py); `loss_guard`: threshold mode's bound on the
    held-out loss (passes/quality_guard.py); `fallback_method`: threshold mode's method for the blocks `method`
    cannot take (None: those are an error); `calibration_skip`: threshold mode leaves each calibration sample's
    first positions out of its rows (a decoder's: calibrate.SINK_POSITIONS); `file_layouts`: {weight name: layout} of
    a source file's blocks the dense build keeps, which threshold mode prices dense by and does not round again at 4
    bits (passes/input_cost.py)."""
    if mode not in PIPELINES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if memory_budget is not None and mode not in BUDGET_MODES:
        raise MemoryBudgetError(f"memory_budget applies to modes {', '.join(BUDGET_MODES)} (ReLU-family blocks "
                                f"split into hot and cold neurons), not mode={mode!r}")
    if target is not None and not isinstance(target, Target):
        target = targets.get(target)  # an unknown name fails here, listing the valid ones
    options = PipelineOptions(target, tuple(calibration or ()), sparsity, method, predictor, recall, predictor_budget,
                              memory_budget, storage, tuple(sensitivity or ()), loss_guard, fallback_method,
                              calibration_skip, dict(file_layouts or {}))
    return PIPELINES[mode](options)


@dataclass
class PipelineResult:
    graph: Graph
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[dict] = field(default_factory=list)


def run_pipeline(graph: Graph, passes: list[Pass], dump_dir: str | None = None,
                 on_pass: Callable[[Pass], None] | None = None) -> PipelineResult:
    """`passes` in order over `graph`, verified after each; `on_pass(p)` is told before each pass runs."""
    dump_dir = dump_dir or os.environ.get("ACTSPARSE_DUMP_IR")
    if dump_dir:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        (Path(dump_dir) / "00-input.ir").write_text(print_graph(graph))
    verify(graph)
    result = PipelineResult(graph)
    for step, p in enumerate(passes, start=1):
        if on_pass is not None:
            on_pass(p)
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
