"""aarch64 with NEON (128-bit vectors, 32 vector registers), cross-compiled from x86.

On an x86 host, modules built for it do not run in this process: their kernels are linked with
aarch64-linux-gnu-gcc and run under qemu-aarch64 (tests, `tests/cross.py`); a compiled model saves an
aarch64 library (`scripts/install-cross.sh` installs both tools).

Optional architecture features are data (`OPTIONAL`): a target declares them (registry names in `NAMES`, or the
`mattr` of a TVM target dict), and on an aarch64 host "arm" is the host's own, read from /proc/cpuinfo.
"""

from __future__ import annotations

import platform
from pathlib import Path

from .base import Target
from .memory import MemoryLevel

CROSS_CC = "aarch64-linux-gnu-gcc"

# feature -> (LLVM mattr, /proc/cpuinfo flag). fp16fml (FEAT_FHM: fmlal / fmlal2, fp16 products into fp32 sums;
# Neoverse N2/V1 and later, not N1); dotprod (FEAT_DotProd: sdot / udot, 4-way int8 -> int32 dots; Neoverse N1
# and later, Cortex-A55/A76+, Apple M1+; not Cortex-A53/A72): the quantized kernels' integer path); i8mm (FEAT_I8MM:
# usdot / smmla; declared, not used yet)
OPTIONAL = {"fp16fml": ("+fp16fml", "asimdfhm"), "dotprod": ("+dotprod", "asimddp"), "i8mm": ("+i8mm", "i8mm")}
# registry names of feature sets (others are named "arm-" + the features joined by "-")
NAMES = {(): "arm", ("fp16fml",): "arm-fhm", ("dotprod",): "arm-dotprod"}


def on_aarch64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def host_features() -> tuple[str, ...]:
    """The optional features of this aarch64 host (from /proc/cpuinfo's Features line); () elsewhere."""
    if not on_aarch64():
        return ()
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("Features")), [])
    except OSError:
        return ()
    return tuple(f for f, (_, flag) in OPTIONAL.items() if flag in flags)


def features_of(mattr) -> tuple[str, ...]:
    """The optional features an LLVM `mattr` list enables (in `OPTIONAL`'s order)."""
    return tuple(f for f, (attr, _) in OPTIONAL.items() if attr in tuple(mattr or ()))


def target(threads: int = 4, features: tuple[str, ...] = (), fp16fml: bool = False) -> Target:
    """An aarch64 NEON target with the optional `features` (keys of `OPTIONAL`; `fp16fml=True` adds "fp16fml")."""
    unknown = set(features) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"unknown aarch64 feature(s) {sorted(unknown)}; known: {', '.join(OPTIONAL)}")
    feats = tuple(f for f in OPTIONAL if f in features or (f == "fp16fml" and fp16fml))
    aarch64 = on_aarch64()
    lacking = [f for f in feats if f not in host_features()] if aarch64 else []
    native = aarch64 and not lacking  # an optional instruction this core lacks would stop the module (SIGILL)
    return Target(
        name=NAMES.get(feats, "-".join(("arm", *feats))),
        tvm={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"] + [OPTIONAL[f][0] for f in feats],
             "num-cores": threads},
        vector_bits=128,
        threads=threads,
        # Neoverse N1/N2 (Graviton 2/3): 64 KB L1d and 1 MB L2 per core, 32 MB shared L3; nominal one-core read
        # bandwidths of the reference part (`actsparse.targets.profile()` measures a host)
        memory=(MemoryLevel("L1", 64 << 10, 100e9, "core"), MemoryLevel("L2", 1 << 20, 50e9, "core"),
                MemoryLevel("L3", 32 << 20, 30e9), MemoryLevel("DRAM", 64 << 30, 20e9)),
        description="aarch64 NEON" + "".join(f" + {f}" for f in feats) + ("" if aarch64 else " (cross-compiled)"),
        runs_here=native,
        features=("neon", *feats),
        vector_registers=32,
        # two accumulators: an fp16 weight load fills a whole q register (ldr q, fcvtl + fcvtl2) and the down
        # projection's FMAs run in two independent chains (the little in-order cores stall on one)
        accumulators=2,
        cross_compiler=None if aarch64 else CROSS_CC,
        run_hint=(f"it uses {', '.join(lacking)}, which this CPU lacks: build for 'arm' here or run it on a core "
                  "that has them") if lacking else "run it on an aarch64 machine or under qemu-aarch64",
    )
