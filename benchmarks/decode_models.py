"""Part (a)'s synthetic decoder of benchmarks/decode.py and its peers' files: a Mistral-7B-dims ReGLU decoder with
about 90% of the neurons inactive per token (synthetic weights; see `build_mistral`), the same weights written as a
dense `llama` GGUF for llama.cpp, and the bytes a dense step reads."""

from __future__ import annotations

import os

MISTRAL = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 128, "rms_norm_eps": 1e-5}
SMALL = {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 64, "rms_norm_eps": 1e-5}  # --small: a smoke test of the whole script
ACTIVE = 0.10  # fraction of neurons active per token in (a)

# --- (a) the synthetic Mistral-dims ReGLU decoder ------------------------------------------------------------
def build_mistral(layers: int, vocab: int, max_seq: int, dtype: str, seed: int = 0, small: bool = False):
    """A LlamaForCausalLM of Mistral-7B dims with ReGLU MLPs and ~90% of the neurons inactive per token (see the
    module docstring), built in `dtype` without a full float32 copy."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(SMALL if small else MISTRAL), num_hidden_layers=layers, vocab_size=vocab,
                         max_position_embeddings=max_seq, hidden_act="relu", tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=None, pad_token_id=0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(getattr(torch, dtype)).eval()
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # to_empty left its inv_freq empty
    gen = torch.Generator().manual_seed(seed)
    d = config.hidden_size
    u = torch.randn(d, generator=gen)
    u /= u.norm()

    def fill(p, std, rows=512, orthogonal_to_u=False):
        for start in range(0, p.shape[0], rows):  # a float32 block at a time
            block = torch.randn((min(rows, p.shape[0] - start), *p.shape[1:]), generator=gen).mul_(std)
            if orthogonal_to_u:
                block -= (block @ u)[:, None] * u
            p[start:start + rows].copy_(block)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif "embed_tokens" in name:
                fill(p, 0.02)
                p += (4.0 * u).to(p.dtype)  # the shared direction: |4u| vs |noise| ~ 0.02 * 64 = 1.3
            elif "o_proj" in name or "down_proj" in name:
                fill(p, 1e-3)  # small: the residual stream stays the embedding
            else:
                fill(p, 1.0 / d ** 0.5, orthogonal_to_u="gate_proj" in name)
        calibrate_gates(model, u, vocab, gen)
    return model


def calibrate_gates(model, u, vocab: int, gen) -> None:
    """Layer by layer: gate rows -= b·u with b the (1 - ACTIVE) quantile of g / (x·u) over 16 tokens' MLP inputs."""
    import torch

    ids = torch.randint(0, vocab, (1, 16), generator=gen)
    for layer in model.model.layers:
        seen = []
        hook = layer.mlp.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().float()))
        model(ids, use_cache=False)
        hook.remove()
        x = seen[0].reshape(-1, u.numel())
        s = x @ u
        if not bool((s > 0).all()):
            raise RuntimeError("the shared direction does not dominate the MLP inputs; the synthetic model is off")
        w = layer.mlp.gate_proj.weight
        ratio = (x @ w.float().T) / s[:, None]
        b = torch.quantile(ratio.flatten()[::max(1, ratio.numel() // 1_000_000)], 1 - ACTIVE)
        w -= (b * u).to(w.dtype)


def write_llama_gguf(model, path: str, dtype: str) -> None:
    """The model as a dense `llama` GGUF (matrices in `dtype`, norms F32; q/k rows permuted as llama.cpp's
    converter does), with a byte-level token list so llama.cpp loads it."""
    import gguf
    import numpy as np

    c = model.config
    w = gguf.GGUFWriter(path, "llama")
    for key, value in (("context_length", max(c.max_position_embeddings, 4096)), ("embedding_length", c.hidden_size),
                       ("block_count", c.num_hidden_layers), ("feed_forward_length", c.intermediate_size),
                       ("attention.head_count", c.num_attention_heads),
                       ("attention.head_count_kv", c.num_key_value_heads), ("rope.dimension_count", c.head_dim),
                       ("attention.key_length", c.head_dim), ("attention.value_length", c.head_dim)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_float32("llama.rope.freq_base", float(getattr(c, "rope_theta", None) or
                                                (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 1e4)))
    vocab = c.vocab_size
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<0x{i:02X}>" for i in range(256)] + [f"t{i}" for i in range(vocab - 256)])
    w.add_token_types([6] * 256 + [1] * (vocab - 256))
    w.add_token_scores([0.0] * vocab)
    np_dtype = np.float16 if dtype == "float16" else np.float32

    def mat(t, heads=0):
        a = t.detach().numpy()
        if heads:  # HF's rotary halves -> llama.cpp's interleaved pairs
            a = a.reshape(heads, 2, a.shape[0] // heads // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        return np.ascontiguousarray(a, dtype=np_dtype)

    def vec(t):
        return t.detach().float().numpy()

    m = model.model
    w.add_tensor("token_embd.weight", mat(m.embed_tokens.weight))
    w.add_tensor("output_norm.weight", vec(m.norm.weight))
    w.add_tensor("output.weight", mat(model.lm_head.weight))
    for i, layer in enumerate(m.layers):
        a, f = layer.self_attn, layer.mlp
        w.add_tensor(f"blk.{i}.attn_norm.weight", vec(layer.input_layernorm.weight))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", vec(layer.post_attention_layernorm.weight))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(a.q_proj.weight, c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(a.k_proj.weight, c.num_key_value_heads))
        for name, t in (("attn_v", a.v_proj.weight), ("attn_output", a.o_proj.weight), ("ffn_gate", f.gate_proj.weight),
                        ("ffn_up", f.up_proj.weight), ("ffn_down", f.down_proj.weight)):
            w.add_tensor(f"blk.{i}.{name}.weight", mat(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    drop_from_page_cache(path)


# K-quant super-blocks of 256 weights: bytes, and the weights' standard deviation per unit of d for random codes
# and sub-scales (Q4_K: d*sc*q - dmin*m with dmin = 7.5 d, about 250 d; Q6_K: d*sc*(q - 32), sc in -64..63, about 690 d)
K_BLOCKS = {"Q4_K": (144, 250.0), "Q6_K": (210, 690.0)}


def random_k_blocks(rng, kind: str, rows: int, cols: int, std: float | tuple):
    """Random valid `kind` blocks uint8 [rows, cols / 256 * bytes] by the documented layouts (frontends/gguf_kquants.py;
    the gguf package has no K-quant quantizer), weights of about `std`, or d drawn uniformly from a (low, high) pair.
    Q4_K: d, dmin fp16, 12 scale bytes, 128 code bytes (any scale and code bytes are valid); Q6_K: 128 low and 64 high
    code bytes, 16 int8 sub-scales, d fp16."""
    import numpy as np

    nbytes, per_d = K_BLOCKS[kind]
    n = rows * cols // 256
    low, high = std if isinstance(std, tuple) else (0.5 * std / per_d, 1.5 * std / per_d)
    d = rng.uniform(low, high, n).astype(np.float16)
    if kind == "Q4_K":
        dmin = (d.astype(np.float32) * 7.5).astype(np.float16)
        header = np.stack([d, dmin], -1).view(np.uint8).reshape(n, 4)
        blocks = np.concatenate([header, rng.integers(0, 256, (n, 140), dtype=np.uint8)], -1)
    else:
        codes = rng.integers(0, 256, (n, 192), dtype=np.uint8)
        scales = rng.integers(-64, 64, (n, 16), dtype=np.int8).view(np.uint8)
        blocks = np.concatenate([codes, scales, d.view(np.uint8).reshape(n, 2)], -1)
    return blocks.reshape(rows, -1)


def write_qwen3_moe_gguf(path: str, *, d: int = 2048, layers: int = 4, experts: int = 32, used: int = 8,
                         n_ff: int = 768, heads: int = 16, kv_heads: int = 4, vocab: int = 2048, context: int = 4096,
                         quant: str = "Q4_0", std: float = 0.02, seed: int = 0) -> dict:
    """A synthetic Qwen3-MoE GGUF as llama.cpp writes one (Qwen3-30B-A3B's shapes, scaled by the arguments): every
    layer's experts as 3-D tensors ffn_{gate,up,down}_exps [E, rows, cols] and its attention matrices in `quant`
    (GGUF's own quantizer), norms, router and the tables F32; a byte-level SentencePiece vocabulary, so llama.cpp and
    transformers both load it (transformers' GGUF mapping takes n_ff 768, Qwen3-MoE's expert width). `quant`
    "Q4_K_M": K-quant blocks as llama.cpp's Q4_K_M mix stores an MoE (attention and the experts' gate / up Q4_K, their
    down Q6_K), random valid bytes (`random_k_blocks`: the gguf package has no K-quant quantizer). Random weights
    (`std`, the router's 0.5, norms 1): for timing and for checking the import, not for text. Returns {tensor name:
    its quantized blocks} of the expert tensors of layer 0."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    types = dict.fromkeys(("attn", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"), quant)
    if quant == "Q4_K_M":
        types = {"attn": "Q4_K", "ffn_gate_exps": "Q4_K", "ffn_up_exps": "Q4_K", "ffn_down_exps": "Q6_K"}
    rng = np.random.default_rng(seed)
    head = d // heads
    w = gguf.GGUFWriter(path, "qwen3moe")
    for key, value in (("context_length", context), ("embedding_length", d), ("block_count", layers),
                       ("feed_forward_length", n_ff), ("expert_feed_forward_length", n_ff),
                       ("attention.head_count", heads), ("attention.head_count_kv", kv_heads),
                       ("attention.key_length", head), ("attention.value_length", head),
                       ("expert_count", experts), ("expert_used_count", used)):
        w.add_uint32(f"qwen3moe.{key}", value)
    w.add_float32("qwen3moe.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("qwen3moe.rope.freq_base", 1e6)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<0x{i:02X}>" for i in range(256)] + [f"t{i}" for i in range(vocab - 256)])
    w.add_token_types([6] * 256 + [1] * (vocab - 256))
    w.add_token_scores([0.0] * vocab)

    def normal(*shape, scale=std):
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    def quantized(kind, *shape):
        if kind in K_BLOCKS:
            return random_k_blocks(rng, kind, int(np.prod(shape[:-1])), shape[-1], std).reshape(*shape[:-1], -1)
        return quants.quantize(normal(*shape), GGMLQuantizationType[kind])

    w.add_tensor("token_embd.weight", normal(vocab, d))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output.weight", normal(vocab, d))
    kept = {}
    for i in range(layers):
        for norm, size in (("attn_norm", d), ("ffn_norm", d), ("attn_q_norm", head), ("attn_k_norm", head)):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(size, np.float32))
        for name, shape in (("attn_q", (heads * head, d)), ("attn_k", (kv_heads * head, d)),
                            ("attn_v", (kv_heads * head, d)), ("attn_output", (d, heads * head))):
            w.add_tensor(f"blk.{i}.{name}.weight", quantized(types["attn"], *shape),
                         raw_dtype=GGMLQuantizationType[types["attn"]])
        w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", normal(experts, d, scale=0.5))
        for name, shape in (("ffn_gate_exps", (experts, n_ff, d)), ("ffn_up_exps", (experts, n_ff, d)),
                            ("ffn_down_exps", (experts, d, n_ff))):
            blocks = quantized(types[name], *shape)
            w.add_tensor(f"blk.{i}.{name}.weight", blocks, raw_dtype=GGMLQuantizationType[types[name]])
            if i == 0:
                kept[name] = blocks
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    drop_from_page_cache(path)
    return kept


def drop_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def step_bytes(model) -> dict:
    """Weight bytes one dense decoding step of `model` reads (every matrix once, one embedding row; norms left out:
    a few KB) as {"dense", "mlp"} (mlp: the MLP matrices' share). A dense GGUF of the same weights (llama.cpp) reads
    the dense figure; exact mode reads every gate row and the active share of up and down (`part_a` adds it)."""
    mlp = dense = 0
    for name, p in model.named_parameters():
        nbytes = p.numel() * p.element_size()
        if "embed_tokens" in name:
            dense += p.shape[1] * p.element_size()
        elif p.dim() == 2:
            dense += nbytes
            mlp += nbytes if ".mlp." in name else 0
    return {"dense": float(dense), "mlp": float(mlp)}
