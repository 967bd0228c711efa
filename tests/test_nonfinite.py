"""NaN and Inf propagate as in torch, in every kernel and through a compiled model.

torch's semantics, which float64 numpy shares (kernel_cases.mlp_reference): relu(NaN) = NaN, FATReLU
(where(g > t, g, 0)) of NaN is 0, 0 · Inf = NaN. So in the exact and threshold kernels a neuron whose gate is NaN
counts as active (its NaN reaches the output), and a token whose input holds NaN/Inf lists every neuron (an
"inactive" neuron then adds 0 · Inf = NaN, as the dense computation does). Non-finite up/down weights cannot be
skipped that way: sparsify-exact keeps such a block dense (compile test below).

Hypothesis draws the kernel, the sizes, the activations and where the NaN/Inf go (input entries, gate weights;
for the dense kernel also up/down weights). The output must have NaN exactly where the reference has NaN, the
same infinities, and the reference's finite values within the kernel tolerance.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .kernel_cases import examples, mlp_inputs, mlp_reference, primfunc, run_native, threshold_reference

pytest.importorskip("tvm")

SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf])
KERNELS = {"exact": (["relu", "fatrelu"], ["x", "gate"]), "threshold": (["relu", "silu", "gelu"], ["x", "gate"]),
           "dense": (["relu", "fatrelu", "silu"], ["x", "gate", "up", "down"])}


def assert_same_specials(out, ref, finite_check):
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(out), nan), f"NaN at {np.argwhere(np.isnan(out) != nan)[:4].tolist()} differ"
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(out), inf) and np.array_equal(out[inf], ref[inf]), "infinities differ"
    finite_check(~(nan | inf))


@settings(max_examples=examples(4), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kernels_propagate_nan_and_inf_as_torch(data):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    kind = data.draw(st.sampled_from(sorted(KERNELS)), label="kernel")
    gate_acts, places = KERNELS[kind]
    d, n_ff, M = data.draw(st.integers(1, 24), label="d"), data.draw(st.integers(1, 40), label="n_ff"), \
        data.draw(st.integers(1, 3), label="M")
    gate_act = data.draw(st.sampled_from(gate_acts), label="gate_act")
    threshold = 0.5 if gate_act == "fatrelu" or kind == "threshold" else 0.0
    acts = (gate_act, "identity", threshold, "gate")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x, ws = mlp_inputs(rng, M, d, n_ff, "float32", rng.choice(n_ff, n_ff // 3, replace=False), gate_act)
    arrays = {"x": x, "gate": ws[0], "up": ws[1], "down": ws[2]}
    if kind != "dense" and gate_act == "fatrelu":
        places = ["x"]
    for _ in range(data.draw(st.integers(1, 3), label="specials")):
        place = data.draw(st.sampled_from(places), label="where")
        where = arrays[place]
        if kind == "threshold" or (kind == "exact" and place == "gate"):
            # skipping kernels see non-finite weights only as a NaN gate (compile keeps other such blocks dense,
            # test below); Inf inputs reach the threshold kernel as they do the exact one
            value = np.nan
        else:
            value = data.draw(SPECIAL, label="value")
        where[rng.integers(where.shape[0]), rng.integers(where.shape[1])] = value
    prim = primfunc(kind, d, n_ff, "float32", schedule_for(targets.get("x86")), acts)
    out = run_native(prim, [_call(x, ws, M, d)])[0]
    if kind == "threshold":
        ref, scale, slack = _threshold_reference(x, ws, gate_act, threshold)
    else:
        ref, scale = mlp_reference(x, *ws, gate_act, "identity", threshold)
        slack = 0.0

    def finite_close(mask):
        bound = 1e-4 * (scale + 1e-3 * max(float(np.nanmax(np.where(np.isfinite(scale), scale, 0), initial=0)), 1))
        err = np.abs(out.astype(np.float64) - ref)
        assert np.all((err <= bound + slack)[mask]), "finite outputs differ"

    assert_same_specials(out, ref, finite_close)


def _call(x, ws, M, d):
    from .kernel_cases import Call

    return Call([x, *ws, np.full((M, d), np.nan, np.float32)], None, None, "float32")


def _threshold_reference(x, ws, gate_act, threshold):
    """The CATS (criterion "gate") reference with a NaN activation kept; rows whose gate or input holds NaN are
    all NaN, the others are the plain reference."""
    ref, scale, slack = threshold_reference(x, *ws, gate_act, "identity", threshold, "gate")
    bad_token = ~np.isfinite(x).all(axis=1)
    bad_neuron = ~np.isfinite(ws[0]).all(axis=1)
    ref = ref.copy()
    ref[bad_token] = np.nan
    if bad_neuron.any():
        ref[:] = np.nan
    return ref, np.where(np.isfinite(scale), scale, 0), np.where(np.isfinite(slack), slack, 0)


def test_compiled_model_keeps_nan_and_inf_and_dense_relu_propagates_nan():
    """Through compile(): relu lowered by Relax keeps NaN; an exact-mode block with NaN in its up weights stays
    dense (the report says why) and its output equals the reference's NaN pattern."""
    import actsparse
    from actsparse.ir import evaluate, parse_graph, print_graph

    from .helpers import gated_mlp_graph, mlp_input

    graph = gated_mlp_graph()
    weights = dict(graph.weights)
    weights["mlp.up.weight"] = weights["mlp.up.weight"].copy()
    weights["mlp.up.weight"][3, 5] = np.inf
    text = print_graph(graph).replace("  return %4", "  %5 = relu(%x) : f32[1,seq,24]\n  return %4, %5")
    graph = parse_graph(text, weights)
    cm = actsparse.compile(graph, (mlp_input(),), mode="exact")
    block = next(b for b in cm.report.blocks if b.location == "mlp")
    assert block.mode == "dense" and "NaN/Inf" in block.reason
    x = mlp_input(seq=3)
    x[0, 1, 2] = np.nan
    out, relu = cm(x)
    ref_out, ref_relu = evaluate(graph, [x])
    assert np.isnan(relu[0, 1, 2]) and np.array_equal(np.isnan(relu), np.isnan(ref_relu))
    assert np.isnan(out[0, 1]).all()  # the token holding NaN
    assert_same_specials(out, ref_out, lambda finite: np.testing.assert_allclose(out[finite], ref_out[finite],
                                                                                 rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("kind, gate_act, where, value", [
    ("exact", "relu", "x", np.inf),        # every gate dot -inf: relu 0 lists nothing, yet torch's 0 * u(Inf) is NaN
    ("exact", "relu", "gate", np.nan),     # a NaN gate counts as active
    ("exact", "fatrelu", "x", np.nan),     # FATReLU(NaN) = 0 (torch's where), yet u is NaN: 0 * NaN = NaN
    ("threshold", "silu", "x", np.nan),
    ("dense", "relu", "gate", np.nan),     # relu(NaN) = NaN, not max's 0
    ("dense", "fatrelu", "gate", np.nan),  # FATReLU(NaN) = 0 (torch's where): finite output
])
def test_nan_and_inf_reach_the_output(kind, gate_act, where, value):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    M, d, n_ff = (1 if value == np.inf else 2), 8, 16  # one token: no other token lists neurons for it
    threshold = 0.5 if gate_act == "fatrelu" or kind == "threshold" else 0.0
    rng = np.random.default_rng(0)
    x, ws = mlp_inputs(rng, M, d, n_ff, "float32", np.arange(4), gate_act)
    (x if where == "x" else ws[0])[0, 3] = value
    if value == np.inf:
        ws[0][:, 3] = -np.abs(ws[0][:, 3]) - 0.1  # (x > 0) every gate dot of token 0 is -inf
    acts = (gate_act, "identity", threshold, "gate")
    prim = primfunc(kind, d, n_ff, "float32", schedule_for(targets.get("x86")), acts)
    out = run_native(prim, [_call(x, ws, M, d)])[0]
    if gate_act == "fatrelu" and where == "gate":
        ref, _ = mlp_reference(x, *ws, gate_act, "identity", threshold)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        return
    assert np.isnan(out[0]).all() if where == "x" else np.isnan(out).all()
    if where == "x" and M > 1:
        assert np.isfinite(out[1]).all()  # the other token is untouched

