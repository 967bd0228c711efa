"""The GPU check for the day a machine with an NVIDIA GPU is lent (issue 18): one command, under 8 minutes on an
H100/H200, every result in one file.

    python -m actsparse.benchmarks.gpu_check [--out gpu_check.md] [--budget 470] [--dry-run]

Steps, each a subprocess under its own share of the time budget, its output appended to `--out` as it finishes:
 1. the machine: nvidia-smi, the torch and TVM builds, the GPU TVM's runtime finds, the load average;
 2. `ffn_cuda --require-gpu` (Mistral-7B dims, fp16 weights, 50 / 90 / 95% inactive): the roofline figures of the
    generated code, then exact / indexed / dense against cuBLAS fp16 (torch) with the device's copy bandwidth;
 3. `pytest -m gpu` on the test files with GPU tests: every CUDA kernel's numerics on the GPU, the decoder (plain
    and in CUDA graphs) against transformers, the hot/cold hybrid.
The figures come first: if time runs out, the tests are what is cut. `--dry-run` writes the plan (commands and
their limits) and the machine section, and runs nothing else. Exit status 0 when every step passed, 1 when one
failed or ran out of time, 2 on bad arguments. It needs this checkout importable as `actsparse` and TVM installed
on the GPU machine (BENCHMARKS.md, session 10: the lent H200 image has no TVM).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # the repository root (tests/ is here)
GPU_TEST_FILES = ("tests/test_kernels_cuda.py", "tests/test_decode_cuda.py", "tests/test_hot_cold_cuda.py")
# (name, share of the budget, command): the share is a ceiling; the last step gets whatever time is left
STEPS = (
    ("ffn_cuda", 0.4, [sys.executable, "-m", "actsparse.benchmarks.ffn_cuda", "--require-gpu", "--dtype", "float16"]),
    ("pytest -m gpu", 0.6, [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
                            *GPU_TEST_FILES]),
)
MACHINE = """import os
print("load average", os.getloadavg())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("device", p.name, "SMs", p.multi_processor_count, "memory GiB", round(p.total_memory / 2**30, 1))
except ImportError as err:
    print("torch:", err)
try:
    import tvm
    from actsparse.targets.cuda import gpu_device
    print("tvm", tvm.__version__, "| TVM runtime finds", gpu_device())
except ImportError as err:
    print("tvm:", err, "(every step below needs TVM)")
"""


def environment() -> dict[str, str]:
    """The subprocesses import this checkout's package (its parent on PYTHONPATH)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE.parent), env.get("PYTHONPATH", "")) if p)
    return env


def with_workers(command: list[str]) -> list[str]:
    """pytest spread over workers where pytest-xdist is installed (the GPU tests mostly wait for nvcc)."""
    try:
        import xdist  # noqa: F401
    except ImportError:
        return command
    return [*command, "-n", str(min(8, os.cpu_count() or 1)), "--dist", "loadgroup"]


def run_step(command: list[str], limit: float) -> tuple[int | None, float, str]:
    """(exit status or None when it ran past `limit`, seconds, stdout + stderr)."""
    start = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=PACKAGE, env=environment(), capture_output=True, text=True,
                              timeout=limit)
        return proc.returncode, time.monotonic() - start, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"") + (err.stderr or b"")
        return None, time.monotonic() - start, out.decode(errors="replace") if isinstance(out, bytes) else out


def machine_section() -> str:
    smi = shutil.which("nvidia-smi")
    lines = ["## The machine", ""]
    if smi:
        proc = subprocess.run([smi, "--query-gpu=name,memory.total,clocks.max.memory,driver_version",
                               "--format=csv"], capture_output=True, text=True)
        lines += ["```", (proc.stdout + proc.stderr).strip(), "```"]
    else:
        lines.append("nvidia-smi: not found (no NVIDIA driver on this machine)")
    rc, _, out = run_step([sys.executable, "-c", MACHINE], 120)
    return "\n".join([*lines, "```", out.strip() or f"(exit status {rc})", "```", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.md"), help="the one file the results go to")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for all steps together")
    ap.add_argument("--dry-run", action="store_true", help="write the plan and the machine section, run nothing")
    args = ap.parse_args(argv)
    if args.budget < 60:
        print(f"error: --budget {args.budget:g} s is too short for any step; give at least 60", file=sys.stderr)
        return 2
    steps = [(name, share, with_workers(cmd) if name.startswith("pytest") else cmd) for name, share, cmd in STEPS]
    limits = [f"at most {share * args.budget:.0f} s" for _, share, _ in steps[:-1]] + ["the time left"]
    plan = ["## Plan", ""] + [f"- {name} ({limit}): `{' '.join(cmd)}`" for (name, _, cmd), limit in zip(steps, limits)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        f.write(f"# GPU check ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})\n\n"
                + "\n".join(plan) + "\n\n" + machine_section())
    if args.dry_run:
        print(f"dry run: plan and machine section written to {args.out}")
        return 0
    deadline, failed = time.monotonic() + args.budget, []
    for i, (name, share, cmd) in enumerate(steps):
        left = deadline - time.monotonic()
        rc, seconds, out = run_step(cmd, max(1.0, left if i == len(steps) - 1 else min(left, share * args.budget)))
        verdict = "ran out of time" if rc is None else f"exit status {rc}"
        if rc != 0:
            failed.append(name)
        with args.out.open("a") as f:
            f.write(f"\n## {name}: {verdict}, {seconds:.0f} s, load average {os.getloadavg()}\n\n"
                    f"`{' '.join(cmd)}`\n\n```\n{out.strip()[-20000:]}\n```\n")
        print(f"{name}: {verdict} ({seconds:.0f} s)")
    print(f"results in {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
