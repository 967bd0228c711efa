"""The GPU check for the day a machine with an NVIDIA GPU is lent (issue 18): one command, under 8 minutes on an
H100/H200, every result in one file.

    python -m actsparse.benchmarks.gpu_check [--out gpu_check.md] [--budget 470] [--bundle out/cuda_bundle]
                                             [--without-tvm] [--dry-run]

Steps, each a subprocess under its own share of the time budget, its output appended to `--out` as it finishes:
 1. the machine: nvidia-smi, the torch and TVM builds, the GPU TVM's runtime finds, the load average;
 2. `ffn_cuda --require-gpu` (Mistral-7B dims, fp16 weights, 50 / 90 / 95% inactive): the roofline figures of the
    generated code, then exact / indexed / dense against cuBLAS fp16 (torch) with the device's copy bandwidth;
 3. `cuda_step --time`: a 4-layer decoder's greedy decoding through `step`, through `step_graph` in its max_seq
    buckets (one CUDA graph per step, attention over the bucket's slots) and through `step_graph` over all max_seq
    slots, µs per token and the same tokens from all three;
 4. `pytest -m gpu` on the test files with GPU tests: every CUDA kernel's numerics on the GPU, the decoder (plain
    and in CUDA graphs) against transformers, the hot/cold hybrid.
Where TVM is not installed (the H200 image lent here has PyTorch and nvcc only; `--without-tvm` forces it), steps 2
to 4 give way to `cuda_bundle_run` over the bundle `cuda_bundle.py` wrote beforehand on a machine with TVM (carried
along): the same kernels' source as TVM emits it, compiled by nvcc there, checked against torch and timed against
cuBLAS fp16 and a copy of the bytes each MLP reads (small and Mistral-7B dims; exact, indexed, dense, threshold).
The figures come first: if time runs out, the tests are what is cut. `--dry-run` writes the plan (commands and
their limits) and the machine section, and runs nothing else. Exit status 0 when every step passed, 1 when one
failed or ran out of time, 2 on bad arguments (or, without TVM, no bundle). It needs this checkout importable as
`actsparse` (its parent folder on PYTHONPATH, a link named actsparse to it is enough).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = Path(__file__).absolute().parents[1]  # the repository root (tests/ is here); not resolved: a
# link named actsparse to a checkout of another name makes its parent importable
GPU_TEST_FILES = ("tests/test_kernels_cuda.py", "tests/test_decode_cuda.py", "tests/test_hot_cold_cuda.py",
                  "tests/test_cutoff_cuda.py", "tests/test_cuda_routed.py", "tests/test_routed_down_rows.py")
# (name, share of the budget, command): the share is a ceiling; the last step gets whatever time is left
STEPS = (
    ("ffn_cuda", 0.4, [sys.executable, "-m", "actsparse.benchmarks.ffn_cuda", "--require-gpu", "--dtype", "float16",
                       "--no-step"]),  # the step's launch count needs no GPU: counted where it is built
    ("decode step", 0.15, [sys.executable, "-m", "actsparse.benchmarks.cuda_step", "--time", "--require-gpu"]),
    ("pytest -m gpu", 0.6, [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
                            *GPU_TEST_FILES]),
)
DEFAULT_BUNDLE = Path("out/cuda_bundle")  # relative to the repository root, as cuda_bundle writes it


def bundle_steps(bundle: Path):
    """The steps where TVM is absent: the bundled kernels, timed without TVM (the decoder tests need TVM)."""
    return (("cuda_bundle_run", 1.0, [sys.executable, "-m", "actsparse.benchmarks.cuda_bundle_run", str(bundle)]),)


def has_tvm() -> bool:
    try:
        import tvm  # noqa: F401
    except ImportError:
        return False
    return True


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
    print("tvm:", err, "(the kernels run from the bundle: cuda_bundle_run)")
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
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                    help="where TVM is absent: the kernel bundle (python -m actsparse.benchmarks.cuda_bundle)")
    ap.add_argument("--without-tvm", action="store_true", help="time the bundle even where TVM is installed")
    args = ap.parse_args(argv)
    if args.budget < 60:
        print(f"error: --budget {args.budget:g} s is too short for any step; give at least 60", file=sys.stderr)
        return 2
    if args.without_tvm or not has_tvm():
        bundle = args.bundle if args.bundle.is_absolute() else PACKAGE / args.bundle
        if not (bundle / "manifest.json").is_file():
            print(f"error: no TVM here and no kernel bundle at {bundle}: write it on a machine with TVM "
                  f"(python -m actsparse.benchmarks.cuda_bundle --out {args.bundle}) and carry it", file=sys.stderr)
            return 2
        steps = list(bundle_steps(bundle))
    else:
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
