"""`actsparse bench ARTIFACT`: time a saved artifact against its dense twin (built from the same weights with
the `densify` pass, for the artifact's own target: a CUDA artifact is timed against a CUDA dense twin), with the
last-level cache evicted before every call, and print the ratio."""

from __future__ import annotations


def bench_artifact(path: str, seq: int = 1, repeats: int = 20) -> str:
    from .. import targets
    from ..codegen.build import build
    from ..errors import ActsparseError, TargetError
    from ..ir.examples import example_inputs_for
    from ..passes import run_pipeline
    from ..passes.densify import Densify
    from .module import CompiledModule, load
    from .report import Report
    from .timing import CacheEvictor, time_calls

    if repeats < 1 or seq < 1:
        raise ActsparseError(f"bench needs repeats >= 1 and seq >= 1 (got repeats={repeats}, seq={seq})")
    sparse = load(path)
    if not sparse.runnable:
        info = sparse.target_info
        raise TargetError(f"{path} was built for {info.get('name', '?')}, which does not run here; "
                          f"{info.get('run_hint') or 'time it on a machine of that kind'}")
    graph = sparse.graph  # parsed and checked against the weights by load()
    dense_graph = run_pipeline(graph, [Densify()]).graph
    name = sparse.target_info.get("name")
    target = targets.get(name if name in targets.names() else sparse.target_info["tvm"])  # the artifact's own
    executable, order = build(dense_graph, target)
    dense = CompiledModule(executable, dict(dense_graph.weights), order, dense_graph, sparse.inputs,
                           sparse.n_outputs, Report(target.name, "dense"), target.to_dict())
    inputs = example_inputs_for(graph, seq=seq)
    evict = CacheEvictor(target.llc_bytes or 32 << 20)
    t_sparse = time_calls(lambda: sparse(*inputs), repeats, evict=evict)
    t_dense = time_calls(lambda: dense(*inputs), repeats, evict=evict)
    return (f"{path}: mode {sparse.report.mode}, {seq} token(s) per call, {target.description}\n"
            f"  sparse {t_sparse.median_ms:8.2f} ms   dense {t_dense.median_ms:8.2f} ms   "
            f"speed-up {t_dense.median_s / t_sparse.median_s:.2f}x (median of {repeats}, cache evicted)")

