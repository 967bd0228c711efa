"""Decoding architectures whose forward fights the KV-cache export, each found by a sweep of transformers' causal
LMs (tiny configs of scripts/arch_table.py): OPT derives positions from the attention mask (exported with an
all-ones mask over the filled slots), BLOOM computes a length for a branch it does not take (dead code dropped
before import), DeepSeek-V3's MLA attention uses ops the table lacks (torch's decompositions, as the full-sequence
import does), DiffLlama's attention reads the cache's filled prefix for K but a tensor computed from it for V
(fuse-attention then reads neither in place), BART-style decoders size their cache by the encoder's layer count
too (layers nothing writes are left out), RoBERTa-style LM heads keep no cache (each call runs the whole sequence,
positions given as transformers' generate gives them), Mamba keeps a convolution window and an SSM state per layer
(inputs and outputs beside K and V; one token per call), Falcon-H1 both in one layer, Zamba2 a hybrid whose tiny
config keeps an attention layer (scripts/tiny_config.py), DeepSeek-V3.2 its sparse-attention indexer's keys as a
third per-position cache, gpt-oss attention sinks (scores of kv+1 columns: an affine dim, ir/dims.py), DeepSeek-V4
compressor buffers (decoded by recomputation from the least length its graph holds for), RWKV its recurrent state
as a forward keyword and MiniMax its lightning attention's state in a list of its own Cache subclass
(frontends/model_states.py: states outside transformers' cache layers, one token per call), MVP and TrOCR learned
positions counted from the cache's length as a size (arange(kv-seq, kv): an arange with a symbolic start), XLM
predicts at a mask token its own generation inputs append (and slices those seq+1 ids by -(seq+1)), GIT and Gemma 4
(unified) pad their mask's block ids by kv - seq (a pad of a symbolic amount: a full of that affine size), xLSTM
keeps its states in a cache object of its own, not a transformers Cache (every tensor it holds carried, its int64
position counter too: model_states.py's `cache_field`), RecurrentGemma its recurrent layers' states on their
modules (found there too when a `generate` before the compile left states of its own) while transformers 5.25 asks
cache layer 0, one of those, for the mask's query offset (cache_layers.py's empty layer answers for the call's
position). Greedy decoding equals transformers' `generate` token for token."""

import numpy as np
import pytest
import torch

import actsparse

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


@pytest.mark.slow  # tiny models of hybrids: a minute or two each (Falcon-H1's export)
# Zamba2 (Mamba-2 states beside K/V) decodes as transformers in test_decode_prefill.py, through its prefill and an
# artifact: the same compile, not built twice
@pytest.mark.parametrize("arch, mode", [("opt", "exact"), ("bloom", "dense"), ("deepseek_v3", "dense"),
                                        ("diffllama", "dense"), ("bart", "dense"), ("camembert", "dense"),
                                        ("mamba", "dense"), ("falcon_h1", "dense"),
                                        ("deepseek_v32", "dense"), ("gpt_oss", "dense"), ("rwkv", "dense"),
                                        ("minimax", "dense"), ("mvp", "dense"), ("trocr", "dense"),
                                        ("xlm", "dense"), ("git", "dense"), ("gemma4_unified", "dense"),
                                        ("xlstm", "dense"), ("xlnet", "dense"), ("recurrent_gemma", "dense")])
def test_greedy_decoding_equals_transformers(arch, mode):
    from actsparse.scripts.arch_table import build_tiny, example_ids

    model = build_tiny(arch)
    ids = example_ids(model)
    # plain greedy, as scripts/decode_table.py: BART's default config bans repeated 3-grams and forces an EOS
    model.generation_config = transformers.GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                                            pad_token_id=getattr(model.config, "pad_token_id", None))
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids))
    lm = actsparse.compile(model, mode=mode, max_seq=16)
    if mode == "exact":  # OPT's fc1 -> relu -> fc2 made exactly sparse
        assert sum(lm.report.pass_stats.get("sparsify-exact", {}).values()) >= 1
    assert lm.recomputes == (arch in ("camembert", "xlm", "xlnet"))  # no cache: the whole sequence per call
    assert lm.decoding == ("recompute" if lm.recomputes else "kv-cache")
    # said where the report is read: why it recomputes; and, for a hybrid with a whole-prompt prefill, from which
    # piece length prefill was measured faster (runtime/prefill_rule.py)
    prefill_notes = [n for n in lm.report.notes if n.startswith("prompt pieces go through prefill ")]
    assert len(prefill_notes) == (1 if lm.spec.prefill_tokens else 0)
    assert [n for n in lm.report.notes if n not in prefill_notes] == ([lm.decoding_note] if lm.recomputes else [])
    kinds = {name[0] for name, _ in lm.spec.caches}
    assert kinds == {"mamba": {"c", "r"}, "falcon_h1": {"k", "v", "c", "r"},
                     "deepseek_v32": {"k", "v", "i"}, "camembert": set(), "xlm": set(), "rwkv": {"s"},
                     "minimax": {"k", "v", "l"}, "xlstm": {"o"}, "xlnet": set(),
                     "recurrent_gemma": {"k", "v", "m"}}.get(arch, {"k", "v"})
    assert torch.equal(lm.generate(ids, 6), expected)


