"""Semantics of `routed_moe`: a mixture-of-experts layer whose experts run only on the tokens routed to them.

    routed_moe(x[..., d], w_gate[E·n, d], w_up[E·n, d], w_down_t[E·n, d_out], route_w[..., k], route_i[..., k])
        out[t] = Σ_j route_w[t, j] · expert_{route_i[t, j]}(x[t])
        expert_e(x) = (act_gate(x·Wg_eᵀ) ⊙ act_up(x·Wu_eᵀ))·Wd_e,   Wg_e = w_gate[e·n : (e+1)·n]  (likewise Wu, Wd)

The experts' weights are stacked along the rows, one neuron per row (the sparse kernels' layout: the down projection
transposed), so expert e is a row range and a quantized layout stores it unchanged. `down_rows` says how the down
stack's rows run (`DOWN_ROWS`): "neurons" (the default: w_down_t [E·n, d_out], a neuron per row, so exact mode skips an
inactive neuron's row) or "outputs" (w_down [E·d_out, n], an output column per row, Wd_eᵀ = w_down[e·d_out :
(e+1)·d_out]: a GGUF's `ffn_down_exps` as stored, its blocks running along n — a dense expert's down projection is then
one row dot per output over h, and the file's blocks are read as they are instead of re-laid a neuron per row at 8 bits;
dense mode only, as nothing skips along an output row). `route_i` holds expert ids in [0, E) (a router's top-k indices).
The expert index is data: a kernel gathers each expert's tokens and skips an expert no token chose, so a decoding step
reads k experts' weights instead of E.

With `bias` (gpt-oss's experts) three stacked biases follow the routing, each a row range per expert as the
weights: b_gate[E·n] and b_up[E·n] inside the activations, act_gate(x·Wg_eᵀ + bg_e), and b_down[E, d_out] added
to each expert's output before its routing weight scales it. Which inputs follow is data (`routed_inputs`).

`mode` is the experts' variant: "dense" (every neuron of a routed expert is read), "exact" (ReLU-family gates:
only the neurons some routed token activates; lossless, as `sparse_gated_mlp{mode=exact}`) or "threshold"
(threshold mode's CATS criterion with a threshold per neuron, scaled by the routing weight, then a cut on h; lossy: a
seventh input thresholds[2, E·n] holds each expert's neurons' two calibrated cuts, stacked as the weights' rows; with
r_e = Σ_j route_w[t, j]·[route_i[t, j] = e] a token's routing weight to e, the token keeps neuron i of expert e only
where |act_gate(g_i)|·|r_e| > thresholds[0, e·n + i] — then its up row is read — and |h_i|·|r_e| >
thresholds[1, e·n + i] — then its down row is read; as `sparse_gated_mlp{mode=neuron-threshold}` with that r_e as its
scale). The routing weight is there because the expert's output reaches the layer's scaled by it: a neuron's
contribution is r_e·h_i·W_down[:, i], so one cut on the layer's output scale serves every expert and token
(passes/routed_thresholds.py). "input" (threshold mode's input methods: TEAL / WINA input sparsity per expert,
`sparse_gated_mlp{mode=input}`'s semantics, ir/input_sparse.py, on the tokens routed to it): the gate and up stacks
hold each expert transposed, w_gate_t [E·d, n] (expert e's input channel i is row e·d + i, so a skipped channel skips
a contiguous row), and two inputs follow the routing, x_thr [E·d] and h_thr [E·n]: a token routed to e keeps channel i
where |x_i| > x_thr[e·d + i] and then neuron j where |h_j| ('product') or |act_gate(g_j)| ('gate', `criterion`) >
h_thr[e·n + j]. x is whatever the experts read: the rotated-* methods turn it once per layer (a `linear` in front,
shared by the layer's experts, whose router reads the unturned x). `pattern` and the node's location name the experts
for the report (expert e's row is `<loc>.<e>`).

The pass that produces it (passes/route_moe.py) matches the all-experts form Σ_e expert_e(x) · r_e with
r_e = Σ_j route_w[:, j]·[route_i[:, j] = e]; both forms agree wherever the experts' outputs are finite (the
all-experts form multiplies an unchosen expert's output by 0, and 0 · Inf is NaN; the routed form, like the
models' own forward, never computes it).
"""

