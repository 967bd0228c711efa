"""Every causal-LM architecture transformers knows, shrunk to a tiny config and tried through the frontend.

    for arch in causal_lm_architectures():          # transformers' MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        result = check_architecture(arch)          # build tiny -> torch.export -> IR -> interpreter vs torch

`tiny_config(arch)` is one generic shrinker, not a config per model: it starts from the architecture's default
config and rewrites every size it recognises by name (widths, layer counts, heads, experts, vocabulary, LoRA
ranks of MLA attention) to a small value, keeping the ratios the model code asserts (heads divide the width,
kv heads divide heads, per-layer lists cut to the layer count). Whatever still fails is reported with the
precise reason (the stage and the first line of the error), which is what the README table shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

WIDTH, FF, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB, EXPERTS, TOP_K = 32, 64, 2, 4, 2, 8, 128, 4, 2
SEQ = 6

# config attribute -> tiny value (every spelling transformers' configs use for the same size)
SIZES = {
    **dict.fromkeys(["hidden_size", "n_embd", "d_model", "dim", "embed_dim", "model_dim", "word_embed_proj_dim",
                     "hidden_dim"], WIDTH),
    **dict.fromkeys(["intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "inner_hidden_size",
                     "d_ff", "ffn_inner_hidden_size", "dense_intermediate_size"], FF),
    **dict.fromkeys(["moe_intermediate_size", "expert_intermediate_size", "shared_expert_intermediate_size",
                     "moe_ffn_hidden_size", "intermediate_size_mlp", "ffn_hidden_size_moe",
                     "shared_intermediate_size"], FF // 2),
    **dict.fromkeys(["num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers",
                     "decoder_layers"], LAYERS),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads"], HEADS),
    **dict.fromkeys(["num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num",
                     "num_key_value_groups_"], KV_HEADS),
    **dict.fromkeys(["head_dim", "attention_head_dim", "kv_channels", "v_head_dim", "qk_head_dim"], HEAD_DIM),
    **dict.fromkeys(["qk_nope_head_dim", "qk_rope_head_dim"], HEAD_DIM // 2),
    **dict.fromkeys(["kv_lora_rank", "q_lora_rank"], 16),
    **dict.fromkeys(["vocab_size", "n_vocab"], VOCAB),
    **dict.fromkeys(["num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_"],
                    EXPERTS),
    **dict.fromkeys(["num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts", "moe_k",
                     "num_experts_per_token"], TOP_K),
    **dict.fromkeys(["n_group", "topk_group", "num_expert_group"], 1),
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"], 64),
    **dict.fromkeys(["sliding_window", "attention_window"], 16),
    **dict.fromkeys(["first_k_dense_replace"], 1),
    **dict.fromkeys(["rotary_dim", "rotary_emb_base_"], HEAD_DIM),
}
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
             "cls_token_id", "mask_token_id", "unk_token_id")


def causal_lm_architectures() -> list[str]:
    """Every `model_type` of transformers' causal-LM auto mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(arch: str):
    """The architecture's default config with every recognised size shrunk (see `SIZES`)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(arch)
    _shrink(config)
    return config


def _shrink(cfg) -> None:
    layers = _int(getattr(cfg, "num_hidden_layers", None))
    for key, value in list(vars(cfg).items()):
        if key in SIZES and _int(value) is not None and value > SIZES[key]:
            setattr(cfg, key, SIZES[key])
        elif key.endswith("_config") and hasattr(value, "to_dict") and value is not cfg:
            _shrink(value)
    for key, value in list(vars(cfg).items()):  # per-layer lists follow the layer count
        if layers and isinstance(value, (list, tuple)) and len(value) == layers and key not in ("rope_scaling",):
            new = getattr(cfg, "num_hidden_layers", LAYERS)
            setattr(cfg, key, type(value)(value[:new]))
    vocab = _int(getattr(cfg, "vocab_size", None)) or VOCAB
    for key in TOKEN_IDS:
        value = getattr(cfg, key, None)
        if _int(value) is not None and value >= vocab:
            setattr(cfg, key, vocab - 1)
        elif isinstance(value, list):
            setattr(cfg, key, [min(v, vocab - 1) for v in value])
    if getattr(cfg, "pad_token_id", None) is None and hasattr(cfg, "pad_token_id"):
        cfg.pad_token_id = 0


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class ArchResult:
    arch: str
    stage: str = "config"  # the stage reached: config, build, export, import, interpret, ok
    reason: str = ""
    patterns: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    max_rel_error: float | None = None

    @property
    def imports(self) -> bool:
        return self.stage in ("interpret", "ok")


def build_tiny(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    return model


def example_ids(model, seq: int = SEQ) -> torch.Tensor:
    vocab = getattr(model.config, "vocab_size", None) or VOCAB
    return (torch.arange(seq, dtype=torch.long).reshape(1, seq) * 7 + 3) % min(vocab, VOCAB)


def check_architecture(arch: str) -> ArchResult:
    """Build the tiny model, import it (torch.export) and run the IR interpreter against torch."""
    from ..frontends.hf import CausalLMLogits
    from ..frontends.torch_export import import_torch
    from ..ir import evaluate
    from ..passes import pipeline_for, run_pipeline

    result, clock = ArchResult(arch), time.perf_counter()

    def lap(stage):
        nonlocal clock
        now = time.perf_counter()
        result.seconds[stage] = round(now - clock, 2)
        clock = now

    try:
        result.stage = "build"
        model = build_tiny(arch)
        lap("build")
        ids = example_ids(model)
        wrapped = CausalLMLogits(model).eval()
        with torch.no_grad():
            want = wrapped(ids).numpy()
        result.stage = "import"
        graph = import_torch(wrapped, (ids,))
        lap("import")
        result.stage = "interpret"
        got = evaluate(graph, [ids.numpy()])[0]
        err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-12))
        result.max_rel_error = err
        if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))):
            raise AssertionError(f"IR interpreter differs from torch (max relative error {err:.2e})")
        lap("interpret")
        out = run_pipeline(graph, pipeline_for("auto"))
        stats = out.stats.get("detect-gated-mlp", {})
        result.patterns = {k: v for k, v in stats.items() if k not in ("gated-mlp", "biased", "moe-expert")}
        result.stage = "ok"
    except Exception as err:  # noqa: BLE001 - the reason is the product here
        result.reason = _reason(err)
    return result


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(err).__name__}: {line[:200]}"