def test_recurrent_cache_layers_report_the_calls_position_as_their_length():
    """transformers 5.25 gives linear-attention cache layers a token count of their own (advanced in place by
    `increase_count` beside the in-place convolution update), which its masks read as the query offset and which a
    hybrid layer's MRO puts ahead of the attention half's (Falcon-H1 then decoded `53, 53, 53...`). Our layers,
    whose tensors are graph inputs, report the call's position however either transformers counts."""
    from actsparse.frontends.cache_layers import layer_classes

    _, state_layer, hybrid_layer, _, cache_class = layer_classes()
    pos, kv = torch.tensor(5), torch.zeros(1, 1, 8, 2)
    conv, recurrent = {0: torch.zeros(1, 3, 4)}, {0: torch.zeros(1, 2, 2)}
    cache = cache_class([state_layer(conv, recurrent, pos), hybrid_layer(kv, kv.clone(), pos, 6, conv, recurrent)])
    for i, layer in enumerate(cache.layers):
        getattr(cache, "increase_count", lambda *_: None)(i, 0)  # 5.25's Mamba-2 one-token convolution calls it
        assert int(layer.get_seq_length()) == 5
    assert int(cache.get_seq_length()) == int(cache.get_query_offset(1)) == 5


def test_a_model_exported_for_one_token_per_call_still_prefills_decodes_and_calibrates(monkeypatch):
    """The last export variant (seq fixed to 1, for forwards such as Llama 4's chunked attention that compute sizes
    from the token count) on a tiny Llama: the runtime feeds the prompt token by token and greedy decoding still
    equals transformers. Calibration prompts go through it token by token too (ir/decoding.TokenSteps, each call
    given the caches the last returned), so threshold mode calibrates the same thresholds as on the graph that takes
    the whole prompt per call."""
    from actsparse.frontends import decoder_export

    whole_prompt = decoder_export.EXPORT_VARIANTS
    model, ids, lm = _llama_decoding_as_transformers(monkeypatch, {"one_token": True})
    assert lm.module.inputs[0][1].shape == (1, 1)
    from actsparse.scripts.arch_table import example_ids

    calibration = [example_ids(model, 14) for _ in range(4)]
    built = {}
    for name, variants in (("token by token", decoder_export.EXPORT_VARIANTS), ("whole prompt", whole_prompt)):
        monkeypatch.setattr(decoder_export, "EXPORT_VARIANTS", variants)
        built[name] = actsparse.compile(model, mode="threshold", sparsity=0.4, max_seq=16, calibration=calibration)
    one, whole = built["token by token"], built["whole prompt"]
    assert one.module.inputs[0][1].shape == (1, 1) and whole.module.inputs[0][1].shape[1] != 1
    assert set(one.module.graph.weights) == set(whole.module.graph.weights)
    for name, array in whole.module.graph.weights.items():
        np.testing.assert_allclose(np.asarray(one.module.graph.weights[name], np.float32),
                                   np.asarray(array, np.float32), rtol=1e-4, atol=1e-6, err_msg=name)
    thresholds = [[n.attrs["threshold"] for n in m.module.graph.nodes if n.op == "sparse_gated_mlp"]
                  for m in (one, whole)]
    assert len(thresholds[0]) == model.config.num_hidden_layers
    np.testing.assert_allclose(*thresholds, rtol=1e-4)
    assert torch.equal(one.generate(ids, 5), whole.generate(ids, 5))


@pytest.mark.slow
def test_a_cache_holding_an_unknown_per_position_tensor_decodes_by_recomputation(monkeypatch):
    """DeepSeek-V3.2 caches its sparse-attention indexer's keys beside K and V (cache_layers.POSITION_CACHES); a
    cache tensor that table does not know is refused before the export, and the model is then decoded without its
    cache, on the whole sequence each step (decoder_export._recompute_instead): still token for token as
    transformers' greedy generate."""
    from actsparse.frontends import kv_cache
    from actsparse.scripts.decode_table import check_decoding

    monkeypatch.setattr(kv_cache, "POSITION_CACHES", {})
    row = check_decoding("deepseek_v32")
    assert row["decodes"] == "yes", row["reason"]
    assert row["export"].startswith("whole sequence per call"), row["export"]


