"""`actsparse bench ARTIFACT`: time a saved artifact against its dense twin (built from the same weights with
the `densify` pass) and print the ratio. A module is timed per call with the last-level cache evicted before
every call; a decoder is timed as it is used, greedy decoding steps after a prefill (tokens/s)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np


def dense_twin(path: str, sparse):
    """(the artifact's graph, its dense twin compiled for this host)."""
    from safetensors.numpy import load_file

    from ..codegen.build import build
    from ..ir import parse_graph
    from ..passes import run_pipeline
    from ..passes.densify import Densify
    from ..targets import x86
    from .module import CompiledModule
    from .report import Report

    graph = parse_graph(sparse.ir_text, load_file(str(Path(path) / "weights.safetensors")))
    dense_graph = run_pipeline(graph, [Densify()]).graph
    target = x86.host()
    executable, order = build(dense_graph, target)
    return graph, CompiledModule(executable, dict(dense_graph.weights), order, dense_graph, sparse.inputs,
                                 sparse.n_outputs, Report(target.name, "dense"), target.to_dict())


def bench_decoder(path: str, tokens: int = 32, repeats: int = 3, prompt_len: int = 8) -> str:
    """Decode tokens/s of a decoder artifact and of its dense twin: median over `repeats` greedy runs of
    `tokens` steps each after a `prompt_len`-token prefill."""
    from ..targets import x86
    from .decoder import Decoder, load_decoder
    from .module import load

    sparse = load_decoder(path, load(path))
    dense = Decoder(dense_twin(path, sparse.module)[1], sparse.spec)
    prompt_len = max(1, min(prompt_len, sparse.max_seq - 1))
    tokens = max(1, min(tokens, sparse.max_seq - prompt_len))
    prompt = np.random.default_rng(0).integers(0, sparse.spec.vocab_size, (1, prompt_len))
    rates = {name: _decode_rate(lm, prompt, tokens, repeats) for name, lm in (("sparse", sparse), ("dense", dense))}
    mode = sparse.report.mode
    return (f"{path}: decoder, mode {mode}, {prompt_len}-token prompt then {tokens} greedy steps, "
            f"{x86.host().description}\n"
            f"  {mode} {rates['sparse']:8.1f} tokens/s   dense twin {rates['dense']:8.1f} tokens/s   "
            f"speed-up {rates['sparse'] / rates['dense']:.2f}x (median of {repeats} runs)")


def _decode_rate(lm, prompt: np.ndarray, tokens: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        state = lm.prefill(prompt)
        token = int(np.argmax(state.logits))
        start = time.perf_counter()
        for _ in range(tokens):
            logits, state = lm.step(token, state)
            token = int(np.argmax(logits))
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_artifact(path: str, seq: int = 1, repeats: int = 20) -> str:
    from ..api import example_inputs_for
    from ..targets import x86
    from .decoder import is_decoder_artifact
    from .module import load
    from .timing import CacheEvictor, time_calls

    if is_decoder_artifact(path):
        return bench_decoder(path, repeats=max(1, min(repeats, 5)))
    sparse = load(path)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    graph, dense = dense_twin(path, sparse)
    target = x86.host()
    inputs = example_inputs_for(graph, seq=seq)
    evict = CacheEvictor(target.cache_bytes)
    t_sparse = time_calls(lambda: sparse(*inputs), repeats, evict=evict)
    t_dense = time_calls(lambda: dense(*inputs), repeats, evict=evict)
    return (f"{path}: mode {manifest['report']['mode']}, {seq} token(s) per call, {target.description}\n"
            f"  sparse {t_sparse.median_ms:8.2f} ms   dense {t_dense.median_ms:8.2f} ms   "
            f"speed-up {t_dense.median_s / t_sparse.median_s:.2f}x (median of {repeats}, cache evicted)")

