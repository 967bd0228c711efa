"""The sparse gated-MLP op family: `sparse_gated_mlp{mode=<variant>}`, one table entry per variant.

Every variant computes

    h = intermediate(x, w_gate, w_up, extras, attrs)       [..., n_ff], zero for the neurons it skips
    y = h · w_down_t                                        (w_down_t [n_ff, d_out]: one neuron per row)

on the inputs `x, w_gate[n_ff, d], w_up[n_ff, d], w_down_t[n_ff, d_out], *extra_inputs`. Nothing outside this
file switches on the variant's name: the interpreter, the verifier, the lowering (codegen/lower_kernels.py), the
dense twin (passes/densify.py), the report (runtime/report.py), the API's mode checks and the pipelines all read
the entry.

How to add a variant (e.g. "predictor", "hotcold"): add one `SparseVariant` to `VARIANTS` below, with

    name            the value of the node's `mode` attribute (and of `compile(mode=...)` when it is a mode)
    attrs           the variant's own attributes and their defaults (added to the op's attribute schema;
                    the common ones are COMMON_ATTRS: gate_act, up_act, threshold, mode, pattern, expert)
    extra_inputs    names of the inputs after w_down_t, in order (predictor weights, a neuron order, the
                    hot/cold parts ...); the verifier checks the count, the lowering passes them to the kernel
                    after w_down_t, `intermediate` gets them as a dict name -> array
    intermediate    numpy semantics: (x, w_gate, w_up, extras, attrs, b_gate=None, b_up=None) -> h; the biases
                    are only passed when the report measures a not-yet-sparsified `gated_mlp` through it
    kernels         kernel family ("cpu" | "cuda") -> kernel name in `codegen.kernels.FAMILIES` ("exact",
                    "threshold", ...): its lowering per family. A family it lacks is a lowering error naming it
    kernel_options  attrs -> the kernel factory's keyword arguments (gate_act, up_act, threshold, ...)
    dense_attrs     attrs -> the `gated_mlp` attrs of its dense twin (densify: same weights, every neuron
                    computed, extra inputs dropped)
    dense_twin      the variant of that twin ("dense"; one with extra inputs keeps the node's, e.g. the cutoff
                    variant's activated gate, which no dense kernel could compute)
    report          attrs -> report fields (names of `runtime.report.BlockReport` fields: threshold, method,
                    calibrated_sparsity, reason, ...) that the node itself carries
    lossy           whether the variant may change outputs (it then needs calibration and the report shows
                    the outputs' error)
    gate_up_layout  "rows": w_gate / w_up are [n_ff, d] (a neuron per row); "columns": [d, n_ff] (an input
                    channel per row, for kernels that skip inputs); `sizes` reads (n_ff, d) accordingly
    measure         (x2d, w_gate, w_up, extras, attrs, h) -> report fields measured on the example inputs; the
                    default gives `effective_sparsity`, the fraction of weight bytes a token does not read
    doc             one line for error messages and the README
    report_mode     the mode its report row shows when not its name (a lossless way to run another mode)

Then add its kernels (codegen/kernels/, an entry in FAMILIES per family), the pass that produces it, and its
tests. Keep the names stable: artifacts store `mode` in their IR text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .activations import apply, reads_input
from .input_sparse import input_intermediate, input_measure

# group_frequency: mean firing frequency per group of NEURON_GROUP neurons, hottest first, set when the neurons
# were reordered by frequency (passes/reorder_neurons.py); what the hot/cold split's cost model reads
# hidden_rms_eps: a block whose hidden vector is RMS-normalised before the down projection (BitNet's ffn_sub_norm):
# h <- h / sqrt(mean(h²) + eps), the norm's weight folded into the down projection's rows (`rms_normed`)
COMMON_ATTRS = {"gate_act": "relu", "up_act": "identity", "threshold": 0.0, "mode": "exact", "pattern": "reglu",
                "expert": -1, "group_frequency": (), "hidden_rms_eps": None}
NEURON_GROUP = 64
BASE_INPUTS = ("x", "w_gate", "w_up", "w_down_t")
CRITERIA = ("gate", "product")


@dataclass(frozen=True)
class SparseVariant:
    name: str
    attrs: Mapping[str, Any]
    extra_inputs: tuple[str, ...]
    intermediate: Callable[..., np.ndarray]
    kernels: Mapping[str, str]
    kernel_options: Callable[[dict], dict]
    dense_attrs: Callable[[dict], dict]
    report: Callable[[dict], dict] = field(default=lambda attrs: {})
    lossy: bool = False
    gate_up_layout: str = "rows"
    quantized_kernels: bool = True  # its kernels take quantized weight layouts (passes/quantize.py)
    # its kernels (every family's) read the down projection in a layout of its own, not only the gate's: a GGUF's
    # 4-bit gate / up kept as stored beside a down projection re-quantized at 8 bits (passes/quantize.py)
    own_down_layout: bool = False
    # kernel families whose kernel applies a block's hidden RMS norm (`hidden_rms_eps`); sparsify-exact keeps such a
    # block dense on the others (the lowering refuses one that got there)
    hidden_norm_families: tuple[str, ...] = ()
    report_mode: str = ""  # the mode its report row shows ("": its name), e.g. a lossless form of exact mode
    dense_twin: str = "dense"  # the variant of its dense twin (passes/densify.py); itself: it is a dense twin
    # report fields measured on the example inputs beyond the sparsity of h: (x, w_gate, w_up, extras, attrs, h)
    # -> dict; by default the effective sparsity of a per-neuron variant
    measure: Callable[..., dict] = field(default=lambda x, w_gate, w_up, extras, attrs, h: _neuron_effective(attrs, h))
    doc: str = ""


def _neuron_effective(attrs: dict, h: np.ndarray) -> dict:
    """Per-neuron variants read every gate row; 'gate' decisions skip the up and down rows of an inactive neuron,
    'product' ones (which need u) only its down row; the up factor `unit` (a non-gated MLP: its gate and down
    matrices) reads no up row. Each matrix weighs its stored bytes where the caller gives them (`weight_bytes`:
    gate, up, down; a q8_0 down beside 4-bit gate / up is the largest), else a third each."""
    gate, up, down = attrs.get("weight_bytes") or (1.0, 1.0, 1.0)
    if not reads_input(attrs.get("up_act", "identity")):
        up = 0.0
    skipped = down if attrs.get("mode") == "threshold" and attrs.get("criterion") == "product" else up + down
    return {"effective_sparsity": float(np.mean(h == 0)) * skipped / (gate + up + down)}


def sizes(attrs: Mapping, w_gate_shape) -> tuple[int, int]:
    """(n_ff, d) of a sparse_gated_mlp from its w_gate's shape and its variant's layout."""
    rows, cols = w_gate_shape
    return (cols, rows) if variant_of(attrs).gate_up_layout == "columns" else (rows, cols)


def projections(x, w_gate, w_up, b_gate=None, b_up=None) -> tuple[np.ndarray, np.ndarray]:
    """g = x·Wgᵀ (+ bg), u = x·Wuᵀ (+ bu)."""
    g, u = x @ w_gate.T.astype(x.dtype), x @ w_up.T.astype(x.dtype)
    return (g if b_gate is None else g + b_gate), (u if b_up is None else u + b_up)


def dense_intermediate(x, w_gate, w_up, attrs, b_gate=None, b_up=None) -> np.ndarray:
    """h = act_gate(x·Wgᵀ + bg) ⊙ act_up(x·Wuᵀ + bu): the gated MLP's activations (what sparsity is measured on)."""
    g, u = projections(x, w_gate, w_up, b_gate, b_up)
    h = apply(attrs["gate_act"], g, attrs.get("threshold", 0.0)) * apply(attrs["up_act"], u)
    return h.astype(x.dtype)


