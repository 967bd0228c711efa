"""The embedded tiny model as a transformers causal LM, so it decodes through the same path as any real model.

    hf = as_transformers(load_tiny("drelu"))       # LlamaForCausalLM, same weights (shared, not copied)
    lm = actsparse.compile(hf, mode="exact", max_seq=256)

`TinyLlama` is Llama's architecture (RMSNorm, rotary positions in the half-split layout, multi-head attention,
untied head), so the conversion is data: a config mapping and the weight names with the `model.` prefix that
transformers uses. Its MLP may be dReLU (relu on the up projection too), which Llama's MLP does not spell; those
layers become relufy's `ReluGatedMLP` holding the same Linears. The KV-cached decoding graph is then derived by
the compiler (`frontends/kv_cache.py`), as for any transformers model: nothing here is written per step.
"""

from __future__ import annotations

from torch import nn

from .tiny import TinyLlama

GATED_KIND = {"drelu": "drelu", "relu": "relu"}  # TinyConfig.mlp_act -> ReluGatedMLP kind (swiglu: Llama's own)


def as_transformers(model: TinyLlama) -> nn.Module:
    """A `LlamaForCausalLM` computing what `model` computes, sharing its parameters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..relufication import ReluGatedMLP

    c = model.config
    config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.n_ff,
                         num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads,
                         max_position_embeddings=c.max_seq, rope_theta=c.rope_theta, rms_norm_eps=c.rms_eps,
                         hidden_act="silu", tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                         pad_token_id=0, attention_bias=False, mlp_bias=False)
    hf = LlamaForCausalLM(config).eval()
    state = {("" if name.startswith("lm_head.") else "model.") + name: tensor
             for name, tensor in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if unexpected or [m for m in missing if not m.endswith("rotary_emb.inv_freq")]:
        raise ValueError(f"internal: weight names differ (missing {missing}, unexpected {unexpected})")
    if c.mlp_act in GATED_KIND:
        for layer in hf.model.layers:
            mlp = layer.mlp
            layer.mlp = ReluGatedMLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj, kind=GATED_KIND[c.mlp_act])
    return hf
