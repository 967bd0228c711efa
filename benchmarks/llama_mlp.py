"""llama.cpp's dense MLP at Mistral-7B dims, batch 1, in a given GGUF type (Q4_0 by default): the peer of our
quantized kernels, timed through llama-cpp-python (its ggml CPU kernels, repacked as it does for real models).

    python -m actsparse.benchmarks.llama_mlp [--type q4_0] [--tokens 24] [--threads 2]

llama.cpp runs whole models, so the MLP is isolated by difference: two synthetic Llama GGUFs with the MLP dims
(d=4096, n_ff=14336) and a negligible attention (1 head of 32 dims, vocab 512), with `--layers-a` and
`--layers-b` layers (1 and 2: the F32 file of 2 layers is 1.4 GB); (median decode step of b - that of a) /
(b - a) is one layer: its MLP, two RMS norms and a tiny attention. Weights are random (gguf.GGUFWriter), written
as F32 and quantized by llama.cpp itself (`llama_model_quantize`, pure: every matrix in the type). A layer's MLP
weights (3 x 4096 x 14336) are far larger than the caches, so the steps read them from DRAM as decoding does.
Prints ms per layer and the bytes/ms that makes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

FTYPES = {"q4_0": 2, "q8_0": 7, "f16": 1}
BYTES_PER_WEIGHT = {"q4_0": 18 / 32, "q8_0": 34 / 32, "f16": 2.0}
D, N_FF, VOCAB = 4096, 14336, 512


def write_gguf(path: str, layers: int, seed: int = 0) -> None:
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    head_dim = 32
    for key, value in (("context_length", 256), ("embedding_length", D), ("block_count", layers),
                       ("feed_forward_length", N_FF), ("attention.head_count", 1), ("attention.head_count_kv", 1),
                       ("attention.key_length", head_dim), ("attention.value_length", head_dim),
                       ("rope.dimension_count", head_dim)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    tokens = [f"<0x{i:02X}>" for i in range(256)] + [f"t{i}" for i in range(VOCAB - 256)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types([6] * 256 + [1] * (VOCAB - 256))
    w.add_token_scores([0.0] * VOCAB)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(VOCAB, D))
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    w.add_tensor("output.weight", mat(VOCAB, D))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(head_dim, D))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(head_dim, D))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(head_dim, D))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(D, head_dim))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(N_FF, D))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(N_FF, D))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(D, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src: str, dst: str, kind: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.pure = True
    params.nthread = threads
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) != 0:
        raise RuntimeError("llama_model_quantize failed")


def decode_step_ms(path: str, tokens: int, threads: int) -> float:
    """Median wall time of single-token decode steps (after a short prompt)."""
    import numpy as np
    from llama_cpp import Llama

    # one token a batch: the batched quantized path traps (SIGILL) on hosts with AMX the VM does not enable
    llm = Llama(model_path=path, n_ctx=tokens + 16, n_threads=threads, n_batch=1, n_ubatch=1, verbose=False)
    llm.eval([300, 301, 302])
    times = []
    for i in range(tokens):
        t0 = time.perf_counter()
        llm.eval([310 + i % 100])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def mlp_ms(kind: str = "q4_0", tokens: int = 24, threads: int = 2, layers=(1, 2)) -> float:
    """llama.cpp's ms per layer (MLP dominated) at `kind`, by the difference of two depths."""
    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in layers:
            f32, q = os.path.join(tmp, f"f32_{n}.gguf"), os.path.join(tmp, f"{kind}_{n}.gguf")
            write_gguf(f32, n)
            quantize(f32, q, kind, threads)
            os.remove(f32)
            steps[n] = decode_step_ms(q, tokens, threads)
            os.remove(q)
    return (steps[layers[1]] - steps[layers[0]]) / (layers[1] - layers[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--type", choices=sorted(FTYPES), default="q4_0")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers-a", type=int, default=1)
    ap.add_argument("--layers-b", type=int, default=2)
    args = ap.parse_args(argv)
    ms = mlp_ms(args.type, args.tokens, args.threads, (args.layers_a, args.layers_b))
    nbytes = 3 * D * N_FF * BYTES_PER_WEIGHT[args.type]
    print(f"llama.cpp {args.type} dense layer (MLP {D}x{N_FF}, batch 1, {args.threads} threads): {ms:.2f} ms, "
          f"{nbytes / ms / 1e6:.1f} GB/s of MLP weights; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