from __future__ import annotations

import numpy as np

from .input_sparse import input_sparse_parts
from .sparse_variants import dense_intermediate, neuron_thresholded
from .types import TensorType

ROUTED_MOE_ATTRS = {"experts": None, "gate_act": "relu", "up_act": "identity", "threshold": 0.0, "mode": "exact",
                    "pattern": "reglu", "bias": False, "down_rows": "neurons",
                    # threshold experts' provenance for the report: their method, per expert the sparsity calibrated
                    # on its routed tokens, and why not the mode's own method (passes/route_moe.py)
                    "method": None, "expert_calibrated": (), "reason": None,
                    # mode input: the down input's score (ir/input_sparse.py), the share of the experts' bytes a
                    # rotation in front costs (the report takes it off the effective sparsity) and per expert the
                    # share of its bytes calibration found unread (net of that)
                    "criterion": "product", "rotation_share": 0.0, "expert_effective": ()}
# the expert variants a routed kernel exists for -> the kernel families that have it (a family without one runs
# dense and exact experts all-experts in Relax; threshold experts it never gets: the threshold pass leaves them
# lossless there, `routed_reason`; the lowering refuses a threshold routed_moe for it)
ROUTED_MODES = {"dense": ("cpu", "cuda"), "exact": ("cpu", "cuda"), "threshold": ("cpu", "cuda"), "input": ("cpu",)}
TRANSPOSED_MODES = ("input",)   # gate / up stacks [E·d, n]: an expert's input channel per row
# how the down stack's rows run -> (the modes that may store it so, the kernel families whose routed kernel reads it)
DOWN_ROWS = {"neurons": (tuple(ROUTED_MODES), ("cpu", "cuda")),
             "outputs": (("dense",), ("cpu", "cuda"))}
ROUTED_INPUTS = ("x", "w_gate", "w_up", "w_down_t", "route_w", "route_i")
ROUTED_BIASES = ("b_gate", "b_up", "b_down")  # follow the routing when attrs["bias"]: [E·n], [E·n], [E, d_out]
ROUTED_THRESHOLDS = ("thresholds",)  # mode threshold: [2, E·n], neuron i of expert e's gate / h cut at [:, e·n + i]
ROUTED_INPUT_THRESHOLDS = ("x_thr", "h_thr")  # mode input: [E·d] and [E·n], expert e's at rows e·d.. / e·n..
# the inputs after the routing, by mode (biases: `bias`, mode dense)
MODE_INPUTS = {"threshold": ROUTED_THRESHOLDS, "input": ROUTED_INPUT_THRESHOLDS}
BIASED_MODES = ("dense",)  # a bias inside the gate moves its zero: exact mode's skipping would not hold
# why a lossy mode leaves its routed experts lossless: no routed kernel (of the target's family, for threshold mode)
# takes what the mode adds (the table: mode -> that), and run all-experts (every expert on every token, weighted)
# they would cost E/k times the routed experts' reads. They run exact where exactly sparse (ReLU-family: their zero
# neurons skipped), else dense
ROUTED_REASONS = {"threshold": "calibrated thresholds", "predictor": "a predictor"}


def routed_reason(mode: str, runs_as: str, family: str | None = None) -> str:
    """The report's reason for a routed expert that lossy `mode` leaves to run `runs_as` ("exact" | "dense");
    `family`: the target's kernel family, where another family's routed kernel would take the mode."""
    which = f"{family} routed kernel" if family else "routed kernel"
    return (f"a routed expert: {mode} mode runs it {runs_as} so that it runs on its tokens only (no {which} "
            f"takes {ROUTED_REASONS[mode]}; every expert on every token would cost E/k times the routed {runs_as} "
            f"experts' reads)")


def routed_kernel_takes(mode: str, family: str) -> bool:
    """Whether kernel family `family` has a routed kernel for experts of variant `mode`."""
    return family in ROUTED_MODES.get(mode, ())