def rms_normed(h: np.ndarray, attrs: Mapping) -> np.ndarray:
    """h / sqrt(mean(h²) + eps) over the neurons where the block has a hidden RMS norm (`hidden_rms_eps`), else h.
    Zeros stay zeros, so an exactly sparse block stays exactly sparse; the norm's weight is in the down rows."""
    eps = attrs.get("hidden_rms_eps")
    if eps is None:
        return h
    h64 = h.astype(np.float64)
    return (h64 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + eps)).astype(h.dtype)


def _plain_attrs(attrs: dict) -> dict:
    """The gated_mlp attrs of the same activations (fatrelu keeps its threshold, a hidden norm its eps)."""
    out = {"gate_act": attrs["gate_act"], "up_act": attrs["up_act"], "fused": False}
    if attrs.get("hidden_rms_eps") is not None:
        out["hidden_rms_eps"] = attrs["hidden_rms_eps"]
    if attrs["gate_act"] == "fatrelu":
        out["threshold"] = attrs["threshold"]
    if attrs.get("expert", -1) >= 0:
        out["expert"] = attrs["expert"]
    return out


def dense_variant_attrs(plain: dict, pattern: str) -> dict:
    """The attrs of the `dense` variant's node computing the gated MLP of attrs `plain` (its activations, fatrelu's
    threshold, a routed expert's index): what dense mode (fuse-gated-mlp) and a dense twin (densify) produce."""
    attrs = {"gate_act": plain["gate_act"], "up_act": plain["up_act"], "mode": "dense", "pattern": pattern,
             "threshold": plain.get("threshold", 0.0)}
    if plain.get("expert", -1) >= 0:
        attrs["expert"] = plain["expert"]
    return attrs


