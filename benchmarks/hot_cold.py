"""Decoding under a RAM budget for the MLP weights: the hot/cold split vs the dense model memory-mapped.

    python -m actsparse.benchmarks.hot_cold [--d 1024] [--n-ff 4096] [--layers 6] [--tokens 24] [--shares 0.34,0.5,1]
        [--mode exact | predictor [--predictor svd|sign|lowrank] [--recall 0.99]]

The model: `--layers` ReLU gated MLPs (ReGLU) over the same token input, outputs summed — the MLP share of decoding,
no attention. Synthetic weights with a power-law-like firing profile (neuron j fires with probability
p_j = 0.02 + 0.5·exp(-j / (0.1·n_ff)), about 7% on average; neurons shuffled so the reorder pass has work), set by a
gate bias in homogeneous coordinates (x[0] = 1). Tokens: x ~ N(0, I), x[0] = 1, independent (no temporal locality
for the window to exploit: its worst case).

Per budget share s of the MLP weight bytes (exact mode keeps every gate row resident, so s ≥ 1/3; predictor mode
bundles the cold gate rows too, so any s, its predictor's weights not counted):
  hot/cold    compile(mode=..., memory_budget=s·bytes): hot rows in RAM, cold rows in cold.bin, read on demand
  dense mmap  the dense model's weights memory-mapped from a file; RAM holds the first s·bytes of it
Before each timed token the files' pages beyond the budget are dropped from the page cache (posix_fadvise
DONTNEED): the cold file entirely (the store's own window is in its RAM budget), the dense file past its first
s·bytes (its mapped pages first unmapped with madvise MADV_DONTNEED: fadvise alone skips pages a process maps,
which left the whole dense model in RAM in the session-4 runs), so the kernel reads what does not fit from the
disk, as it would with no spare RAM. Also shown: the cold file dropped once before timing only (the page cache
then keeps what was read, beyond the budget).
Prints tokens/s, the load average, the CPU, and one markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: OpenBLAS's spinning threads slow TVM's down
# before TVM's thread pool starts (the dense module runs first here): idle workers must not spin while the cold path
# computes between kernels (runtime/cold_store.py sets it too, but only a pool not yet started reads it)
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
import numpy as np  # noqa: E402

PAGE = 4096


def graph_text(d: int, n: int, layers: int) -> str:
    lines = [f"graph @main(%x: f32[1,seq,{d}]) {{"]
    for i in range(layers):
        lines += [f"  @l{i}.down.weight : f32[{d},{n}]", f"  @l{i}.gate.weight : f32[{n},{d}]",
                  f"  @l{i}.up.weight : f32[{n},{d}]"]
    total = None
    for i in range(layers):
        k = 10 * i
        lines += [f"  %{k} = linear(%x, @l{i}.gate.weight) : f32[1,seq,{n}]  # l{i}.gate",
                  f"  %{k + 1} = relu(%{k}) : f32[1,seq,{n}]  # l{i}",
                  f"  %{k + 2} = linear(%x, @l{i}.up.weight) : f32[1,seq,{n}]  # l{i}.up",
                  f"  %{k + 3} = mul(%{k + 1}, %{k + 2}) : f32[1,seq,{n}]  # l{i}",
                  f"  %{k + 4} = linear(%{k + 3}, @l{i}.down.weight) : f32[1,seq,{d}]  # l{i}.down"]
        if total is None:
            total = f"%{k + 4}"
        else:
            lines.append(f"  %{k + 5} = add({total}, %{k + 4}) : f32[1,seq,{d}]  # sum")
            total = f"%{k + 5}"
    lines += [f"  return {total}", "}"]
    return "\n".join(lines) + "\n"


def weights(d: int, n: int, layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    from scipy.special import ndtri

    rng = np.random.default_rng(seed)
    p = 0.02 + 0.5 * np.exp(-np.arange(n) / (0.1 * n))
    out = {}
    for i in range(layers):
        gate = rng.standard_normal((n, d)).astype(np.float32)
        gate[:, 0] = 0
        gate /= np.linalg.norm(gate, axis=1, keepdims=True)          # x·w ~ N(0, 1) for x ~ N(0, I)
        gate[:, 0] = ndtri(rng.permutation(p))                          # P(fire) = p_j, in shuffled order
        out[f"l{i}.gate.weight"] = gate
        out[f"l{i}.up.weight"] = (rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
        out[f"l{i}.down.weight"] = (rng.standard_normal((d, n)) / np.sqrt(n)).astype(np.float32)
    return out


def tokens(d: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((count, 1, 1, d)).astype(np.float32)
    xs[..., 0] = 1.0
    return list(xs)


def drop(path: Path, keep: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, keep, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_mapped(maps: dict, offsets: dict, path: Path, keep: int) -> None:
    """Evict the dense file's pages past `keep` bytes, mapped ones included: posix_fadvise skips pages that a
    process still maps, so each map's pages past `keep` are first unmapped from this process (madvise
    MADV_DONTNEED; the maps are copy-on-write but never written, so nothing is lost) and then dropped from the
    page cache; the next token faults them in from the disk."""
    import mmap

    for name, array in maps.items():
        raw = array._mmap  # the mmap.mmap behind np.memmap; it starts at the page-aligned file offset below
        base = offsets[name] - offsets[name] % mmap.ALLOCATIONGRANULARITY
        start = max(keep - base, 0)
        start -= start % PAGE
        if start < len(raw):
            raw.madvise(mmap.MADV_DONTNEED, start, len(raw) - start)
    drop(path, keep)


def mapped_dense(cm, folder: Path):
    """The dense module's weights written to one file (4 KiB aligned) and memory-mapped back, copy-on-write (so TVM
    can view them in place); returns (module over the maps, file)."""
    from actsparse.runtime import CompiledModule

    path, offsets, offset = folder / "dense.bin", {}, 0
    with open(path, "wb") as f:
        for name in cm.weight_order:
            array = np.ascontiguousarray(cm.weights[name])
            offsets[name] = offset
            f.seek(offset)
            f.write(array.tobytes())
            offset += -(-array.nbytes // PAGE) * PAGE
    maps = {n: np.memmap(path, cm.weights[n].dtype, "c", offsets[n], cm.weights[n].shape) for n in cm.weight_order}
    module = CompiledModule(cm.executable, maps, cm.weight_order, cm.graph, cm.inputs, cm.n_outputs, cm.report,
                            cm.target_info)
    return module, (maps, offsets, path)


def timed(fn, xs, before) -> float:
    """Median seconds per token over xs, `before()` run (untimed) ahead of each."""
    times = []
    for x in xs:
        before()
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--n-ff", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--calib-tokens", type=int, default=256)
    parser.add_argument("--shares", default="0.34,0.5,1.0")
    parser.add_argument("--mode", choices=("exact", "predictor"), default="exact")
    parser.add_argument("--predictor", default="svd", help="predictor mode: lowrank | svd | sign")
    parser.add_argument("--recall", type=float, default=0.99, help="predictor mode: the per-layer target recall")
    args = parser.parse_args(argv)
    lossy = {"predictor": args.predictor, "recall": args.recall} if args.mode == "predictor" else {}
    import actsparse
    from actsparse.ir import parse_graph
    from actsparse.targets.x86 import host

    d, n, layers = args.d, args.n_ff, args.layers
    graph = parse_graph(graph_text(d, n, layers), weights(d, n, layers))
    mlp_bytes = sum(a.nbytes for a in graph.weights.values())
    calibration = [(x,) for x in tokens(d, args.calib_tokens, seed=1)]
    xs = tokens(d, args.tokens + 2, seed=2)
    print(f"# hot/cold vs dense mmap: {layers} x ReGLU d={d} n_ff={n}, MLP weights {mlp_bytes / 2**20:.0f} MiB, "
          f"CPU {host().description}, load average {os.getloadavg()}", file=sys.stderr)
    dense = actsparse.compile(graph, (xs[0],), mode="dense")
    rows = []
    with tempfile.TemporaryDirectory(prefix="actsparse-hotcold-") as folder:
        mapped, dense_file = mapped_dense(dense, Path(folder))
        expected = dense(xs[0])
        del dense
        for share in [float(s) for s in args.shares.split(",")]:
            budget = int(share * mlp_bytes)
            start = time.perf_counter()
            cm = actsparse.compile(graph, (xs[0],), mode=args.mode, memory_budget=budget, calibration=calibration,
                                   **lossy)
            took = time.perf_counter() - start
            if lossy:   # the predictor's misses: say how far from the dense model, on a token it was not fitted on
                err = float(np.linalg.norm(cm(xs[0]) - expected) / np.linalg.norm(expected))
                print(f"share {share:.2f}: {args.predictor} predictor, output rel. error {err:.2e}", file=sys.stderr)
            else:
                np.testing.assert_allclose(cm(xs[0]), expected, rtol=1e-3, atol=1e-4)
            hot = sum(b.hot_neurons for b in cm.report.blocks if b.mode == args.mode and b.hot_neurons is not None)
            cold_file = cm.cold_file

            def drop_cold(cold_file=cold_file):
                if cold_file is not None:
                    drop(cold_file)

            for x in xs[:2]:
                cm(x)
            t_cold = timed(cm, xs[2:], drop_cold)
            if cold_file is not None:
                drop(cold_file)
            t_cached = timed(cm, xs[2:], lambda: None)
            t_dense = timed(mapped, xs[2:], lambda budget=budget: drop_mapped(*dense_file, keep=budget - budget % PAGE))
            reads = sum(s.bytes_read for s in cm.cold_stores)
            rows.append((share, budget, hot, 1 / t_cold, 1 / t_cached, 1 / t_dense, t_dense / t_cold, reads, took))
            print(f"share {share:.2f}: hot/cold {1 / t_cold:.1f} tok/s (cold file cached after one drop: "
                  f"{1 / t_cached:.1f}), dense mmap {1 / t_dense:.1f} tok/s, x{t_dense / t_cold:.2f}; load "
                  f"{os.getloadavg()[0]:.1f}", file=sys.stderr)
            del cm
    print(f"\nload average at the end: {os.getloadavg()}; CPU {host().description}\n")
    print("| budget (share of MLP bytes) | hot neurons | hot/cold tok/s (pages dropped per token) | "
          "hot/cold tok/s (dropped once) | dense mmap tok/s | speed-up vs dense mmap | cold bytes read |")
    print("|---|---|---|---|---|---|---|")
    for share, budget, hot, tc, tcached, td, ratio, reads, _ in rows:
        print(f"| {share:.0%} ({budget / 2**20:.0f} MiB) | {hot} of {layers * n} | {tc:.1f} | {tcached:.1f} | "
              f"{td:.1f} | {ratio:.2f}x | {reads / 2**20:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
