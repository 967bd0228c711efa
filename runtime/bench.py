"""`actsparse bench ARTIFACT`: time a saved artifact against its dense twin (built from the same weights with
the `densify` pass, for the artifact's own target: a CUDA artifact is timed against a CUDA dense twin), with the
last-level cache evicted before every call, and print the ratio."""

from __future__ import annotations

import json
from pathlib import Path


def bench_artifact(path: str, seq: int = 1, repeats: int = 20) -> str:
    from safetensors.numpy import load_file

    from .. import targets
    from ..codegen.build import build
    from ..errors import TargetError
    from ..ir import parse_graph
    from ..passes import run_pipeline
    from ..passes.densify import Densify
    from .inputs import example_inputs_for
    from .module import CompiledModule, load
    from .report import Report
    from .timing import CacheEvictor, time_calls

    sparse = load(path)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    if not sparse.runnable:
        info = sparse.target_info
        raise TargetError(f"{path} was built for {info.get('name', '?')}, which does not run here; "
                          f"{info.get('run_hint') or 'time it on a machine of that kind'}")
    graph = parse_graph(sparse.ir_text, load_file(str(Path(path) / "weights.safetensors")))
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
    return (f"{path}: mode {manifest['report']['mode']}, {seq} token(s) per call, {target.description}\n"
            f"  sparse {t_sparse.median_ms:8.2f} ms   dense {t_dense.median_ms:8.2f} ms   "
            f"speed-up {t_dense.median_s / t_sparse.median_s:.2f}x (median of {repeats}, cache evicted)")