def _activation_options(attrs: dict) -> dict:
    return {"gate_act": attrs["gate_act"], "up_act": attrs.get("up_act", "identity"),
            "threshold": attrs.get("threshold", 0.0)}


def _exact_options(attrs: dict) -> dict:
    """The activations, and a hidden RMS norm's eps where the block has one (its kernels apply it)."""
    eps = attrs.get("hidden_rms_eps")
    return {**_activation_options(attrs), **({"hidden_rms_eps": eps} if eps is not None else {})}


def _input_report(attrs: dict) -> dict:
    return {"threshold": attrs.get("threshold", 0.0), "method": attrs.get("method"),
            "calibrated_sparsity": attrs.get("calibrated_sparsity"),
            "effective_calibrated": attrs.get("effective_calibrated")}


# --- exact: ReLU family, lossless ----------------------------------------------------------------------------
def _exact_intermediate(x, w_gate, w_up, extras, attrs, b_gate=None, b_up=None):
    return dense_intermediate(x, w_gate, w_up, attrs, b_gate, b_up)


# --- threshold: training-free, lossy -------------------------------------------------------------------------
# A SwiGLU/GeGLU neuron is never exactly zero, but most are small; a neuron counts as inactive for a token when
#   criterion 'gate'    (CATS):  a = act_g(g); a = a if |a| > t else 0; h = a · act_u(u)
#   criterion 'product' (TurboSparse's top-k% of |act(g)·u|, TEAL's intermediate): h = act_g(g) · act_u(u);
#                                h = h if |h| > t else 0
# A ReLU-family gate in threshold mode is FATReLU at the same t (the pass sets gate_act='fatrelu'), for which the
# 'gate' mask changes nothing: |fatrelu(g, t)| > t iff g > t.
def _threshold_intermediate(x, w_gate, w_up, extras, attrs, b_gate=None, b_up=None):
    criterion, t = attrs.get("criterion", "gate"), attrs["threshold"]
    if criterion not in CRITERIA:
        raise ValueError(f"unknown threshold criterion {criterion!r}; known: {CRITERIA}")
    if criterion == "gate":
        return neuron_thresholded(x, w_gate, w_up, attrs, t, b_gate, b_up)
    g, u = projections(x, w_gate, w_up, b_gate, b_up)
    h = apply(attrs["gate_act"], g, t) * apply(attrs["up_act"], u)
    h = np.where((np.abs(h) > t) | np.isnan(h), h, 0)  # NaN counts as active: it reaches the output
    return h.astype(x.dtype)