def down_rows_problem(down_rows: str, mode: str) -> str | None:
    """Why experts of `mode` cannot store their down stack by `down_rows` (one message for the type rule and the
    kernels), else None."""
    if down_rows in DOWN_ROWS and mode in DOWN_ROWS[down_rows][0]:
        return None
    valid = ", ".join(f"{name} (mode {' / '.join(modes)})" for name, (modes, _) in DOWN_ROWS.items())
    return f"routed_moe down_rows {down_rows!r} with mode {mode!r}; valid: {valid}"


def down_rows_allowed(down_rows: str, mode: str, family: str) -> bool:
    """Whether experts of `mode` may store their down stack by `down_rows` for kernel family `family`."""
    modes, families = DOWN_ROWS[down_rows]
    return mode in modes and family in families


def expert_outputs(attrs, w_down) -> int:
    """d_out, the experts' output width, from the down stack's type or array shape (`down_rows`)."""
    return w_down[0] // attrs["experts"] if attrs.get("down_rows", "neurons") == "outputs" else w_down[1]


def down_stack_by_outputs(down_t: np.ndarray, experts: int) -> np.ndarray:
    """A down stack a neuron per row [E·n, d_out] as `down_rows="outputs"` holds it, [E·d_out, n] (a copy)."""
    n, d_out = down_t.shape[0] // experts, down_t.shape[1]
    return down_t.reshape(experts, n, d_out).transpose(0, 2, 1).reshape(-1, n)


def routed_inputs(attrs) -> tuple[str, ...]:
    """The names of a routed_moe's inputs, in order, for its attrs."""
    return ROUTED_INPUTS + (ROUTED_BIASES if attrs.get("bias") else ()) + MODE_INPUTS.get(attrs.get("mode"), ())


def expert_sizes(attrs, w_gate_shape) -> tuple[int, int]:
    """(d, n): an expert's input width and neurons, from the gate stack's shape ([E·n, d], or [E·d, n] in a
    TRANSPOSED_MODES mode)."""
    rows, cols = w_gate_shape
    if attrs.get("mode") in TRANSPOSED_MODES:
        return rows // attrs["experts"], cols
    return cols, rows // attrs["experts"]


def routed_moe_type(types, attrs) -> TensorType:
    names = routed_inputs(attrs)
    if len(types) != len(names):
        raise TypeError(f"routed_moe with bias={bool(attrs.get('bias'))} takes {len(names)} inputs "
                        f"({', '.join(names)}), got {len(types)}")
    x, w_gate, w_up, w_down_t, route_w, route_i = types[:6]
    experts = attrs["experts"]
    if attrs.get("mode", "exact") not in ROUTED_MODES:
        raise TypeError(f"routed_moe mode must be one of {ROUTED_MODES}, got {attrs.get('mode')!r}")
    if attrs.get("bias") and attrs.get("mode", "exact") not in BIASED_MODES:
        raise TypeError(f"routed_moe with biases runs in mode {' or '.join(BIASED_MODES)}, got {attrs.get('mode')!r}")
    if not isinstance(experts, int) or experts < 1 or w_gate.shape[0] % experts:
        raise TypeError(f"routed_moe: {experts!r} experts do not divide the stacked weight rows {w_gate}")
    rows = attrs.get("down_rows", "neurons")
    if (problem := down_rows_problem(rows, attrs.get("mode", "exact"))) is not None:
        raise TypeError(problem)
    d, n = expert_sizes(attrs, w_gate.shape)
    # the down stack: a neuron per row [E·n, d_out], or an output per row [E·d_out, n]
    down_ok = (w_down_t.shape[0] == experts * n if rows == "neurons"
               else w_down_t.shape[0] % experts == 0 and w_down_t.shape[1] == n)
    if x.shape[-1] != d or w_up.shape != w_gate.shape or not down_ok:
        raise TypeError(f"routed_moe weights {w_gate}, {w_up}, {w_down_t} (down_rows {rows}) do not match x {x}")
    d_out = expert_outputs(attrs, w_down_t.shape)
    if route_w.shape != route_i.shape or route_w.shape[:-1] != x.shape[:-1] or route_i.dtype not in ("i64", "i32"):
        raise TypeError(f"routed_moe routing {route_w}, {route_i} must be [..., k] (float, int) over x {x}'s tokens")
    if attrs.get("mode") == "threshold":
        if types[6].shape != (2, w_gate.shape[0]) or not types[6].dtype.startswith("f"):
            raise TypeError(f"routed_moe thresholds {types[6]} must be float [2, {w_gate.shape[0]}]: a gate cut and "
                            "a cut on h per expert neuron, stacked as the weights' rows")
        return TensorType((*x.shape[:-1], d_out), x.dtype)
    if attrs.get("mode") == "input":
        if (types[6].shape, types[7].shape) != ((experts * d,), (experts * n,)) or not all(
                t.dtype.startswith("f") for t in types[6:8]):
            raise TypeError(f"routed_moe x_thr {types[6]} and h_thr {types[7]} must be float [{experts * d}] and "
                            f"[{experts * n}]: each expert's input channels' and neurons' thresholds, stacked")
        if attrs.get("criterion", "product") not in ("product", "gate"):
            raise TypeError(f"routed_moe criterion must be 'product' or 'gate', got {attrs.get('criterion')!r}")
        return TensorType((*x.shape[:-1], d_out), x.dtype)
    want = ((w_gate.shape[0],), (w_gate.shape[0],), (experts, d_out))
    if any(b.shape != shape for b, shape in zip(types[6:], want)):
        raise TypeError(f"routed_moe biases {[str(b) for b in types[6:]]} must be b_gate, b_up [{w_gate.shape[0]}] "
                        f"and b_down [{experts}, {d_out}]")
    return TensorType((*x.shape[:-1], d_out), x.dtype)


