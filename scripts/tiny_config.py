"""The shrinker: one generic rewrite of an architecture's default config into a tiny one, and the tiny model.

`tiny_config(arch)` starts from the architecture's default config and rewrites every size it recognises by name
(widths, layer counts, heads, experts, vocabulary, LoRA ranks of MLA attention) to a small value, keeping the
ratios the model code asserts (heads divide the width, kv heads divide heads, per-layer lists cut to the layer
count) and one layer of each kind a hybrid has (attention, linear attention, recurrent, sliding), whichever way
its config spells the kinds: a per-layer list of names, a list of layer indices, or a short pattern it repeats.
`CHECKPOINT_VALUES` is data: values every released checkpoint sets that the default config leaves unset.
"""

from __future__ import annotations

import itertools
import math

import torch

WIDTH, FF, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB, EXPERTS, TOP_K = 32, 64, 2, 4, 2, 8, 128, 4, 2
SEQ = 6

# config attribute -> tiny value (every spelling transformers' configs use for the same size)
SIZES = {
    **dict.fromkeys(["hidden_size", "n_embd", "d_model", "dim", "embed_dim", "model_dim", "word_embed_proj_dim",
                     "hidden_dim", "embedding_dim", "hidden_size_global", "adapter_in_dim", "adapter_out_dim",
                     "adapter_input_size", "adapter_output_size"], WIDTH),
    **dict.fromkeys(["intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "inner_hidden_size",
                     "d_ff", "ffn_inner_hidden_size", "dense_intermediate_size"], FF),
    **dict.fromkeys(["moe_intermediate_size", "expert_intermediate_size", "shared_expert_intermediate_size",
                     "moe_ffn_hidden_size", "intermediate_size_mlp", "ffn_hidden_size_moe",
                     "shared_intermediate_size", "moe_shared_expert_intermediate_size"], FF // 2),
    **dict.fromkeys(["num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers",
                     "decoder_layers", "num_blocks"], LAYERS),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads"], HEADS),
    **dict.fromkeys(["num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num",
                     "num_key_value_groups_"], KV_HEADS),
    **dict.fromkeys(["head_dim", "d_head", "attention_head_dim", "kv_channels", "v_head_dim", "qk_nope_head_dim",
                     "qk_rope_head_dim"], HEAD_DIM),
    "qk_head_dim": 2 * HEAD_DIM,  # MLA: nope + rope
    **dict.fromkeys(["kv_lora_rank", "q_lora_rank"], 16),
    **dict.fromkeys(["vocab_size", "n_vocab", "unpadded_vocab_size"], VOCAB),  # Inkling2: lm_head rows
    **dict.fromkeys(["num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_"],
                    EXPERTS),
    **dict.fromkeys(["num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts", "moe_k",
                     "num_experts_per_token"], TOP_K),
    **dict.fromkeys(["n_group", "topk_group", "num_expert_group"], 1),
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"], 64),
    **dict.fromkeys(["sliding_window", "attention_window"], 16),
    **dict.fromkeys(["first_k_dense_replace"], 1),
    "num_kv_shared_layers": 0,  # KV shared from earlier layers of the same kind needs more layers than kept
    **dict.fromkeys(["rotary_dim", "rotary_emb_base_"], HEAD_DIM),
    # sparse-attention indexers (DeepSeek-V4): their heads, and how many compressed entries each query keeps
    "index_n_heads": HEADS, "index_head_dim": HEAD_DIM,
    # tokens compressed into one entry (per attention kind): 2 gives a tiny sequence several entries, so the graph
    # takes the branches of a long one (DeepSeek-V4's 128 would leave its compressor empty below 128 tokens)
    "compress_rates": 2,
    "ssm_state_size": 16,  # Nemotron-H's Mamba-2 state (128: its mixer read 10240 conv channels at width 32)
}
# sizes a model derives as a multiple of its width (Zamba's attention reads [hidden; embeddings]: 2x): kept so
WIDTH_MULTIPLES = ("attention_hidden_size", "lru_width")
SSM_HEADS = [("mamba_expand", "mamba_n_heads", "mamba_d_head"), ("expand", "num_heads", "head_dim"),
             ("mamba_expand", "n_mamba_heads", "mamba_headdim"), ("expand", "mamba_num_heads", "mamba_head_dim")]
SSM_GROUPS = ("n_groups",)  # B/C groups of a Mamba-2 mixer: they must divide its heads
# layers of a kind every `period` layers from `offset` on (Jamba's attention): a tiny config keeps one of them
PERIODS = (("attn_layer_period", "attn_layer_offset"), ("expert_layer_period", "expert_layer_offset"))
MOE_DEFAULTS = {"num_experts_per_tok": TOP_K, "n_routed_experts": EXPERTS, "num_local_experts": EXPERTS,
                "n_shared_experts": 1, "n_group": 1, "topk_group": 1}
LAYER_KEYS = [k for k, v in SIZES.items() if v == LAYERS and "layer" in k]
CODEBOOK_ROWS = {"musicgen_decoder", "musicgen_melody_decoder"}  # decoders reading a row of ids per codebook
QSA_INDEXER = {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": HEAD_DIM, "indexer_budget": 4,
               "indexer_compress_ratio": 2}
# values every released checkpoint sets that transformers' default config leaves unset (its model then fails to build)
CHECKPOINT_VALUES = {
    "dbrx": {"attn_config": {"rope_theta": 500000.0, "clip_qkv": 8.0}},  # DbrxAttention reads both
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_hidden_layers": 2},  # one layer of each kind
    "bamba": {"attn_layer_indices": [9, 18, 27]},  # Bamba-9B's attention layers (the default has none)
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"], "num_hidden_layers": 2},  # Granite 4
    # HRM's cache has a slot per (cycle, layer): num_hidden_layers = per-stack layers * H_cycles * (L_cycles + 1),
    # which the default config derives from its own 16 layers; one layer per stack and one cycle of each make it 2
    "hrm_text": {"num_layers_per_stack": 1, "H_cycles": 1, "L_cycles": 1},
    # Qwen4-Exp's QSA indexer: no default and no released checkpoint yet; sizes its config validates (one key head,
    # head dim >= the rotary dim, budget a multiple of the block), 2-token blocks so a tiny prompt has several
    # not a checkpoint value: DeepSeek-V4's indexer keeping 2 compressed entries per query, so a tiny sequence takes
    # the selection (its top-k sentinel); in SIZES it also cut DeepSeek-V3.2's, whose topk(min(k, seq)) then holds
    # from 2 tokens on only and its one-token decoding step fails
    "deepseek_v4": {"index_topk": 2},
    "qwen4_exp_text": QSA_INDEXER,
    "qwen4_exp": {"text_config": QSA_INDEXER},
    # Kolibri-1.1: no released checkpoint in transformers' tests; the default's per-layer lists (K/V sources, indexer
    # layers) are for its 50 layers, so a tiny one sets them for two: a sliding layer, then an indexed one
    "kolibri1_1": {"num_hidden_layers": 2, "layer_types": ["sliding_attention", "indexed_attention"],
                   "index_layers": [1], "kv_source_layers": [0, 1], "mlp_only_layers": [0], "index_num_heads": 1,
                   "index_topk": 4, "index_pool_size": 16, "index_compression": 4, "sliding_window": 4},
}
# sizes a config validates a lower bound of, kept after the shrinking: Kolibri-1.1 rounds keys and values to NVFP4
# in blocks of 16 (head_dim a multiple of 16)
UNSHRUNK = {"kolibri1_1": {"head_dim": 16}}
# layers a tiny config keeps of each kind where one is not enough: Zamba ties one shared attention block across
# its hybrid layers, and transformers' tying fails when a single hybrid layer is left to tie
PER_KIND = {"zamba": 2}
# widths where WIDTH does not fit the model: xLSTM's cache rounds its state dims up to a multiple of 64
# (xLSTMConfig.qk_dim, v_dim) while its layers use width * factor unrounded, so its cached forward runs only where
# width * qk_dim_factor (0.5) is a multiple of 64, as in every released checkpoint
WIDTHS = {"xlstm": 128}
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
             "cls_token_id", "mask_token_id", "unk_token_id")


