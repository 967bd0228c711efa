"""x86-64 CPU, detected from the host: machines differ (AMD Zen3 with AVX2 only, Intel/Zen4 with AVX-512),
so the LLVM CPU name, the vector width and the thread count are read here, never hard-coded."""

from __future__ import annotations

import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from ..errors import TargetError
from .base import Target
from .memory import host_levels


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown x86-64 CPU"


# nominal one-core read bandwidths (bytes/s) of current server parts; `actsparse.targets.profile()` measures them
NOMINAL_READ = {"L1": 100e9, "L2": 50e9, "L3": 30e9, "DRAM": 25e9, "disk": 2e9}  # disk: an NVMe SSD


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# hosts whose int8 dot the certified exact gate was measured on (AVX2-VNNI parts: not yet measured, so "dense")
CERTIFIED_GATE_FLAGS = ("avx512_vnni",)


# the CPU features the kernels choose by (/proc/cpuinfo names; LLVM's are in REQUIRABLE), in `Target.features`' order
ISA = ("avx512f", "avx512_fp16", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2", "fma", "f16c")


# LLVM's name -> /proc/cpuinfo's of the features whose instructions LLVM's code for a CPU may hold in our kernels
# (vector, FMA and bit-manipulation sets): what a build records (`Target.requires`) and a load checks. Crypto (aes,
# sha, vaes) and AMD-only extensions (sse4a) are left out: LLVM emits them for intrinsics no kernel calls, and an
# AMD build would be refused on every Intel CPU for them.
REQUIRABLE = {"avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2",
              "lzcnt": "abm", "popcnt": "popcnt", "movbe": "movbe", "avx512f": "avx512f", "avx512bw": "avx512bw",
              "avx512cd": "avx512cd", "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512ifma": "avx512ifma",
              "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2", "avx512bitalg": "avx512_bitalg",
              "avx512vpopcntdq": "avx512_vpopcntdq", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
              "avx512fp16": "avx512_fp16", "avxvnni": "avx_vnni", "gfni": "gfni"}


def _llvm_flags(spec: dict) -> set[str]:
    """The REQUIRABLE features (/proc names) LLVM gives the CPU (and `mattr`) of TVM target dict `spec`."""
    import tvm
    from tvm.target import codegen

    llvm = codegen.llvm_get_cpu_features(tvm.target.Target(dict(spec)))
    return {flag for name, flag in REQUIRABLE.items() if name in llvm}


@lru_cache(maxsize=1)
def host() -> Target:
    from tvm.target import codegen

    mcpu, flags = codegen.llvm_get_system_cpu(), _cpu_flags()
    # what LLVM may use for this CPU and this CPU has (a feature a VM hides is not required of other machines)
    requires = _llvm_flags({"kind": "llvm", "mcpu": mcpu}) & flags
    return replace(x86_target(flags, mcpu, _threads(), cpu_model()), requires=tuple(sorted(requires)))


def for_cpu(spec: dict) -> Target:
    """The target of a TVM target dict naming a CPU (`{"kind": "llvm", "mcpu": "haswell"}`): its vector width and
    features are what LLVM says that CPU (and its `mattr`) has, not this host's, so an AVX2 build on an AVX-512 host
    gets AVX2 kernels. It runs here when this host has every feature it uses."""
    import tvm
    from tvm.target import codegen

    known = codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"}))  # before TVM logs its own error
    if "mcpu" in spec and spec["mcpu"] not in known:
        raise TargetError(f"unknown x86 CPU {spec['mcpu']!r}; use one LLVM knows: x86-64-v3 (any AVX2 CPU), "
                          "x86-64-v4 (any AVX-512 CPU), or a name such as haswell, sapphirerapids, znver3, znver4")
    flags = _llvm_flags(spec)
    threads = int(spec.get("num-cores", _threads()))
    mcpu = str(spec.get("mcpu", "generic"))
    target = replace(x86_target(flags, mcpu, threads, f"LLVM's {mcpu}"), requires=tuple(sorted(flags)))
    why_not = not_here(target.to_dict())
    return replace(target, tvm=dict(spec), runs_here=not why_not, run_hint=why_not)


def missing_features(info: dict) -> tuple[str, ...]:
    """The features and required flags of target `info` (`Target.to_dict()`, an artifact's manifest) this host's
    CPU lacks: a module using them would stop on an illegal instruction."""
    flags = _cpu_flags()
    needed = dict.fromkeys((*info.get("features", ()), *info.get("requires", ())))
    return tuple(f for f in needed if f not in flags) if flags else ()


def not_here(info: dict) -> str:
    """'' where this CPU has every feature target `info` was built with, else which it lacks and the way out."""
    missing = missing_features(info)
    return (f"it uses {', '.join(missing)}, which this CPU lacks: rebuild it on this machine (target 'x86') or run "
            "it on a CPU that has them") if missing else ""


def x86_target(flags: set[str], mcpu: str, threads: int, model: str) -> Target:
    """The x86 target of a CPU (`model`, for people) with these /proc/cpuinfo `flags` and LLVM name `mcpu`."""
    vector_bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    # avx512_vnni / avx_vnni / avx2: the int8 dot the quantized kernels use (vpdpbusd; vpmaddubsw + vpmaddwd without
    # VNNI: codegen/schedules.py)
    isa = [f for f in ISA if f in flags]
    byte_cost, fixed_bytes = input_costs(flags, vector_bits)
    return Target(
        name="x86",
        tvm={"kind": "llvm", "mcpu": mcpu, "num-cores": threads},
        vector_bits=vector_bits,
        threads=threads,
        memory=host_levels(NOMINAL_READ),   # sizes from /sys
        description=f"{model} ({mcpu}, {'/'.join(isa) or 'sse'}, {threads} threads)",
        features=tuple(isa),
        vector_registers=32 if vector_bits == 512 else 16,
        # exact mode's gate: "certified" (an int8 copy of W_gate and a per-neuron bound decide most inactive neurons,
        # passes/certify_exact_gate.py) where the host has the AVX512-VNNI int8 dot it was measured with; elsewhere
        # every gate row is read. Quiet, Zen 4 (BENCHMARKS.md session 12): compile per Llama-2-7B layer +1.36 s vs
        # +1.24 s for "dense" (32 layers: 50 s vs 44 s; peak 1.37x vs 1.25x the weights, goals < 60 s / < 1.5x);
        # decode part (a) fp32 2.53x llama.cpp vs 1.89x reading every gate row (session 11)
        exact_gate="certified" if any(f in flags for f in CERTIFIED_GATE_FLAGS) else "dense",
        int8_axpy_kernels=gathered_int8_axpy(flags, vector_bits),
        input_byte_cost=byte_cost,
        input_fixed_bytes=fixed_bytes,
    )


# the input-sparse kernel's time against the dense path's, by the host's int8 dot (`axpy_dot`) and weight storage:
# (per byte it reads, a fixed part per call as the bytes dense reads in that time). A block whose kernel would take
# (1 - s) x per byte + fixed / the block's bytes of dense's time is no faster and stays dense (sparsify_threshold's
# cost rule). Fitted per host kind at two sizes, against the dense path as it is built since session 31 (three
# linears, on a GGUF's own blocks), 2 threads: SmolLM2-135M's 576 x 1536 in decode and one MLP at Mistral-7B's
# 4096 x 14336 from DRAM (threshold_step --kernels). fp32 / fp16: ~86% of the read limit at Mistral dims, 1.22x
# decode at 50% on SmolLM2 (Zen 4): 1.0, no fixed part.
# - AVX512-VNNI: refitted in session 44 (Intel Xeon, AVX-512 + VNNI, 480 MB L3) on the kernels as built since
#   sessions 42-43 (a decoding call's tasks read whole rows; the integer axpy's last groups in one more vector), input
#   / three linears at 30 / 50 / 70% skipped (medians): q4_0 0.83 / 0.60 / 0.36 at Mistral dims from DRAM, 0.68 /
#   0.58 / 0.46 at SmolLM2's; q8_0 0.79 / 0.57 / 0.35 and 0.79 / 0.63 / 0.46 (least squares, fixed part >= 0). The
#   session-35 fit (Zen 4, the column split: int4 1.16 + 0.63 MB, int8 1.5 + 1.4 MB) predicted 1.0 and 1.25 at
#   SmolLM2's size and 50%, where these kernels take 0.58 and 0.63. (SmolLM2's 30 layers, 45 MB at int4, fit this
#   host's L3; a host with a 32 MB L3 reads them from DRAM, where the Mistral-dims points, fixed part ~0, speak.)
# - AVX2 without VNNI (Zen 3, session 36): the q4_0 axpys are bound by their arithmetic (~12-14 GB/s of weights
#   against three linears' ~25); q8_0's (int16 pairs) near the linears' rate. Refitted in session 42, once a decoding
#   call's tasks read whole rows (`input_channels.py`), input / three linears' time at 30 / 50 / 70% skipped (medians):
#   q4_0 1.01 / 0.73 / 0.48 at Mistral dims, 1.38 / 1.11 / 0.73 at SmolLM2's; q8_0 0.89 / 0.63 / 0.37 and 0.82 / 0.65
#   / 0.43 (session 36's column split, Mistral dims: q4_0 1.11 / 1.10 / 0.53, q8_0 0.78 / 0.61 / 0.47).
INPUT_COSTS = {
    "avx512_vnni": {"int4": (1.13, 0.014e6), "int8": (1.11, 0.2e6)},
    "avx2": {"int4": (1.5, 0.48e6), "int8": (1.2, 0.1e6)},
}


def input_costs(flags, vector_bits: int) -> tuple[dict[str, float], dict[str, float]]:
    """(`Target.input_byte_cost`, `Target.input_fixed_bytes`) of a host: its int8 dot's row of INPUT_COSTS; a host
    whose input kernel takes float axpys (no int8 dot for them: 256-bit VNNI, no AVX2) is unmeasured and pays at
    least as much (session 13: a float q4_0 axpy cost about twice the integer one): the costliest row's values."""
    dot = axpy_dot(flags, vector_bits)
    rows = [INPUT_COSTS[dot]] if dot else list(INPUT_COSTS.values())
    storages = {k for row in rows for k in row}
    return ({k: max(row[k][0] for row in rows if k in row) for k in storages},
            {k: max(row[k][1] for row in rows if k in row) for k in storages})


def axpy_dot(flags, vector_bits: int) -> str | None:
    """The int8 dot this host's gathered axpys take ("avx512_vnni": 512-bit `vpdpbusd`; "avx2": `vpmaddubsw`, no VNNI
    at all), or None: 256-bit VNNI parts (the gathered kernels were measured slower there, sessions 7-8, and take
    float axpys) and hosts without AVX2."""
    if vector_bits == 512 and "avx512_vnni" in flags:
        return "avx512_vnni"
    if vector_bits == 256 and "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & set(flags):
        return "avx2"
    return None


def gathered_int8_axpy(flags, vector_bits: int) -> tuple[str, ...]:
    """The kernels whose quantized down projection takes the int8 dot on this host (`Target.int8_axpy_kernels`): on
    AVX512-VNNI the integer axpy reads split q4_0 rows' int8 coefficients from a per-step table (quant_axpy8.py), which
    makes it faster than the float lookup axpy for exact and indexed too (q4_0, 1 thread, interleaved: 0.86-0.97x the
    time, BENCHMARKS.md session 11), and for the input-sparse kernel, whose gate / up axpys then take it too: float,
    it ran no faster at 50% skipped than dense at SmolLM2-135M's 576 x 1536 q4_0 (session 13). On AVX2 without VNNI
    (the two-step `vpmaddubsw` dot, with the table too) likewise: q4_0 at Mistral-7B dims, 1 thread, under load,
    exact / indexed / dense 0.87 / 0.76 / 0.67x main's float-axpy time (medians of 31; best 0.79 / 0.69 / 0.61x), the
    input-sparse kernel 1.36x dense at 50% skipped (session 18). 256-bit VNNI: dense only (sessions 7-8, no table).
    q4_1's gathered kernels follow untimed (the FFN benchmark takes symmetric layouts only). The routed MoE kernel's
    experts run the exact / dense bodies, so they take it too (with the int8 row dots: a synthetic Qwen3-MoE GGUF's
    decode 1.4-1.5x, session 33)."""
    return ("dense", "exact", "indexed", "input", "routed") if axpy_dot(flags, vector_bits) else ("dense",)