def _threshold_report(attrs: dict) -> dict:
    fields = {"threshold": attrs["threshold"], "method": attrs.get("method"),
              "calibrated_sparsity": attrs.get("calibrated_sparsity"),
              "effective_calibrated": attrs.get("effective_calibrated")}
    if attrs.get("input_threshold"):
        fields["reason"] = (f"{attrs.get('method')}: input |x| <= {attrs['input_threshold']:.3g} zeroed by a dense "
                            "mask (no input-sparse kernel yet)")
    elif attrs.get("reason"):   # e.g. the threshold pass's per-block fallback method, and why
        fields["reason"] = attrs["reason"]
    return fields


# --- neuron-threshold: CATS with a threshold per neuron, then a cut on h, lossy (threshold mode's routed experts) --
# neuron_thr [2, n_ff]: row 0 cuts the gate, row 1 the down projection's input. With s = |scale| ([..., 1]: the
# token's routing weight to the expert, by which the block's output is scaled after the block):
#   a = act_g(g); a = a if |a|·s > neuron_thr[0, i] else 0      (the up and down rows of a dropped neuron unread)
#   h = a · act_u(u); h = h if |h|·s > neuron_thr[1, i] else 0   (the down row of a dropped h unread)
# NaN is kept at both (it reaches the output). Row 0 is CATS's score weighted by how far neuron i moves the layer's
# output, row 1 the neuron's exact contribution |h_i|·‖W_down[:, i]‖ once u is read (passes/routed_thresholds.py); a
# row-1 threshold of 0 drops only an h that is exactly 0 (nothing to add). Only routed experts take it, and
# route-moe stacks their neuron_thr into `routed_moe{mode=threshold}` (ir/moe.py), whose routing weights are the
# scale: no per-block kernel reads it (a block route-moe did not take is a lowering error naming the variant).
def neuron_threshold_parts(x, w_gate, w_up, attrs, gate_cut, down_cut=None, b_gate=None, b_up=None,
                           scale=1.0) -> tuple[np.ndarray, np.ndarray]:
    """(kept by the gate cut [..., n_ff] bool, h): CATS at a threshold per neuron (`gate_cut` [n_ff], or one float
    for all) of |act_gate(g)|·|scale| (`scale`: 1, or per token [..., 1]), then, with `down_cut` [n_ff], h dropped
    where |h|·|scale| <= down_cut: the criterion of `neuron-threshold` and of a routed threshold expert."""
    g, u = projections(x, w_gate, w_up, b_gate, b_up)
    a = apply(attrs["gate_act"], g, attrs.get("threshold", 0.0))
    weight = np.abs(scale)
    kept = (np.abs(a) * weight > gate_cut) | np.isnan(a)
    h = np.where(kept, a, 0) * apply(attrs["up_act"], u)
    if down_cut is not None:
        h = np.where((np.abs(h) * weight > down_cut) | np.isnan(h), h, 0)
    return kept, h.astype(x.dtype)


def neuron_thresholded(x, w_gate, w_up, attrs, thresholds, b_gate=None, b_up=None, scale=1.0) -> np.ndarray:
    """h of `neuron_threshold_parts` at `thresholds`: one float or [n_ff] (the gate cut only), or [2, n_ff] (the
    gate cut, then the cut on h)."""
    cuts = np.asarray(thresholds)
    gate_cut, down_cut = (cuts[0], cuts[1]) if cuts.ndim == 2 else (thresholds, None)
    return neuron_threshold_parts(x, w_gate, w_up, attrs, gate_cut, down_cut, b_gate, b_up, scale)[1]


def two_cut_effective(attrs: dict, kept: np.ndarray, h: np.ndarray) -> dict:
    """The effective sparsity of `neuron_threshold_parts`' decisions: every gate row read, an up row where the gate
    cut kept the neuron (none for the up factor `unit`), a down row where h is not 0; matrices weighted as
    `_neuron_effective`'s."""
    gate, up, down = attrs.get("weight_bytes") or (1.0, 1.0, 1.0)
    up = up if reads_input(attrs.get("up_act", "identity")) else 0.0
    skipped = up * float(np.mean(~kept)) + down * float(np.mean(h == 0))
    return {"effective_sparsity": skipped / (gate + up + down)}


