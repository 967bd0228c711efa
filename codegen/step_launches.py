"""What a decode step launches on a GPU, read off a built executable (no GPU needed): the functions of TVM's VM
bytecode, the CUDA graphs they capture, and the kernel launches of each call.

    launches = step_launches(executable)     # the decoder's `step_graph` (codegen/static_step.py)
    launches.regions, launches.captured, launches.outside, launches.allocations_outside

TVM's RewriteCUDAGraph (PassContext option `relax.backend.use_cuda_graph`) moves the capturable part of a function
into `<function>_cuda_graph_capture[N]` functions, which the function calls through
`vm.builtin.cuda_graph.run_or_capture` (captured on the first call, replayed after), and their storage into
`cuda_graph_alloc` (allocated once, `vm.builtin.cuda_graph.get_cached_alloc`). A call of a PrimFunc launches
each of its kernels: `<symbol>_kernel`, `<symbol>_kernel_1`, ... in the module's CUDA source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUN_OR_CAPTURE = "vm.builtin.cuda_graph.run_or_capture"
ALLOC_STORAGE = "vm.builtin.alloc_storage"  # a new allocation (the one-time ones are in cuda_graph_alloc)
CAPTURE_SUFFIX = "_cuda_graph_capture"
KERNEL = re.compile(r"__global__ void __launch_bounds__\(\d+\) (\w+?)_kernel(?:_\d+)?\(")


def vm_functions(text: str) -> dict[str, list[str]]:
    """VM bytecode (`executable.as_text()`) -> {function name: the names it calls, in order}."""
    out: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        head = re.match(r"@(\w+):$", line)
        if head:
            name = head.group(1)
            out[name] = []
        elif line.startswith("@"):
            name = None
        elif name and (call := re.match(r"\s+call\s+([\w.]+)", line)):
            out[name].append(call.group(1))
    return out


def kernels_per_symbol(source: str) -> dict[str, int]:
    """CUDA source -> {PrimFunc symbol: kernels it launches per call} (each kernel is declared and defined)."""
    counts: dict[str, set[str]] = {}
    for m in KERNEL.finditer(source):
        counts.setdefault(m.group(1), set()).add(m.group(0))
    return {symbol: len(found) for symbol, found in counts.items()}


@dataclass(frozen=True)
class StepLaunches:
    """One function's launches: inside its captured regions and outside them (replayed vs launched per call)."""

    function: str
    regions: tuple[str, ...]          # its capture functions
    captured: tuple[tuple[str, int], ...]  # (PrimFunc, kernels) per call inside the regions, in order
    outside: tuple[tuple[str, int], ...]   # the same for the calls the function makes itself, per step
    allocations_outside: int          # alloc_storage calls the function makes per step

    @property
    def captured_launches(self) -> int:
        return sum(n for _, n in self.captured)

    @property
    def outside_launches(self) -> int:
        return sum(n for _, n in self.outside)


def step_launches(executable, function: str = "step_graph") -> StepLaunches:
    """The launches of `function` in a CUDA executable (tvm.compile's result)."""
    from .cuda_support import cuda_source

    fns = vm_functions(executable.as_text())
    if function not in fns:
        raise KeyError(f"the executable has no function {function!r} (it has {', '.join(sorted(fns))})")
    per_call = kernels_per_symbol(cuda_source(executable.mod))
    regions = tuple(n for n in fns if n.startswith(function + CAPTURE_SUFFIX))
    return StepLaunches(
        function, regions,
        tuple((c, per_call[c]) for r in regions for c in fns[r] if c in per_call),
        tuple((c, per_call[c]) for c in fns[function] if c in per_call),
        sum(c == ALLOC_STORAGE for c in fns[function]))