def expert_rows(attrs, w_gate_rows: int, e: int) -> slice:
    """Expert e's rows of the gate stack (its neurons; its input channels in a TRANSPOSED_MODES mode)."""
    n = w_gate_rows // attrs["experts"]
    return slice(e * n, (e + 1) * n)


def routed_moe_ref(x, w_gate, w_up, w_down_t, route_w, route_i, *rest):
    """Per expert: gather the tokens routed to it, run it, add its output scaled by their routing weight."""
    *extra, attrs, _ = rest
    thresholds = extra.pop() if attrs.get("mode") == "threshold" else None
    cuts = (extra.pop(-2), extra.pop()) if attrs.get("mode") == "input" else None
    biases = extra
    b_gate, b_up, b_down = biases or (None, None, None)
    x2 = x.reshape(-1, x.shape[-1])
    weights, index = route_w.reshape(len(x2), -1), route_i.reshape(len(x2), -1)
    d_out = expert_outputs(attrs, w_down_t.shape)
    by_outputs = attrs.get("down_rows", "neurons") == "outputs"
    out = np.zeros((len(x2), d_out), x.dtype)
    for e in range(attrs["experts"]):
        hit = index == e
        tokens = np.flatnonzero(hit.any(-1))
        if tokens.size == 0:
            continue
        rows = expert_rows(attrs, w_gate.shape[0], e)   # (input mode: its input channels)
        if cuts is not None:   # input mode: its neurons run along the columns, one down row each
            channels, rows = rows, slice(e * w_gate.shape[1], (e + 1) * w_gate.shape[1])
            h = input_sparse_parts(x2[tokens], w_gate[channels], w_up[channels], cuts[0][channels], cuts[1][rows],
                                   attrs)[2]
        elif thresholds is None:
            h = dense_intermediate(x2[tokens], w_gate[rows], w_up[rows], attrs,
                                   *((b_gate[rows], b_up[rows]) if biases else ()))
        else:
            h = neuron_thresholded(x2[tokens], w_gate[rows], w_up[rows], attrs, thresholds[:, rows],
                                   scale=routing_weight(weights, index, e)[tokens, None])
        down = w_down_t[e * d_out:(e + 1) * d_out].T if by_outputs else w_down_t[rows]
        y = h @ down.astype(x.dtype) + (0 if b_down is None else b_down[e].astype(x.dtype))
        out[tokens] += routing_weight(weights, index, e)[tokens, None].astype(x.dtype) * y
    return out.reshape(*x.shape[:-1], d_out)


def routing_weight(route_w: np.ndarray, route_i: np.ndarray, e: int) -> np.ndarray:
    """r_e per token ([tokens, k] routing -> [tokens]): Σ_j route_w[:, j]·[route_i[:, j] = e]."""
    return (route_w * (route_i == e)).sum(-1)