def _neuron_threshold_measure(x, w_gate, w_up, extras, attrs, h) -> dict:
    cuts = np.asarray(extras["neuron_thr"], np.float32)
    scale = np.reshape(np.asarray(extras["scale"], np.float32), (*np.shape(x)[:-1], 1))
    kept, _ = neuron_threshold_parts(x, w_gate, w_up, attrs, cuts[0], scale=scale)
    return two_cut_effective(attrs, kept, h)


def _neuron_threshold_report(attrs: dict) -> dict:
    return {"method": attrs.get("method"), "calibrated_sparsity": attrs.get("calibrated_sparsity"),
            "effective_calibrated": attrs.get("effective_calibrated"),
            **({"reason": attrs["reason"]} if attrs.get("reason") else {})}


# --- predictor: a per-block predictor's scores pick the neurons (ir/predictor.py), ReLU family, lossy ------------
# h = act_g(g) · act_u(u) where scores > cutoff, else 0. A neuron predicted active whose gate is <= 0 still gives 0,
# so misses are the only loss. The CPU kernel is the composite "predicted" (codegen/lower_predictor.py): for
# ReLU-family gates the scored kernel lists the neurons itself (no select call), otherwise a select kernel turns the
# scores into an index list for the indexed kernel; the CUDA one is "scored": one kernel flags the predicted
# neurons itself (no single-block select launch).
def _predictor_intermediate(x, w_gate, w_up, extras, attrs, b_gate=None, b_up=None):
    h = dense_intermediate(x, w_gate, w_up, attrs, b_gate, b_up)
    return np.where(extras["scores"].reshape(h.shape) > attrs["cutoff"], h, 0).astype(x.dtype)


def _predictor_measure(x, w_gate, w_up, extras, attrs, h=None) -> dict:
    """recall (share of the truly active neurons predicted), predicted sparsity, and as `sparsity` the block's own
    activation sparsity (after the misses it is 1 - recall·(1 - sparsity)); the effective sparsity is the share of
    rows of all three matrices not read, less the predictor's own bytes."""
    active = dense_intermediate(x, w_gate, w_up, attrs) != 0
    predicted = extras["scores"].reshape(active.shape) > attrs["cutoff"]
    predicted_sparsity = 1.0 - float(predicted.mean())
    return {"recall": float((predicted & active).sum() / max(active.sum(), 1)),
            "predicted_sparsity": predicted_sparsity, "sparsity": 1.0 - float(active.mean()),
            "effective_sparsity": predicted_sparsity - (attrs.get("predictor_bytes_pct") or 0.0) / 100}


def _predictor_report(attrs: dict) -> dict:
    provenance = ("rank", "predictor_bytes_pct", "calibrated_recall", "calibrated_sparsity")
    return {"predictor": attrs["predictor"], "threshold": attrs["cutoff"], **{k: attrs.get(k) for k in provenance}}


# --- certified: exact mode with an int8 gate pre-filter (passes/certify_exact_gate.py), lossless ------------------
# The bound predictor's scores (passes/certified_gate.py) as the 5th input: every neuron they do not list has a gate
# <= the cutoff, so h is exact mode's (the scores only tell the kernel which gate rows it may skip). The CPU kernel
# is the predictor variant's ("predicted": the certified kernel scores the int8 rows itself).
def _certified_report(attrs: dict) -> dict:
    return {"exact_gate": "certified", "predictor": attrs.get("predictor"), "threshold": attrs.get("cutoff", 0.0),
            "predictor_bytes_pct": attrs.get("predictor_bytes_pct"),
            "reason": "int8 pre-filter"}


def _certified_measure(x, w_gate, w_up, extras, attrs, h) -> dict:
    """Exact mode's effective sparsity; the certified share where the scores were computed (the compiled module's
    run gives the block's input only)."""
    fields = _neuron_effective(attrs, h)
    if extras.get("scores") is not None:
        fields["predicted_sparsity"] = 1.0 - float(np.mean(extras["scores"].reshape(h.shape) > attrs["cutoff"]))
    return fields