@pytest.mark.slow
def test_a_cache_layer_with_buffers_of_its_own_decodes_by_recomputation_from_its_least_length():
    """DeepSeek-V4's cache layers keep compressor buffers (per-entry dicts of tensors that grow by a compressed
    entry every few tokens): neither K/V slots nor a fixed-size state, refused by name before the export. It decodes
    by recomputation instead: its compressors branch on the count of compressed entries, so its export at a short
    example holds for that length only and it is exported again on a longer one, whose graph holds from a least
    length on (the input's `least`, ir/limits.py). Greedy decoding equals transformers'; a shorter prompt is one
    clear error."""
    from actsparse.errors import DecodeInputError
    from actsparse.frontends.decoder_export import CACHE_REFUSED
    from actsparse.scripts.arch_table import build_tiny, example_ids

    model = build_tiny("deepseek_v4")
    ids = example_ids(model)
    lm = actsparse.compile(model, mode="dense", max_seq=16)  # with the model's own generation config (its EOS)
    model.generation_config = transformers.GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0,
                                                            eos_token_id=list(lm.spec.eos_token_ids))
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids))
    assert lm.recomputes and lm.spec.recomputes_because.startswith(CACHE_REFUSED)
    assert "buffer_gate, buffer_kv, compressed_kv" in lm.spec.recomputes_because
    least = lm.module.limits.dim_least["seq"]
    assert 2 < least <= ids.shape[1]
    assert torch.equal(lm.generate(ids, 6), expected)
    with pytest.raises(DecodeInputError, match=f"a prompt of {least - 1} tokens is shorter than the {least}"):
        lm.generate(ids[:, :least - 1], 2)


def test_a_model_of_several_codebooks_is_one_clear_error():
    """MusicGen embeds one table per audio codebook (ids [batch × codebooks, seq], a token per codebook each step):
    not the one token stream a decoder's generate keeps, said before any export."""
    from actsparse.errors import ActsparseError
    from actsparse.scripts.arch_table import build_tiny

    model = build_tiny("musicgen")
    codebooks = model.config.num_codebooks
    with pytest.raises(ActsparseError, match=rf"embeds {codebooks} codebooks.*one token stream"):
        actsparse.compile(model, max_seq=16)


def test_a_model_exported_with_the_cache_length_as_a_size_still_decodes(monkeypatch):
    """The `seen_from_shapes` export variant (for forwards such as MPT's that slice a bias table by the cache's
    length: get_seq_length reports kv - seq, a size, instead of the `pos` value) on a tiny Llama: greedy decoding
    still equals transformers, prompts fed whole."""
    _, _, lm = _llama_decoding_as_transformers(monkeypatch, {"seen_from_shapes": True})
    assert lm.module.inputs[0][1].shape == (1, "seq")


def _llama_decoding_as_transformers(monkeypatch, variant: dict):
    """A tiny Llama compiled with only the export variant `variant`; asserts its greedy decoding equals
    transformers' and returns (model, prompt ids, decoder)."""
    from actsparse.frontends import decoder_export
    from actsparse.scripts.arch_table import build_tiny, example_ids

    monkeypatch.setattr(decoder_export, "EXPORT_VARIANTS", (variant,))
    model = build_tiny("llama")
    ids = example_ids(model)
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                                  do_sample=False)
    lm = actsparse.compile(model, mode="dense", max_seq=16)
    assert torch.equal(lm.generate(ids, 5), expected)
    return model, ids, lm


def test_a_model_whose_cache_exports_in_no_variant_decodes_by_recomputation_and_says_so(monkeypatch, tmp_path,
                                                                                         capsys):
    """A cached forward that no export variant takes (ProphetNet's takes one token at a position `int()` fixes)
    falls back to the uncached forward on the whole sequence each step, where that exports at a dynamic length: on
    a tiny Llama with every cached export failing, greedy decoding still equals transformers'. The fallback is said
    out loud: `lm.decoding`, a report note with the refusing error and the cost, kept by the artifact, and printed
    once by `actsparse generate`."""
    from actsparse.cli import main
    from actsparse.frontends import decoder_export
    from actsparse.frontends.errors import FrontendError

    from .test_decode_sources import char_tokenizer

    def no_cached_export(*args, **kwargs):
        raise FrontendError("torch.export could not export it with a KV cache (this test's stand-in). Hints: none")

    monkeypatch.setattr(decoder_export, "_export", no_cached_export)
    _, _, lm = _llama_decoding_as_transformers(monkeypatch, {})
    assert lm.recomputes and not lm.spec.caches and lm.decoding == "recompute"
    assert "exports in no variant" in lm.decoding_note and "(this test's stand-in)" in lm.decoding_note
    assert "Hints" not in lm.decoding_note and "whole sequence" in lm.decoding_note
    assert lm.report.notes == [lm.decoding_note] and "note: decoding recomputes" in str(lm.report)
    lm.tokenizer = char_tokenizer()
    lm.save(tmp_path / "recomputes")
    loaded = actsparse.load(tmp_path / "recomputes")
    assert loaded.decoding == "recompute" and loaded.decoding_note == lm.decoding_note
    assert loaded.report.notes == lm.report.notes
    assert main(["generate", str(tmp_path / "recomputes"), "--prompt", "abc", "-n", "3"]) == 0
    assert capsys.readouterr().out.count("decoding recomputes") == 1
