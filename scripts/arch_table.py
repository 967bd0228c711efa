"""Every causal-LM architecture transformers knows, shrunk to a tiny config and tried through the frontend.

    for arch in causal_lm_architectures():          # transformers' MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        result = check_architecture(arch)          # build tiny -> torch.export -> IR -> interpreter vs torch

`tiny_config(arch)` is one generic shrinker, not a config per model: it starts from the architecture's default
config and rewrites every size it recognises by name (widths, layer counts, heads, experts, vocabulary, LoRA
ranks of MLA attention) to a small value, keeping the ratios the model code asserts (heads divide the width,
kv heads divide heads, per-layer lists cut to the layer count). Whatever still fails is reported with the
precise reason (the stage and the first line of the error), which is what the README table shows. The patterns
column holds detect-gated-mlp's counts, the non-gated ReLU-family MLPs sparsify-exact made exact (`relu2-mlp
exact`), and `unmatched-gate` blocks (a gate that is no table activation), whose gate the reason column spells.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
                     "shared_intermediate_size"], FF // 2),
    **dict.fromkeys(["num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers",
                     "decoder_layers", "num_blocks"], LAYERS),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads"], HEADS),
    **dict.fromkeys(["num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num",
                     "num_key_value_groups_"], KV_HEADS),
    **dict.fromkeys(["head_dim", "d_head", "attention_head_dim", "kv_channels", "v_head_dim", "qk_nope_head_dim",
                     "qk_rope_head_dim"], HEAD_DIM),
    "qk_head_dim": 2 * HEAD_DIM,  # MLA: nope + rope
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
    "num_kv_shared_layers": 0,  # KV shared from earlier layers of the same kind needs more layers than kept
    **dict.fromkeys(["rotary_dim", "rotary_emb_base_"], HEAD_DIM),
}
SSM_HEADS = [("mamba_expand", "mamba_n_heads", "mamba_d_head"), ("expand", "num_heads", "head_dim"),
             ("mamba_expand", "n_mamba_heads", "mamba_headdim")]
SSM_GROUPS = ("n_groups",)  # B/C groups of a Mamba-2 mixer: they must divide its heads
# layers of a kind every `period` layers from `offset` on (Jamba's attention): a tiny config keeps one of them
PERIODS = (("attn_layer_period", "attn_layer_offset"), ("expert_layer_period", "expert_layer_offset"))
MOE_DEFAULTS = {"num_experts_per_tok": TOP_K, "n_routed_experts": EXPERTS, "num_local_experts": EXPERTS,
                "n_shared_experts": 1, "n_group": 1, "topk_group": 1}
LAYER_KEYS = [k for k, v in SIZES.items() if v == LAYERS and "layer" in k]
CODEBOOK_ROWS = {"musicgen_decoder", "musicgen_melody_decoder"}  # decoders reading a row of ids per codebook
# values every released checkpoint sets that transformers' default config leaves unset (its model then fails to build)
CHECKPOINT_VALUES = {
    "dbrx": {"attn_config": {"rope_theta": 500000.0, "clip_qkv": 8.0}},  # DbrxAttention reads both
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_hidden_layers": 2},  # one layer of each kind
}
# what stops an architecture that still fails, and what would fix it (shown only while its check fails)
LIMITS = {
    "blt": "data-dependent: patch lengths come from its entropy model's output; a fixed patching would import",
    "dbrx": "data-dependent: its experts (DbrxExperts: all experts' weights in one [E·n, d] matrix) loop over the "
            "experts hit (nonzero); frontends/moe.py's per-expert rewrite does not know that layout",
    "dory": "the shrinker cannot keep its (attention, mlp) block pairs and input/recurrent/output stages consistent",
    "gemma3n": "its vision tower is timm's (TimmWrapperModel) and timm (which pulls torchvision) is not installed; "
               "gemma3n_text, the decoder alone, imports",
    "gemma4_assistant": "a speculative-decoding draft model whose default config fails transformers' own validation",
    "gemma4_unified_assistant": "a speculative-decoding draft model: it reads the target model's embeddings and KV "
                                "states, so it does not run from token ids alone",
    "jetmoe": "data-dependent: its MoE and mixture-of-attention split tokens by per-expert counts; a per-expert "
              "rewrite like frontends/moe.py's would import it",
    "longcat_flash": "data-dependent: its experts loop over the experts hit (nonzero, .item()); frontends/moe.py's "
                     "per-expert rewrite would need its identity ('zero') experts",
    "qwen4_exp": "the default config leaves the indexer's sizes unset (indexer_n_heads, _head_dim, _budget, "
                 "_compress_ratio), which no released checkpoint gives yet",
    "reformer": "data-dependent: its axial position embeddings are cut to position_ids.max().item() + 1 columns",
    "xmod": "data-dependent: tokens reach their language's adapter through a boolean mask; a rewrite for one "
            "language (every token the same adapter) would import",
}
LIMITS["qwen4_exp_text"] = LIMITS["qwen4_exp"]
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
             "cls_token_id", "mask_token_id", "unk_token_id")


def causal_lm_architectures() -> list[str]:
    """Every `model_type` of transformers' causal-LM auto mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(arch: str):
    """The architecture's default config with every recognised size shrunk (see `SIZES`), built again from the
    shrunk values so that what its `__init__` derives (head dims, layer-type lists) follows them."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    values = AutoConfig.for_model(arch).to_dict()
    for key, value in CHECKPOINT_VALUES.get(arch, {}).items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    values = _shrink(values)
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


def _shrink(values: dict) -> dict:
    out = dict(values)
    layers = next((_int(values[k]) for k in LAYER_KEYS if _int(values.get(k))), None)
    pick = kept_layers(values.get("layer_types"), layers) if layers else []
    for key, value in values.items():
        if key in LAYER_KEYS and layers and _int(value) == layers:
            out[key] = len(pick)
        elif key in SIZES and _int(value) is not None and value > SIZES[key]:
            out[key] = SIZES[key]
        elif key in SIZES and isinstance(value, list) and value and all(_int(v) for v in value):
            kept = [value[i] for i in pick] if layers and len(value) == layers else value  # per-layer sizes
            out[key] = [min(v, SIZES[key]) for v in kept]
        elif layers and "layer" in key and isinstance(value, dict) and all(str(k).isdigit() for k in value):
            out[key] = {type(k)(new): _capped(value[k], values) for new, old in enumerate(pick)  # per-layer
                        for k in value if int(k) == old}  # settings, renumbered, their sizes shrunk too
        elif isinstance(value, dict) and ("model_type" in value or key.endswith("_config")):
            out[key] = _shrink(value)
        elif layers and isinstance(value, list) and len(value) == layers:  # per-layer lists follow the pick
            out[key] = [value[i] for i in pick]
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


def kept_layers(types, layers: int) -> list[int]:
    """The layers a tiny config keeps: the first of each kind in `layer_types` (a hybrid keeps one attention and
    one linear-attention layer, a sliding-window model one sliding and one full), then the first others, LAYERS
    in all where the kinds allow."""
    kinds = isinstance(types, list) and len(types) == layers and all(isinstance(t, str) for t in types)
    firsts = sorted({t: i for i, t in reversed(list(enumerate(types)))}.values())[:4] if kinds else []
    rest = [i for i in range(layers) if i not in firsts]
    return sorted(firsts + rest[:max(0, LAYERS - len(firsts))])


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class ArchResult:
    arch: str
    stage: str = "config"  # where it stopped: build, import, interpret, compile; "ok" when all passed
    reason: str = ""
    gated: int = 0  # gated MLP blocks detected
    patterns: dict = field(default_factory=dict)  # detect-gated-mlp's per-pattern counts
    compiled: bool | None = None  # TVM auto-mode build matched torch (None: not tried)
    note: str = ""  # why an importing model was specialised to the example's sequence length (if it was)
    seconds: dict = field(default_factory=dict)

    @property
    def imports(self) -> bool:
        return self.stage in ("compile", "ok")

    def row(self) -> str:
        """Its README table row (no timings: the row must not change between runs)."""
        pattern = ", ".join(f"{k}×{v}" for k, v in sorted(self.patterns.items())) or "–"
        tvm = {None: "not run", True: "yes", False: "no"}[self.compiled]
        reason = (self.reason or self.note).replace("|", "\\|") or "–"
        return (f"| {self.arch} | {'yes' if self.imports else 'no'} | {self.gated} | {pattern} | {tvm} | "
                f"{reason} |")


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


def check_architecture(arch: str, compile: bool = False) -> ArchResult:
    """Build the tiny model, import it (torch.export), run the IR interpreter against torch, detect its MLPs;
    with `compile`, also build it for the host in auto mode and check the compiled outputs against torch."""
    from ..frontends.hf import CausalLMLogits
    from ..frontends.torch_export import import_torch
    from ..ir import evaluate
    from ..passes import pipeline_for, run_pipeline

    result, clock = ArchResult(arch), time.perf_counter()

    def lap(stage, next_stage):
        nonlocal clock
        now = time.perf_counter()
        result.seconds[stage] = round(now - clock, 2)
        clock, result.stage = now, next_stage

    try:
        result.stage = "build"
        model = build_tiny(arch)
        ids = example_ids(model)
        wrapped = CausalLMLogits(model).eval()
        with torch.no_grad():
            want = wrapped(ids).numpy()
        lap("build", "import")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graph = import_torch(wrapped, (ids,))
        if not any(isinstance(d, str) for d in graph.inputs[0].shape):
            fell_back = [_FELL_BACK.search(str(w.message)) for w in caught]  # import-time fallbacks (new rows)
            why = next((m.group(1) for m in fell_back if m), "")
            result.note = f"static sequence length: {clean_message(why)}" if why else ""
        lap("import", "interpret")
        assert_close(evaluate(graph, [ids.numpy()])[0], want, "the IR interpreter")
        run = run_pipeline(graph, pipeline_for("auto"))
        stats = run.stats.get("detect-gated-mlp", {})
        result.gated = stats.get("gated-mlp", 0)
        result.patterns = {k: v for k, v in stats.items() if k not in ("gated-mlp", "biased", "moe-expert")}
        result.patterns.update({f"{k} exact": v for k, v in run.stats.get("sparsify-exact", {}).items()
                                if k.endswith("-mlp")})  # non-gated ReLU-family MLPs made exactly sparse
        gates = sorted({n["gate"] for n in run.notes if n.get("pattern") == "unmatched-gate"})
        if gates:  # what the detector lacks, spelled out
            missing = f"gate not a table activation: {'; '.join(gates)}"
            result.note = f"{missing}; {result.note}" if result.note else missing
        lap("interpret", "compile")
        if compile:
            import actsparse

            result.compiled = False
            cm = actsparse.compile(graph, (ids.numpy(),), mode="auto")
            assert_close(np.asarray(cm(ids.numpy())), want, "the TVM build")
            result.compiled = True
            lap("compile", "ok")
        else:
            result.stage = "ok"
    except Exception as err:  # noqa: BLE001 - the reason is the product here
        result.reason = f"{LIMITS[arch]} ({_reason(err)})" if arch in LIMITS else _reason(err)
    return result


def assert_close(got, want, what: str) -> None:
    err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-12))
    if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))):
        raise AssertionError(f"{what} differs from torch (max error {err:.2e} of the largest logit)")


_PATH = re.compile(r"(?:/[\w.@+-]+)+/([\w.-]+\.py)")


_FELL_BACK = re.compile(r"importing with a symbolic sequence length failed \((.*)\); importing with the example's "
                        r"static", re.S)
_EVAL = re.compile(r"<eval_with_key>\.\d+(?::\d+)?")


def _reason(err: Exception) -> str:
    """The first line of the error, site-packages paths cut to the file name (rows must not depend on the
    machine)."""
    return f"{type(err).__name__}: {clean_message(str(err))}"


def clean_message(message: str, limit: int | None = 240) -> str:
    text = message.strip().splitlines()
    return _EVAL.sub("<generated>", _PATH.sub(r"\1", text[0] if text else ""))[:limit]


# --- the README table --------------------------------------------------------------------------------------
START, END = "<!-- arch-table:start -->", "<!-- arch-table:end -->"
HEADER = ("| architecture | imports | gated MLPs | patterns | TVM auto build | reason it stops |\n"
          "|---|---|---|---|---|---|")


def readme_path() -> Path:
    return Path(__file__).resolve().parent.parent / "README.md"


def table_rows(readme: str, start: str = START, end: str = END) -> dict[str, str]:
    """arch -> row of the generated table between `start` and `end` in README text (empty if there is none)."""
    if start not in readme:
        return {}
    body = readme.split(start, 1)[1].split(end, 1)[0]
    return {line.split("|")[1].strip(): line for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| architecture") and "---" not in line}


def replace_marked(path: Path, text: str, table: str, start: str, end: str, heading: str) -> None:
    """`text` (the README's) with the section between `start` and `end` replaced by `table` (or `table` appended
    under `heading`), written to `path` atomically."""
    if start in text:
        before, rest = text.split(start, 1)
        text = before + table + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + table + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_table(results: list[ArchResult], path: Path) -> None:
    """Replace (or append) the generated table; rows of architectures not in `results` are kept."""
    text = path.read_text()
    rows = {**table_rows(text), **{r.arch: r.row() for r in results}}
    ok = sum(row.split("|")[2].strip() == "yes" for row in rows.values())
    built = sum(row.split("|")[5].strip() == "yes" for row in rows.values())
    table = "\n".join([START, f"{ok} of {len(rows)} causal-LM architectures of transformers import and match torch; "
                        f"{built} also built with TVM in auto mode and matched. Generated by "
                        "`python -m actsparse.scripts.arch_table --write`.", "", HEADER,
                        *(rows[a] for a in sorted(rows)), END])
    replace_marked(path, text, table, START, END, "Architectures (generated)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Try every causal-LM architecture of transformers (tiny configs) "
                                     "through import, the interpreter and a TVM build; print or write the table.")
    parser.add_argument("archs", nargs="*", help="architectures (default: all of transformers' causal-LM mapping)")
    parser.add_argument("--no-compile", action="store_true", help="skip the TVM build")
    parser.add_argument("--write", action="store_true", help="update the table in README.md")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results = []
    for arch in tqdm(args.archs or causal_lm_architectures(), unit="arch"):
        results.append(check_architecture(arch, compile=not args.no_compile))
        tqdm.write(f"{results[-1].row()}  {results[-1].seconds}")
        if args.write:  # after each one: a long run interrupted keeps what it found
            write_table(results[-1:], readme_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