# --- cutoff: exact mode of a gate cut at a per-token cutoff (Gemma 3n: gelu_tanh(relu(P - mean(P) - z·std(P)))) -------
# The cutoff needs all of P before any neuron is known inactive, so the activated gate a is computed before the node
# by the graph's own ops (the dense gate projection, the cutoff, the activation) and comes in as the extra input
# "gate"; the node reads the up and down rows of the neurons with a != 0 only. w_gate stays an input (the report and
# the weight layouts read it) but the kernel does not read it: the gate projection before the node does.
def _cutoff_intermediate(x, w_gate, w_up, extras, attrs, b_gate=None, b_up=None):
    a = np.asarray(extras["gate"]).reshape(-1, w_up.shape[0]).astype(x.dtype)
    return (a * apply(attrs["up_act"], x @ w_up.T.astype(x.dtype))).astype(x.dtype)


# Its dense twin "cutoff-dense" keeps a as its input (no dense kernel could cut the gate: the cutoff needs all of P) and
# reads every up and down row: the dense kernel with its gate dots replaced by a, as the cutoff kernel is the exact one.
def _cutoff_options(attrs: dict) -> dict:
    return {"up_act": attrs.get("up_act", "identity")}


# --- cold: the cold neurons of a hot/cold split (passes/split_hot_cold.py), read on demand from slow memory ---------
# The same semantics as its base (exact: h = act_g(g) · act_u(u)); the node holds the neurons that did not fit the
# memory budget. Its up and down rows live outside the fast memory (CPU: bundled per neuron in a file; GPU: host
# memory), so its kernel is a host function (runtime/cold_store.py) named by `store`, keeping the `window` most
# recently active neurons resident. The gate rows stay resident: they decide which neurons fire.
# "cold-predictor" is the same for predictor mode: the predictor's scores pick the cold neurons, so their gate rows
# go to slow memory too (bundled with the up and down rows) and only the scores' producer stays resident.
def _cold_report(attrs: dict) -> dict:
    return {"reason": f"cold neurons, read on demand ({attrs.get('window', 0)} kept resident)"}


def _cold_options(attrs: dict) -> dict:
    return {**_activation_options(attrs), "store": attrs["store"]}


