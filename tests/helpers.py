"""Small builders shared by tests: gated-MLP graphs in IR form with controllable sparsity; a child process's
JSON result lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from actsparse.ir import parse_graph

MLP_TEXT = """graph @main(%x: f32[1,seq,{d}]) {{
  @mlp.down.weight : f32[{d},{n}]
  @mlp.gate.weight : f32[{n},{d}]
  @mlp.up.weight : f32[{n},{d}]
  %0 = linear(%x, @mlp.gate.weight) : f32[1,seq,{n}]  # mlp.gate (t.py:1)
  %1 = {act}(%0){attrs} : f32[1,seq,{n}]  # mlp (t.py:2)
  %2 = linear(%x, @mlp.up.weight) : f32[1,seq,{n}]  # mlp.up (t.py:3)
{up}  %4 = mul(%1, {up_ref}) : f32[1,seq,{n}]  # mlp (t.py:4)
  %5 = linear(%4, @mlp.down.weight) : f32[1,seq,{d}]  # mlp.down (t.py:5)
  return %5
}}
"""


def gated_mlp_graph(d=24, n=40, act="relu", up_relu=False, threshold=0.0, gate_shift=0.0, seed=0):
    """One gated MLP; `gate_shift` moves the gate pre-activations (very negative: all neurons off)."""
    attrs = f" {{'threshold': {threshold}}}" if act == "fatrelu" else ""
    up = f"  %3 = relu(%2) : f32[1,seq,{n}]  # mlp (t.py:3)\n" if up_relu else ""
    text = MLP_TEXT.format(d=d, n=n, act=act, attrs=attrs, up=up, up_ref="%3" if up_relu else "%2")
    rng = np.random.default_rng(seed)
    # a constant input column lets the gate shift act like a bias: x[..., 0] = 1 always
    gate = (rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
    gate[:, 0] = gate_shift
    weights = {"mlp.gate.weight": gate,
               "mlp.up.weight": (rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32),
               "mlp.down.weight": (rng.standard_normal((d, n)) / np.sqrt(n)).astype(np.float32)}
    return parse_graph(text, weights)


def mlp_input(d=24, seq=5, seed=1):
    x = np.random.default_rng(seed).standard_normal((1, seq, d)).astype(np.float32)
    x[..., 0] = 1.0
    return x


def few_direction_inputs(d: int = 48, samples: int = 3, seq: int = 64, directions: int = 6, seed: int = 5) -> list:
    """Calibration samples [(x [1, seq, d],)] whose energy lies in a few directions (plus a little noise): a block
    rotation into their principal axes pays."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((directions, d)).astype(np.float32)
    return [((rng.standard_normal((1, seq, directions)) @ basis + 0.05 * rng.standard_normal((1, seq, d)))
             .astype(np.float32),) for _ in range(samples)]


def paying_x86():
    """This host's x86 target with no input costs: threshold mode's cost rule keeps no input-sparse block dense
    (tests of the input-sparse kernels under quantize=, whose tiny blocks the host's costs would keep dense)."""
    import dataclasses

    from actsparse import targets

    return dataclasses.replace(targets.get("x86"), input_byte_cost={}, input_fixed_bytes={})


def int8_dot_here(layout: str | None = None) -> bool:
    """Whether quantized row dots (of `layout` rows; None: of some layout) compiled for this host's x86 target take
    x rounded to 8-bit blocks: the host's int8 dot (VNNI, AVX2) serves the layout (`Int8Dot.layouts`)."""
    from actsparse import targets
    from actsparse.codegen.kernels.int8_dots import INT8_DOTS
    from actsparse.codegen.schedules import schedule_for

    dot = schedule_for(targets.get("x86")).int8_dot
    return bool(dot) and (layout is None or layout in INT8_DOTS[dot].layouts)


def int8_axpy_here(layout: str = "q4_0", kernels=None) -> bool:
    """Whether row axpys (the down projection) of `layout` rows compiled for this host round each step's
    coefficients to int8 per 32-column group (VNNI, codegen/kernels/quant_axpy8.py) in one of `kernels` (names of
    `schedule.AXPY_KERNELS`; None: any kernel)."""
    from actsparse import targets
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy
    from actsparse.codegen.kernels.schedule import AXPY_KERNELS
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("x86"))
    return any(uses_int8_axpy(layout, sched, k) for k in (AXPY_KERNELS if kernels is None else kernels))


def assert_quantized_close(got, want, rtol=1e-4, atol=1e-5, layout="q4_0", kernels=None):
    """A compiled quantized module against the interpreter on the same weights: within fp32 tolerance, or, where
    the down projection of `layout` rows in one of `kernels` (None: any) rounds its coefficients to 8 bits
    (`int8_axpy_here`; its bound is checked in tests/test_kernels_axpy8.py), within 2% of the output's largest
    magnitude and 1% in relative L2 norm (measured: 0.2-0.5%)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not int8_axpy_here(layout, kernels):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        return
    scale = np.abs(want).max(initial=0.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=0.02 * scale + atol)
    assert np.linalg.norm(got - want) <= 0.01 * np.linalg.norm(want) + atol, np.linalg.norm(got - want) / scale


def x_as_dots_see(x, layout: str | None = None):
    """An MLP input as the compiled quantized gate / up dots (of `layout` rows) see it on this host
    (`ir.quant.round_x8` where its int8 dot serves the layout, `int8_dot_here`)."""
    from actsparse.ir.quant import round_x8

    return round_x8(x) if int8_dot_here(layout) else x


def child_results(args: list[str], key: str, timeout: int) -> tuple[dict, subprocess.CompletedProcess]:
    """`python -m *args` in a child (a crash there fails its cases, not pytest) from the repo root: its stdout's
    JSON lines by their `key` field, and the process (exit code, output) for the message when one is missing."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=root,
                          env=env)
    entries = (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    return {entry[key]: entry for entry in entries}, proc


def vm_calls(module, run):
    """(what `run()` returns, the symbols of the VM calls it made on `module`, a CompiledModule, in order): a VM
    instrument records each callee and runs it as usual."""
    calls = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            calls.append(symbol)
        return 0  # run the call as usual

    module._vm.set_instrument(instrument)
    try:
        result = run()
    finally:
        module._vm.set_instrument(None)
    return result, calls
