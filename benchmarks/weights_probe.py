"""The read limits the kernels are measured against. `weights_probe`: a limit measured on the kernels' own weights,
a TVM read-sum over the very buffers the dense kernel reads (gate, up and down rows: the same bytes, the same pages),
with the kernels' thread count, each thread streaming its contiguous share of every matrix as the row dots do (8
streams with software prefetch, and 1 stream; the faster).

Why beside `buffer_probe` (`FfnBench.read_probe`: a 1 GB read-sum of its own buffer): that probe read 25.6 and 38.2
GB/s in one quiet run (BENCHMARKS.md, session 9 quiet reruns), so "% of the read limit" moved by +-20% with it. A
probe over the kernels' bytes meets the same pages, TLB reach and size as the kernels. `limit` takes the FASTER of
the two (median of interleaved repeats each), so the denominator is never weaker than the old one alone.

    probe = weights_probe(bench, bench.weights)   # (fn, bytes read), timed like a kernel; weights: the last
                                                  # runners()'s tensors
"""

from __future__ import annotations

STREAMS = (1, 8)  # per thread: one stream, or 8 (what a step of 8 rows reads) with prefetch 8 lines ahead
LANES = 16  # uint32 lanes of one add (the bytes are summed as uint32: no float slow paths on arbitrary bits)


def weights_probe(bench, tensors) -> tuple:
    """(fn, bytes read): a read-sum over the three uint8 weight tensors `tensors` (gate, up, down rows; equal
    shapes) with `bench.threads` threads; of the 1-stream and the 8-stream variant the faster here (5 calls each,
    LLC evicted before each)."""
    import time

    np = bench.np
    from tvm.script import tirx as T

    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.runtime.memory import host_tensor

    threads = bench.threads
    shape = tuple(int(s) for s in tensors[0].shape)
    if len(tensors) != 3 or any(tuple(int(s) for s in t.shape) != shape for t in tensors):
        raise ValueError("weights_probe takes the three weight tensors of one shape (gate, up, down rows)")
    words = shape[0] * shape[1] // 4  # uint32 words of one matrix

    def variant(streams: int):
        sub = words // threads // streams // LANES * LANES  # uint32 words per stream (a remainder < 1 KB unread)
        per = sub * streams

        @T.macro
        def stream_sum(flat, t, acc):
            for c in range(sub // LANES):
                if streams > 1:
                    for s in T.unroll(streams):
                        T.evaluate(T.call_llvm_intrin(
                            "void", "llvm.prefetch.p0",
                            T.address_of(flat[T.min(t * per + s * sub + c * LANES + 8 * LANES, words - 1)]),
                            T.int32(0), T.int32(2), T.int32(1)))
                for s in T.unroll(streams):
                    for v in T.vectorized(LANES):
                        acc[s * LANES + v] = acc[s * LANES + v] + flat[t * per + s * sub + c * LANES + v]

        @T.prim_func
        def read_sum(a: T.Buffer(shape, "uint8"), b: T.Buffer(shape, "uint8"), d: T.Buffer(shape, "uint8"),
                     o: T.Buffer((threads, LANES), "uint32")):
            T.func_attr({"tirx.noalias": True, "global_symbol": f"bench_weights_sum_{streams}"})
            for t in T.parallel(threads):
                acc = T.alloc_buffer((streams * LANES,), "uint32", scope="global")
                for v in T.vectorized(streams * LANES):
                    acc[v] = T.uint32(0)
                stream_sum(T.decl_buffer((words,), "uint32", data=a.data), t, acc)  # the same bytes, as uint32
                stream_sum(T.decl_buffer((words,), "uint32", data=b.data), t, acc)
                stream_sum(T.decl_buffer((words,), "uint32", data=d.data), t, acc)
                for s in T.unroll(1, streams):  # every stream feeds the result: no load is dead code
                    for v in T.vectorized(LANES):
                        acc[v] = acc[v] + acc[s * LANES + v]
                for v in T.vectorized(LANES):
                    o[t, v] = acc[v]

        return build_standalone(read_sum, bench.target), 3 * per * threads * 4

    o = host_tensor(np.zeros((threads, LANES), "uint32"))
    best, best_t, best_bytes = None, float("inf"), 0
    for streams in STREAMS:
        fn, nbytes = variant(streams)
        fn(*tensors, o)
        times = []
        for _ in range(5):
            bench.evict()
            t0 = time.perf_counter()
            fn(*tensors, o)
            times.append(time.perf_counter() - t0)
        if float(np.median(times)) < best_t:
            best, best_t, best_bytes = fn, float(np.median(times)), nbytes
    return (lambda: best(*tensors, o)), best_bytes


def buffer_probe(bench, small: bool = False) -> tuple:
    """`FfnBench.read_probe`: a runner (fn, bytes) reading 1 GB (64 MB with `small`) of its own buffer with
    `bench.threads` threads: of two read-sums — 1 stream per thread, and 8 streams per thread with software prefetch
    (what the kernels do with gathered rows) — the faster here."""
    import time

    np = bench.np
    from tvm.script import tirx as T

    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.runtime.memory import host_tensor

    threads, bw_n, L = bench.threads, (64 << 20) if small else (256 << 20), bench.lanes
    per = bw_n // threads

    def probe(streams: int, prefetch: bool):
        sub = per // streams

        @T.prim_func
        def read_sum(a: T.Buffer((bw_n,), "float32"), o: T.Buffer((threads, L), "float32")):
            T.func_attr({"tirx.noalias": True})
            for t in T.parallel(threads):
                acc = T.alloc_buffer((streams * L,), "float32", scope="global")  # stack: see common.py
                for v in T.vectorized(streams * L):
                    acc[v] = T.float32(0)
                for c in range(sub // L):
                    if prefetch:
                        for s in T.unroll(streams):
                            T.evaluate(T.call_llvm_intrin(
                                "void", "llvm.prefetch.p0",
                                T.address_of(a[T.min(t * per + s * sub + c * L + 512, bw_n - 1)]),
                                T.int32(0), T.int32(2), T.int32(1)))
                    for s in T.unroll(streams):
                        for v in T.vectorized(L):
                            acc[s * L + v] = acc[s * L + v] + a[t * per + s * sub + c * L + v]
                for s in T.unroll(1, streams):  # every stream feeds the result: no load is dead code
                    for v in T.vectorized(L):
                        acc[v] = acc[v] + acc[s * L + v]
                for v in T.vectorized(L):
                    o[t, v] = acc[v]

        return build_standalone(read_sum.with_attr("global_symbol", f"bench_read_sum_{streams}_{int(prefetch)}"),
                                bench.target)

    a = host_tensor(np.ones(bw_n, "float32"))  # numpy memory (huge pages), like the weights
    o = host_tensor(np.zeros((threads, L), "float32"))
    best, best_t = None, float("inf")
    for rs in (probe(1, False), probe(8, True)):
        rs(a, o)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            rs(a, o)
            times.append(time.perf_counter() - t0)
        if float(np.median(times)) < best_t:
            best, best_t = rs, float(np.median(times))
    return (lambda: best(a, o)), bw_n * 4