VARIANTS: dict[str, SparseVariant] = {v.name: v for v in (
    SparseVariant(
        "exact", attrs={}, extra_inputs=(), intermediate=_exact_intermediate,
        kernels={"cpu": "exact", "cuda": "exact"}, kernel_options=_exact_options, dense_attrs=_plain_attrs,
        own_down_layout=True, hidden_norm_families=("cpu", "cuda"),
        doc="ReLU-family gates (ReGLU, dReLU, FATReLU): skips exactly-zero neurons, lossless"),
    SparseVariant(
        "threshold",
        # criterion: see above; method, calibrated_sparsity, input_threshold: what calibration chose (provenance
        # for the report; input_threshold > 0: TEAL's input mask sits in front of the node)
        attrs={"criterion": "gate", "method": None, "calibrated_sparsity": None, "input_threshold": 0.0},
        extra_inputs=(), intermediate=_threshold_intermediate,
        kernels={"cpu": "threshold", "cuda": "threshold"},
        kernel_options=lambda attrs: {**_activation_options(attrs), "criterion": attrs.get("criterion", "gate")},
        dense_attrs=_plain_attrs, report=_threshold_report, lossy=True, own_down_layout=True,
        doc="calibrated per-layer thresholds on |act(gate)| or |h| (CATS, TEAL, top-k%), any gate, lossy"),
    SparseVariant(
        "neuron-threshold", attrs={}, extra_inputs=("neuron_thr", "scale"),
        intermediate=lambda x, w_gate, w_up, extras, attrs, b_gate=None, b_up=None: neuron_thresholded(
            x, w_gate, w_up, attrs, extras["neuron_thr"], b_gate, b_up,
            np.reshape(extras["scale"], (*np.shape(x)[:-1], 1))),
        kernels={}, kernel_options=_activation_options, dense_attrs=_plain_attrs, report=_neuron_threshold_report,
        measure=_neuron_threshold_measure, lossy=True, report_mode="threshold",
        doc="CATS at a calibrated threshold per neuron, then a cut on h (a routed expert's, until route-moe stacks "
            "it), lossy"),
    SparseVariant(
        "predictor",
        # cutoff: scores above it are computed; the rest is what calibration chose and saw (provenance for the
        # report): rank (None for sign), bytes as % of the block's MLP, recall and true sparsity on held-out rows
        attrs={"predictor": "lowrank", "cutoff": 0.0, "rank": None, "predictor_bytes_pct": None,
               "calibrated_recall": None},
        extra_inputs=("scores",), intermediate=_predictor_intermediate,
        kernels={"cpu": "predicted", "cuda": "scored"}, kernel_options=_exact_options,
        dense_attrs=_plain_attrs, report=_predictor_report, lossy=True, measure=_predictor_measure,
        own_down_layout=True, hidden_norm_families=("cpu", "cuda"),
        doc="a per-layer predictor (lowrank, svd, sign) picks the neurons; ReLU-family gates, lossy"),
    SparseVariant(
        "certified", attrs={}, extra_inputs=("scores",), intermediate=_exact_intermediate,
        kernels={"cpu": "predicted", "cuda": "scored"}, kernel_options=_exact_options, dense_attrs=_plain_attrs,
        report=_certified_report, measure=_certified_measure, report_mode="exact", own_down_layout=True,
        hidden_norm_families=("cpu", "cuda"),
        doc="exact mode whose gate rows are read only for neurons an int8 gate copy cannot certify inactive"),
    SparseVariant(
        "input",
        # x_keep / h_keep: top-k counts per token (0: thresholds); the semantics are in ir/input_sparse.py
        # rotation_share: a rotated-* method's Q (the linear in front) as a share of the block's weight bytes
        attrs={"x_keep": 0, "h_keep": 0, "effective_calibrated": None, "input_sparsity": None, "rotation_share": 0.0},
        extra_inputs=("x_thr", "h_thr"), intermediate=input_intermediate,
        kernels={"cpu": "input", "cuda": "input"},
        kernel_options=lambda attrs: {"gate_act": attrs["gate_act"], "up_act": attrs.get("up_act", "identity"),
                                      "criterion": attrs.get("criterion", "product"), "x_keep": attrs.get("x_keep", 0),
                                      "h_keep": attrs.get("h_keep", 0)},
        dense_attrs=_plain_attrs, report=_input_report, lossy=True, gate_up_layout="columns",
        measure=input_measure,
        doc="TEAL / WINA input sparsity: per-channel thresholds on x and on the down input, skipped weight rows"),
    SparseVariant(
        "cold",
        # base: the variant whose semantics it keeps; store: the cold store's name (the host function's);
        # window: neurons kept resident after use (an LRU window)
        attrs={"base": "exact", "store": "", "window": 0},
        extra_inputs=(), intermediate=_exact_intermediate,
        kernels={"cpu": "cold", "cuda": "cold"},
        kernel_options=_cold_options, dense_attrs=_plain_attrs, report=_cold_report, quantized_kernels=False,
        doc="the cold part of a hot/cold split: neurons read on demand from slow memory (exact semantics)"),
    SparseVariant(
        "cold-predictor", attrs={"store": "", "window": 0, "cutoff": 0.0},
        extra_inputs=("scores",), intermediate=_predictor_intermediate,
        kernels={"cpu": "cold", "cuda": "cold"}, kernel_options=_cold_options, dense_attrs=_plain_attrs,
        report=_cold_report, lossy=True, quantized_kernels=False, measure=_predictor_measure,
        doc="the cold part of a predictor-mode hot/cold split: predicted neurons' gate, up and down rows read on "
            "demand"),
    SparseVariant(
        "cutoff", attrs={}, extra_inputs=("gate",), intermediate=_cutoff_intermediate,
        kernels={"cpu": "cutoff", "cuda": "cutoff"}, kernel_options=_cutoff_options, dense_attrs=_plain_attrs,
        report=lambda attrs: {"reason": "per-token cutoff: gate computed densely, up/down rows of active neurons"},
        report_mode="exact", dense_twin="cutoff-dense",
        doc="exact mode of a gate cut at a per-token cutoff (Gemma 3n): the activated gate computed first, the up and "
            "down rows of its nonzero neurons read"),
    SparseVariant(
        "cutoff-dense", attrs={}, extra_inputs=("gate",), intermediate=_cutoff_intermediate,
        kernels={"cpu": "cutoff-dense", "cuda": "cutoff-dense"}, kernel_options=_cutoff_options,
        dense_attrs=_plain_attrs, report_mode="dense", dense_twin="cutoff-dense",
        doc="the dense twin of a cutoff block: the activated gate given, every up and down row read"),
    SparseVariant(
        # the fused dense kernel on the same layout (@Wd.t): dense mode (passes/fuse_gated_mlp.py) and the dense
        # twin of a sparse artifact (passes/densify.py), so both time the kernel benchmarks/ffn.py times
        # reason: why a sparse mode kept this block dense (threshold mode's cost rule), for the report
        "dense", attrs={"reason": ""}, extra_inputs=(), intermediate=_exact_intermediate,
        kernels={"cpu": "dense", "cuda": "dense"}, kernel_options=_activation_options, dense_attrs=_plain_attrs,
        report=lambda attrs: {"reason": attrs["reason"]} if attrs.get("reason") else {},
        doc="every neuron computed, gate/up/down fused in one kernel (dense mode; any gate activation)"),
)}

