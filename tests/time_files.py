"""Time test files one at a time (never the whole suite at once on a shared machine): wall seconds per file, CPU
seconds (user + system of pytest and its workers: steadier than wall time on a loaded machine), the load average
beside each, and pytest's per-test durations in a log per file.

    python tests/time_files.py OUT_DIR tests/test_cli.py tests/test_demo.py ...   # serial
    python tests/time_files.py OUT_DIR -n 2 tests/test_cli.py ...                 # with pytest-xdist, 2 workers
    python tests/time_files.py OUT_DIR -n 2 tests/test_cli.py,tests/test_demo.py  # files run together
"""

import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    out, args = Path(argv[0]), argv[1:]
    extra = []
    if args[:1] == ["-n"]:
        extra, args = ["-n", args[1], "--dist", "loadgroup"], args[2:]
    out.mkdir(parents=True, exist_ok=True)
    tag = f"n{extra[1]}" if extra else "serial"
    for path in args:
        load = os.getloadavg()
        start, used = time.perf_counter(), _cpu()
        proc = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--durations=0", *extra, *path.split(",")], capture_output=True, text=True)
        wall, cpu = time.perf_counter() - start, _cpu() - used
        name = "+".join(Path(p).stem for p in path.split(","))
        (out / f"{name}.{tag}.log").write_text(proc.stdout + proc.stderr)
        tail = (proc.stdout.strip().splitlines() or ["?"])[-1]
        line = (f"{name}\t{tag}\twall {wall:.1f}s\tcpu {cpu:.1f}s\trc={proc.returncode}\tload {load[0]:.2f} -> "
                f"{os.getloadavg()[0]:.2f}\t{tail}")
        print(line, flush=True)
        with open(out / "summary.tsv", "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