def tiny_config(arch: str):
    """The architecture's default config with every recognised size shrunk (see `SIZES`), built again from the
    shrunk values so that what its `__init__` derives (head dims, layer-type lists) follows them."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    values = AutoConfig.for_model(arch).to_dict()
    for key, value in CHECKPOINT_VALUES.get(arch, {}).items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    values = _shrink(values, PER_KIND.get(arch, 1))
    if arch in WIDTHS:
        values.update({k: WIDTHS[arch] for k, v in SIZES.items() if v == WIDTH and k in values})
    values.update(UNSHRUNK.get(arch, {}))
    config = CONFIG_MAPPING[arch](**values)
    for key, value in values.items():  # keys __init__ ignores or recomputes from the originals
        if key in SIZES and _int(_attr(config, key)) is not None and _attr(config, key) > value:
            setattr(config, key, value)
    return config


def causal_lm_part(config, model_class):
    """The config `model_class` (the architecture's causal LM) takes: the config itself, or its sub-config of that
    class when the mapping names a composite (Llama-4's `text_config`; MusicGen's causal LM is its `decoder`)."""
    wanted = model_class.config_class
    if isinstance(config, wanted):
        return config
    return next((v for v in vars(config).values() if isinstance(v, wanted)), config)


def _attr(config, key):
    try:
        return getattr(config, key, None)
    except Exception:  # noqa: BLE001 - per-layer attributes refuse a global read (gemma4)
        return None


def _shrink(values: dict, per_kind: int = 1) -> dict:
    out = dict(values)
    layers = next((_int(values[k]) for k in LAYER_KEYS if _int(values.get(k))), None)
    stages = stage_keys(values, layers) if layers else []
    kinds = layer_kinds(values, layers) if layers else None
    unit = block_unit(kinds) if stages and all(values[k] % block_unit(kinds) == 0 for k in stages) else 1
    pick = kept_layers(kinds, layers, per_kind, unit, stage_ranges(values, stages)) if layers else []
    for key, value in values.items():
        if key in stages:  # a stage keeps the picked layers within its range
            start, end = stage_ranges(values, stages)[stages.index(key)]
            out[key] = sum(start <= i < end for i in pick)
        elif layers and _layer_indices(key, value, layers):  # indices of the layers of a kind, renumbered
            out[key] = [pick.index(i) for i in value if i in pick]
        elif layers and _layer_pattern(key, value, layers):  # a pattern repeated over the layers: its kept part
            out[key] = [value[i % len(value)] for i in pick]
        elif key in LAYER_KEYS and layers and _int(value) == layers:
            out[key] = len(pick)
        elif key in SIZES and _int(value) is not None and value > SIZES[key]:
            out[key] = SIZES[key]
        elif key in SIZES and isinstance(value, dict) and value and all(_int(v) for v in value.values()):
            out[key] = {k: min(v, SIZES[key]) for k, v in value.items()}  # a size per kind
        elif key in SIZES and isinstance(value, list) and value and all(_int(v) for v in value):
            kept = [value[i] for i in pick] if layers and len(value) == layers else value  # per-layer sizes
            out[key] = [min(v, SIZES[key]) for v in kept]
        elif layers and "layer" in key and isinstance(value, dict) and all(str(k).isdigit() for k in value):
            out[key] = {type(k)(new): _capped(value[k], values) for new, old in enumerate(pick)  # per-layer
                        for k in value if int(k) == old}  # settings, renumbered, their sizes shrunk too
        elif isinstance(value, dict) and ("model_type" in value or key.endswith("_config")):
            out[key] = _shrink(value, per_kind)
        elif layers and isinstance(value, list) and len(value) == layers:  # per-layer lists follow the pick
            out[key] = [value[i] for i in pick]
    width = _int(values.get("hidden_size"))
    for key in (k for k in WIDTH_MULTIPLES if width and _int(values.get(k)) and values[k] % width == 0):
        out[key] = values[key] // width * out["hidden_size"]
    for period, offset in PERIODS:  # every `period`-th layer from `offset` on is of a kind: keep one of them
        if _int(out.get(period)) and _int(out.get(offset)) is not None and out[period] > LAYERS:
            out[period], out[offset] = LAYERS, min(out[offset], LAYERS - 1)
    heads = _int(out.get("num_attention_heads"))
    if heads and (values.get("num_key_value_heads") in (None, values.get("num_attention_heads"))):
        out["num_key_value_heads"] = heads  # multi-head (or MLA) attention stays multi-head
    if "head_dim" in out and out["head_dim"] is None and heads and _int(out.get("hidden_size")):
        out["head_dim"] = out["hidden_size"] // heads  # some defaults leave it None for the checkpoint to set
    for expand, n_heads, d_head in SSM_HEADS:  # SSM heads: n_heads · d_head = expand · width
        if all(_int(out.get(k)) for k in (expand, n_heads, "hidden_size")) and d_head in out:
            out[n_heads] = min(out[n_heads], HEADS)
            out[d_head] = out[expand] * out["hidden_size"] // out[n_heads]
            if out.get("mamba_d_ssm") is not None:  # the inner width, when given, is expand · width too
                out["mamba_d_ssm"] = out[expand] * out["hidden_size"]
            for groups in (k for k in SSM_GROUPS if _int(out.get(k))):
                out[groups] = math.gcd(out[groups], out[n_heads])
    if out.get("rope_parameters") == {} and isinstance(out.get("layer_types"), list):  # left to the checkpoint
        out["rope_parameters"] = {t: {"rope_type": "default", "rope_theta": 10000.0} for t in set(out["layer_types"])}
    if out.get("default_language", "") is None and out.get("languages"):  # X-MOD: the adapter to run
        out["default_language"] = out["languages"][0]
    if isinstance(out.get("axial_pos_embds_dim"), list):  # Reformer: axial position embeddings split the width
        half = _int(out.get("hidden_size", WIDTH)) // 2
        out["axial_pos_embds_dim"] = [half, out.get("hidden_size", WIDTH) - half]
        out["axial_pos_shape"] = [8, out["max_position_embeddings"] // 8]  # their product is the position count
    if any("expert" in key for key in out):  # a MoE config: its counts left None for the checkpoint, likewise
        out.update({k: v for k, v in MOE_DEFAULTS.items() if k in out and out[k] is None})
    vocab = _int(out.get("vocab_size")) or VOCAB
    for key in TOKEN_IDS:
        value = out.get(key)
        if _int(value) is not None and value >= vocab:
            out[key] = vocab - 1
        elif isinstance(value, list):
            out[key] = [min(v, vocab - 1) for v in value]
    if "pad_token_id" in out and out["pad_token_id"] is None:
        out["pad_token_id"] = 0
    for key in ("transformers_version", "architectures", "model_type"):
        out.pop(key, None)
    return out


def _capped(values, parent: dict):
    """One layer's overrides of `parent` (the whole config's values), their sizes shrunk as `_shrink` does."""
    if not isinstance(values, dict):
        return values
    out = {k: min(v, SIZES[k]) if k in SIZES and _int(v) is not None else v for k, v in values.items()}
    if values.get("num_key_value_heads", 0) == values.get("num_attention_heads"):  # multi-head stays multi-head
        out["num_key_value_heads"] = out["num_attention_heads"]
    both = {**parent, **values}
    if "qk_nope_head_dim" in values and both["qk_nope_head_dim"] + both.get("qk_rope_head_dim", 0) == both.get(
            "head_dim"):  # an MLA layer whose head_dim is nope + rope (Dots 3's sliding layers) stays so
        out["head_dim"] = out["qk_nope_head_dim"] + min(both["qk_rope_head_dim"], SIZES["qk_rope_head_dim"])
    return out


def layer_kinds(values: dict, layers: int) -> list | None:
    """Each layer's kind, however the config spells it: `layer_types` or another per-layer list of names (Zamba's
    `layers_block_type`), a short pattern of names the model repeats over its layers (RecurrentGemma's
    `block_types`), or a list of the indices of the layers of a kind (Bamba's `attn_layer_indices`)."""
    if _names(values.get("layer_types")) and len(values["layer_types"]) == layers:
        return values["layer_types"]
    spelled = [[v[i % len(v)] for i in range(layers)] for k, v in values.items()
               if _names(v) and (len(v) == layers and "layer" in k or _layer_pattern(k, v, layers))]
    spelled += [[i in v for i in range(layers)] for k, v in values.items() if _layer_indices(k, v, layers)]
    return [tuple(kinds) for kinds in zip(*spelled)] if spelled else None


def _names(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _layer_pattern(key: str, value, layers: int) -> bool:
    return "type" in key and _names(value) and 1 < len(value) < layers and len(set(value)) > 1


def _layer_indices(key: str, value, layers: int) -> bool:
    return ("layer" in key and isinstance(value, list) and 0 < len(value) < layers
            and all(_int(v) is not None and 0 <= v < layers for v in value))


def stage_keys(values: dict, layers: int) -> list[str]:
    """Counts of consecutive stages of the layers, in the config's order, that sum to the layer count (Dory's
    n_input_layers + n_recurrent_layers + n_output_layers): a tiny config keeps each stage's picked layers."""
    keys = [k for k, v in values.items() if "layers" in k and k not in LAYER_KEYS and _int(v) and v < layers]
    return keys if len(keys) > 1 and sum(values[k] for k in keys) == layers else []


def stage_ranges(values: dict, stages: list[str]) -> list[tuple[int, int]]:
    """(first layer, past the last) of each stage in `stages`."""
    ends = list(itertools.accumulate(values[k] for k in stages))
    return list(zip([0, *ends[:-1]], ends))


def block_unit(kinds) -> int:
    """How many entries of the per-layer kinds make one layer: 2 where every second entry is a block of its own
    kind (Dory's released configs list each layer as (attention kind, "mlp")), else 1. Read only where stage counts
    must stay whole layers (`stage_keys`): an alternating local / global pattern looks the same."""
    if not isinstance(kinds, list):
        return 1
    for unit in (2, 3, 4):
        if len(kinds) % unit == 0 and len(kinds) > unit and all(
                len(set(kinds[r::unit])) == 1 and kinds[r] not in kinds[::unit] for r in range(1, unit)):
            return unit
    return 1


def kept_layers(types, layers: int, per_kind: int = 1, unit: int = 1, stages: list[tuple[int, int]] = ()
                ) -> list[int]:
    """The layers a tiny config keeps: the first of each kind in `types` (`layer_kinds`: a hybrid keeps one
    attention and one linear-attention layer, a sliding-window model one sliding and one full), then the first
    others, LAYERS in all where the kinds allow; the first `per_kind` of each kind where one is not enough; the
    first of each stage (`stage_keys`) that has none of those. With a `unit` of entries per layer (`block_unit`),
    whole units."""
    if unit > 1:
        units = kept_layers(types[::unit], layers // unit, per_kind, 1, [(a // unit, b // unit) for a, b in stages])
        return [u * unit + r for u in units for r in range(unit)]
    kinds = isinstance(types, list) and len(types) == layers
    seen: dict = {}
    for i, kind in enumerate(types if kinds else []):
        seen.setdefault(kind, [])
        if len(seen[kind]) < per_kind and len(seen) <= 4:
            seen[kind].append(i)
    firsts = sorted(i for kept in seen.values() for i in kept)
    rest = [i for i in range(layers) if i not in firsts]
    picked = firsts + rest[:max(0, LAYERS - len(firsts))]
    return sorted(picked + [a for a, b in stages if not any(a <= i < b for i in picked)])


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def build_tiny(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch)
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    config = causal_lm_part(config, model_class)
    torch.manual_seed(seed)
    build = model_class._from_config
    try:
        model = build(config)
    except (AssertionError, ValueError) as err:
        if "is_decoder" not in str(err) or getattr(config, "is_decoder", True):
            raise
        config.is_decoder = True  # a causal LM its class will only build as a decoder (Reformer asserts it)
        torch.manual_seed(seed)
        model = build(config)
    model = model.float().eval()
    with torch.no_grad():  # a matrix initialised to zero (AFMoE's router gate) scores every expert the same, and
        for p in model.parameters():  # torch.topk's order among ties is unspecified: give it small random values
            if p.ndim >= 2 and p.is_floating_point() and not p.any():
                p.normal_(0.0, 0.02)
    return model


def example_ids(model, seq: int = SEQ) -> torch.Tensor:
    vocab = getattr(model.config, "vocab_size", None) or VOCAB
    rows = model.config.num_codebooks if model.config.model_type in CODEBOOK_ROWS else 1
    return (torch.arange(rows * seq, dtype=torch.long).reshape(rows, seq) * 7 + 3) % min(vocab, VOCAB)