SPARSE_GATED_MLP_ATTRS = {**COMMON_ATTRS, **{k: v for variant in VARIANTS.values() for k, v in variant.attrs.items()}}
LOSSY = tuple(name for name, v in VARIANTS.items() if v.lossy)
# variants whose neurons live in slow memory (their kernel is the cold store's host function)
COLD_MODES = tuple(name for name, v in VARIANTS.items() if "cold" in v.kernels.values())


def variant(mode: str) -> SparseVariant:
    try:
        return VARIANTS[mode]
    except KeyError:
        raise ValueError(f"unknown sparse_gated_mlp mode {mode!r}; known: {', '.join(VARIANTS)}") from None


def variant_of(attrs: Mapping) -> SparseVariant:
    return variant(attrs.get("mode", "exact"))


def split_inputs(arrays, attrs) -> tuple[list, dict]:
    """A sparse_gated_mlp's input values -> ([x, w_gate, w_up, w_down_t], {extra input name: value})."""
    extra = variant_of(attrs).extra_inputs
    return list(arrays[:4]), dict(zip(extra, arrays[4:]))


def intermediate(x, w_gate, w_up, extras, attrs, b_gate=None, b_up=None) -> np.ndarray:
    """h of the node's variant (see the module docstring)."""
    return variant_of(attrs).intermediate(x, w_gate, w_up, extras, attrs, b_gate, b_up)


def reference(*args) -> np.ndarray:
    """The op's numpy reference: (x, w_gate, w_up, w_down_t, *extras, attrs, env) -> y."""
    arrays, attrs = args[:-2], args[-2]
    (x, w_gate, w_up, w_down_t), extras = split_inputs(arrays, attrs)
    return (rms_normed(intermediate(x, w_gate, w_up, extras, attrs), attrs) @ w_down_t.astype(x.dtype)).astype(x.dtype)


def check_inputs(n_inputs: int, attrs: Mapping) -> None:
    """The verifier's arity check: the base inputs plus the variant's extra inputs."""
    v = variant_of(attrs)
    want = len(BASE_INPUTS) + len(v.extra_inputs)
    if n_inputs != want:
        raise TypeError(f"sparse_gated_mlp{{mode={v.name!r}}} takes {want} inputs "
                        f"({', '.join(BASE_INPUTS + v.extra_inputs)}), got {n_inputs}")
