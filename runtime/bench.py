"""`actsparse bench ARTIFACT`: time a saved artifact against its dense twin (built from the same weights with
the `densify` pass, for the artifact's own target: a CUDA artifact is timed against a CUDA dense twin) and print
the ratio. A module is timed per call with the last-level cache evicted before every call; a decoder is timed as
it is used, greedy decoding steps after a prefill (tokens/s)."""

from __future__ import annotations

import statistics
import time

import numpy as np


def artifact_target(sparse):
    """The target a loaded module was built for (a registry name, or its TVM target dict)."""
    from .. import targets

    name = sparse.target_info.get("name")
    return targets.get(name if name in targets.names() else sparse.target_info["tvm"])


def dense_twin(sparse):
    """The dense twin of a loaded module, compiled for the module's own target."""
    from ..codegen.build import build
    from ..passes import run_pipeline
    from ..passes.densify import Densify
    from .module import CompiledModule
    from .report import Report
    from .tvm_stderr import tvm_noise_dropped

    dense_graph = run_pipeline(sparse.graph, [Densify()]).graph
    target = artifact_target(sparse)
    with tvm_noise_dropped():
        executable, order = build(dense_graph, target)
    return CompiledModule(executable, dict(dense_graph.weights), order, dense_graph, sparse.inputs,
                          sparse.n_outputs, Report(target.name, "dense"), target.to_dict())


def dense_twin_decoder(lm):
    """The dense twin of a decoder (`dense_twin` of its module, the same decoding spec): every neuron computed on the
    same weights, what `actsparse bench` and `perplexity --against-dense` compare a sparse build with."""
    from .decoder import Decoder

    return Decoder(dense_twin(lm.module), lm.spec)


def bench_decoder(lm, path: str, tokens: int = 32, repeats: int = 3, prompt_len: int = 8) -> str:
    """Decode tokens/s of a loaded decoder and of its dense twin: median over `repeats` greedy runs of `tokens`
    steps each after a `prompt_len`-token prefill."""
    dense = dense_twin_decoder(lm)
    prompt_len = max(1, min(prompt_len, lm.max_seq - 1))
    tokens = max(1, min(tokens, lm.max_seq - prompt_len))
    prompt = np.random.default_rng(0).integers(0, lm.spec.vocab_size, (1, prompt_len))
    rates = {name: _decode_rate(d, prompt, tokens, repeats) for name, d in (("sparse", lm), ("dense", dense))}
    mode = lm.report.mode
    return (f"{path}: decoder, mode {mode}, {prompt_len}-token prompt then {tokens} greedy steps, "
            f"{artifact_target(lm.module).description}\n"
            f"  {mode} {rates['sparse']:8.1f} tokens/s   dense twin {rates['dense']:8.1f} tokens/s   "
            f"speed-up {rates['sparse'] / rates['dense']:.2f}x (median of {repeats} runs)"
            + (f"\n  note: {lm.decoding_note}" if lm.decoding_note else ""))


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
    from ..errors import ActsparseError, TargetError
    from ..ir.examples import example_inputs_for
    from .decoder import as_decoder
    from .module import load
    from .timing import CacheEvictor, time_calls

    if repeats < 1 or seq < 1:
        raise ActsparseError(f"bench needs repeats >= 1 and seq >= 1 (got repeats={repeats}, seq={seq})")
    sparse = load(path)
    if not sparse.runnable:
        info = sparse.target_info
        raise TargetError(f"{path} was built for {info.get('name', '?')}, which does not run here; "
                          f"{info.get('run_hint') or 'time it on a machine of that kind'}")
    if sparse.artifact_kind == "decoder":
        return bench_decoder(as_decoder(sparse), path, repeats=min(repeats, 5))
    dense = dense_twin(sparse)
    target = artifact_target(sparse)
    inputs = example_inputs_for(sparse.graph, seq=seq)  # graph parsed and checked against the weights by load()
    evict = CacheEvictor(target.llc_bytes or 32 << 20)
    t_sparse = time_calls(lambda: sparse(*inputs), repeats, evict=evict)
    t_dense = time_calls(lambda: dense(*inputs), repeats, evict=evict)
    return (f"{path}: mode {sparse.report.mode}, {seq} token(s) per call, {target.description}\n"
            f"  sparse {t_sparse.median_ms:8.2f} ms   dense {t_dense.median_ms:8.2f} ms   "
            f"speed-up {t_dense.median_s / t_sparse.median_s:.2f}x (median of {repeats}, cache evicted)")
