"""What the generated aarch64 code does per loop, read from its disassembly (objdump -d): the facts the ARM kernels
are designed for, checked without an ARM board (tests/test_kernels_arm.py, benchmarks/ffn_arm.py).

- `disassemble(module)`: objdump of a module built for an aarch64 target (needs aarch64-linux-gnu-objdump).
- `innermost_loops(asm)`: per innermost loop (a backward branch whose range holds no other loop) its prefetches,
  the bytes its SIMD/FP loads read per iteration (`ldr q` 16, `ldr d` 8, `ldp q` 32, ...) and its fp32 vector
  instructions (fmla, fmul, fadd on .4s).
- `opcode_counts(asm)`: how often each instruction occurs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_INSN = re.compile(r"^\s*([0-9a-f]+):\s+[0-9a-f]{8}\s+(\S+)\s*(.*)$")
_TARGET = re.compile(r"\b([0-9a-f]+) <")
_BRANCHES = ("b", "cbz", "cbnz", "tbz", "tbnz")
_REG_BYTES = {"q": 16, "d": 8, "s": 4, "h": 2}  # SIMD/FP register views
_LOADS = {"ldr": 1, "ldur": 1, "ldp": 2, "ldnp": 2}
OBJDUMP = "aarch64-linux-gnu-objdump"


@dataclass(frozen=True)
class Loop:
    start: int
    end: int
    prefetches: int
    load_bytes: int       # bytes read by SIMD/FP loads in one iteration
    loads: Counter        # ("ldr", "q") -> count
    vector_ops: Counter   # opcode -> count, instructions on 4 x fp32 (".4s") only

    @property
    def bytes_per_prefetch(self) -> float:
        return self.load_bytes / self.prefetches if self.prefetches else float("inf")


def disassemble(module, objdump: str = OBJDUMP) -> str:
    """objdump -d of a TVM module built for aarch64 (its object file)."""
    tool = shutil.which(objdump)
    if tool is None:
        raise FileNotFoundError(f"{objdump} not found (Debian: binutils-aarch64-linux-gnu)")
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "kernels.o"
        module.mod.write_to_file(str(obj)) if hasattr(module, "mod") else module.write_to_file(str(obj))
        return subprocess.run([tool, "-d", str(obj)], capture_output=True, text=True, check=True).stdout


def _instructions(asm: str) -> list[tuple[int, str, str]]:
    return [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(_INSN.match, asm.splitlines()) if m]


def opcode_counts(asm: str) -> Counter:
    return Counter(op for _, op, _ in _instructions(asm))


def load_width(op: str, args: str) -> tuple[str, int] | None:
    """(register view, bytes) of a SIMD/FP load, None for other instructions (integer loads included)."""
    if op not in _LOADS:
        return None
    view = args.split(",")[0].strip()[:1]
    return (view, _REG_BYTES[view] * _LOADS[op]) if view in _REG_BYTES else None


def innermost_loops(asm: str) -> list[Loop]:
    insns = _instructions(asm)
    spans = []
    for addr, op, args in insns:
        if op.split(".")[0] in _BRANCHES and (t := _TARGET.search(args)) and int(t.group(1), 16) < addr:
            spans.append((int(t.group(1), 16), addr))
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    loops = []
    for lo, hi in inner:
        body = [(op, args) for addr, op, args in insns if lo <= addr <= hi]
        widths = [(op, w) for op, args in body if (w := load_width(op, args))]
        loops.append(Loop(lo, hi, sum(op == "prfm" for op, _ in body), sum(w[1] for _, w in widths),
                          Counter((op, w[0]) for op, w in widths), Counter(op for op, args in body if ".4s" in args)))
    return loops
