"""Decoding with a KV cache, derived from each architecture's own forward: greedy `generate` equals transformers'
`generate(do_sample=False)` token for token, in dense and exact mode, on tiny random configs of every decoder
family the frontends import (grouped-query attention, rotary variants, soft-capping, sliding windows, MoE)."""

import re

import numpy as np
import pytest
import torch

import actsparse
from actsparse.errors import ActsparseError, DecodeInputError
from actsparse.frontends.decoder_export import import_decoder
from actsparse.ir import evaluate

from .helpers import vm_calls

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)
SMALL = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
             vocab_size=128, max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=None,
             initializer_range=0.1)  # sharper logits than the default 0.02: no near-ties for greedy to split
# relu activations: the MLPs are ReLU-family, so exact mode applies; windows of 4 < the 16 positions decoded;
# one layer each (compile time) but Gemma2's two, whose layers alternate sliding and global attention
ARCHS = {
    "llama": ("Llama", dict(hidden_act="relu")),
    "mistral-window": ("Mistral", dict(hidden_act="relu", sliding_window=4)),
    "qwen2": ("Qwen2", dict(hidden_act="relu")),
    "gemma2-window-softcap": ("Gemma2", dict(hidden_activation="relu", sliding_window=4, head_dim=16,
                                             num_hidden_layers=2)),
    "phi3-fused": ("Phi3", dict(hidden_act="relu")),
    "mixtral": ("Mixtral", dict(hidden_act="relu", num_local_experts=4, num_experts_per_tok=2)),
    "qwen2-moe": ("Qwen2Moe", dict(hidden_act="relu", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                   shared_expert_intermediate_size=48)),
}
PROMPT = torch.tensor([[5, 6, 7, 9, 11, 3]])
NEW = 10
MAX_SEQ = 24


def hf_model(arch: str, **overrides):
    name, arch_overrides = ARCHS[arch]
    config = getattr(transformers, f"{name}Config")(**{**SMALL, **arch_overrides, **overrides})
    torch.manual_seed(0)
    return getattr(transformers, f"{name}ForCausalLM")(config).eval()


def reference(model, prompt=PROMPT, new=NEW):
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=new, do_sample=False)


MOE = {"mixtral": 4, "qwen2-moe": 4}  # experts per layer


@pytest.fixture(scope="module")
def compiled():
    """(arch, mode) -> (transformers model, its decoder), each compiled once per module (the llama fixture below
    reuses the exact one)."""
    cache = {}

    def get(arch: str, mode: str):
        if (arch, mode) not in cache:
            model = hf_model(arch)
            cache[arch, mode] = model, actsparse.compile(model, mode=mode, max_seq=MAX_SEQ)
        return cache[arch, mode]
    return get


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_generate_equals_transformers_in_dense_and_exact_mode(arch, compiled):
    expected = reference(hf_model(arch))
    for mode in ("dense", "exact"):
        model, lm = compiled(arch, mode)
        assert {b.mode for b in lm.report.blocks if b.pattern != "mlp"} == {mode}
        _check_attention_fused(lm, model.config.num_hidden_layers)
        got = lm.generate(PROMPT, NEW)
        assert torch.equal(got, expected), f"{arch} {mode}: {got.tolist()} != {expected.tolist()}"
        if arch in MOE:
            _check_routed(lm, model, MOE[arch], mode)


def _check_attention_fused(lm, layers: int):
    """Each layer's attention is one `attention` op (fuse-attention: one kernel, KV heads indexed, not repeated)."""
    assert lm.report.pass_stats["fuse-attention"] == {"attention": layers}
    graph = lm.module.graph
    assert sum(n.op == "attention" for n in graph.nodes) == layers
    assert not [n for n in graph.nodes if n.op == "expand"]


def _check_routed(lm, model, experts: int, mode: str):
    """The MoE layer runs routed in prefill and step (one compiled graph): the routed op replaced every weighted
    expert, and the prompt's logits (prefill: several tokens through the gather) equal torch's."""
    graph = lm.module.graph
    assert lm.report.pass_stats["route-moe"] == {"routed-moe": 1, "routed-experts": experts}
    assert [(n.attrs["experts"], n.attrs["mode"]) for n in graph.nodes if n.op == "routed_moe"] == [(experts, mode)]
    assert not [n for n in graph.nodes if n.op in ("gated_mlp", "sparse_gated_mlp") and n.attrs.get("expert", -1) >= 0]
    assert sorted(b.expert for b in lm.report.blocks if b.expert is not None) == list(range(experts))
    with torch.no_grad():
        expected = model(PROMPT).logits[0, -1].numpy()
    np.testing.assert_allclose(lm.prefill(PROMPT).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["mistral-window", "gemma2-window-softcap"])
def test_the_sliding_window_changes_the_tokens_it_is_tested_on(arch):
    """Without this, matching transformers would not show that the window is applied."""
    assert not torch.equal(reference(hf_model(arch)), reference(hf_model(arch, sliding_window=64)))


@pytest.fixture(scope="module")
def llama(compiled):
    return compiled("llama", "exact")


def test_prefill_and_step_give_transformers_logits_and_write_the_cache_in_place(llama):
    model, lm = llama
    state = lm.prefill(PROMPT)
    cache = state.caches[0]  # the tensor the runtime allocated; every step must write into it
    ids = PROMPT[0].tolist()
    for _ in range(3):
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0, -1].numpy()
        np.testing.assert_allclose(state.logits, expected, rtol=1e-4, atol=1e-5)
        ids.append(int(np.argmax(state.logits)))
        logits, state = lm.step(ids[-1], state)
        np.testing.assert_array_equal(logits, state.logits)
    assert state.position == len(ids)
    keys = cache.numpy()
    assert np.abs(keys).sum(axis=(0, 1, 3))[: len(ids)].all()  # every position fed is in the first buffer
    assert not keys[:, :, len(ids):].any()  # slots after the last position are never written
    np.testing.assert_array_equal(keys, state.caches[0].numpy())
    # the compiled step reads only the filled slots: NaN in the others changes nothing
    before = lm.step(ids[-1], lm.prefill(torch.tensor([ids[:-1]])))[0]
    state = lm.prefill(torch.tensor([ids[:-1]]))
    for c in state.caches:
        poisoned = c.numpy()
        poisoned[:, :, len(ids):] = np.nan
        c.copyfrom(poisoned)
    np.testing.assert_array_equal(lm.step(ids[-1], state)[0], before)


def test_the_decoder_checks_a_state_s_caches_the_vm_does_not(llama):
    """The VM checks only a call's own inputs (ir/decoding.checked_inputs: the caches are past `num_input`, two VM
    calls each a step saved); the decoder checks a state's caches once per set of tensors, so a wrong count, shape or
    dtype is one clear error, never a read out of bounds. Caches written in place stay the state's own tensors;
    numpy caches of the right types are moved to the device and decode as the original."""
    from actsparse.ir.decoding import CALL_INPUTS
    from actsparse.runtime.decode_state import DecodeState

    _, lm = llama
    state = lm.prefill(PROMPT)
    checks = []

    def instrument(func, symbol, before_run, *rest):
        if before_run and symbol == "vm.builtin.check_tensor_info":
            checks.append(symbol)
        return 0  # run the call as usual

    lm.module._vm.set_instrument(instrument)
    try:
        kept = list(state.caches)
        _, state = lm.step(7, state)
    finally:
        lm.module._vm.set_instrument(None)
    assert 0 < len(checks) <= len(CALL_INPUTS), checks
    assert all(a is b for a, b in zip(state.caches, kept))   # written in place: no new handles
    copy = DecodeState([c.numpy() for c in state.caches], state.position, tokens=list(state.tokens))
    np.testing.assert_array_equal(lm.step(3, copy)[0], lm.step(3, state)[0])
    caches = [c.numpy() for c in state.caches]
    wrong = [(caches[1:], "state has"), ([np.zeros((1, 1, 2, 2), np.float32), *caches[1:]], r"caches\[0\] \(k0\)"),
             ([caches[0].astype(np.float64), *caches[1:]], "float32 tensor of shape")]
    for given, message in wrong:
        with pytest.raises(DecodeInputError, match=message):
            lm.step(3, DecodeState(given, state.position))


def test_only_a_decoding_graph_leaves_inputs_to_the_runtime_to_check():
    from actsparse.ir.decoding import checked_inputs

    assert checked_inputs(["input_ids", "pos", "filled", "k0", "v0"]) == 3
    assert checked_inputs(["input_ids", "pos", "c0_0", "r0_0"]) == 2      # a recurrent hybrid without `filled`
    assert checked_inputs(["input_ids", "pos", "filled"]) == 3            # nothing after them
    assert checked_inputs(["input_ids", "attention_mask"]) == 2           # any other graph: every input
    assert checked_inputs(["input_ids"]) == 1 and checked_inputs(["x", "pos", "k0"]) == 3


def test_a_step_runs_the_one_token_function_with_the_small_ops_fused(llama):
    """codegen/build.py: the decoder's module has `step` (main with seq = 1: static shapes) and fuses the small
    legalized ops; a step through it gives main's logits and makes fewer VM calls (shape builtins) than main."""
    _, lm = llama
    assert lm.module.has_function("step") and not lm.module.has_function("no_such_function")

    def one_token(function: str):
        state = lm.prefill(PROMPT)
        out, calls = vm_calls(lm.module, lambda: lm.module.run_device(
            np.array([[7]]), np.array([PROMPT.shape[1]]), np.zeros(PROMPT.shape[1] + 1), *state.caches,
            function=function))
        return out[0].numpy(), calls

    main_logits, main_calls = one_token("main")
    step_logits, step_calls = one_token("step")
    np.testing.assert_allclose(step_logits, main_logits, rtol=1e-5, atol=1e-6)
    assert len(step_calls) < len(main_calls)
    assert sum(s == "vm.builtin.make_shape" for s in step_calls) < sum(s == "vm.builtin.make_shape" for s in main_calls)
    assert any(s.startswith("fused_") for s in step_calls)  # FuseOps fired
    assert any(s.startswith("actsparse_attention") for s in step_calls)  # ... and left our kernels whole
    # q / k / v read one x: one sibling-linears call (codegen/lower_siblings.py), not three linear kernels
    assert sum(s.startswith("actsparse_linears_k64_n64_32_32") for s in step_calls) == 1, step_calls
    assert not any(s.startswith("actsparse_linear_k64_n32") for s in step_calls), step_calls
    # the o projection adds the residual as it stores it (codegen/lower_kernels.py `residual_add`): no add call
    assert sum(s.startswith("actsparse_linear_k64_n64_nobias_residual2") for s in step_calls) == 1, step_calls
    from actsparse.codegen.kernels.norm_prologue import prologue_suffix

    # each layer's RMSNorms computed by the kernels that read them (codegen/kernel_input.py): q / k / v and the MLP;
    # the final one stays a call (the LM head reads the last position of its output)
    assert sum(s.endswith(prologue_suffix(1e-6, 2, True)) for s in step_calls) == 2, step_calls
    assert sum(s.startswith("fused_mean_square") for s in step_calls) == 1, step_calls
    assert not any(re.fullmatch(r"multiply\d*", s) for s in step_calls), step_calls


@pytest.fixture(scope="module")
def two_layer_graph():
    return import_decoder(hf_model("llama", num_hidden_layers=2), MAX_SEQ)


def test_decoding_graph_keeps_the_cache_as_inputs_and_writes_it_with_index_copy(two_layer_graph):
    graph, caches, recomputes_because = two_layer_graph
    assert recomputes_because == ""  # the cache is used
    assert [n.attrs["name"] for n in graph.inputs] == ["input_ids", "pos", "filled", "k0", "v0", "k1", "v1"]
    assert [str(n.type) for n in graph.inputs[:4]] == ["i64[1,seq]", "i64[1]", "i64[kv]", "f32[1,2,24,16]"]
    assert graph.count("index_copy") == 4 and len(graph.outputs) == 5
    zeros = [np.zeros(c.shape, np.float32) for c in caches]
    logits, k0, *_ = evaluate(graph, [PROMPT.numpy(), np.array([0]), np.zeros(6, np.int64), *zeros])
    assert logits.shape == (1, 1, 128)
    assert k0[:, :, :6].any() and not k0[:, :, 6:].any()


def test_attention_reads_only_the_filled_slots_of_the_cache(two_layer_graph):
    """Each written cache is sliced to its first `kv` slots before attention reads it, and nothing but the cache
    inputs and their in-place writes has a max_seq-sized dim: a step's attention costs kv, not max_seq."""
    graph, caches, _ = two_layer_graph
    sliced = [n for n in graph.nodes if n.op == "slice" and n.inputs[0].op == "index_copy"]
    assert len(sliced) == 4 and {(n.attrs["end"], n.shape[2]) for n in sliced} == {("kv", "kv")}
    assert {n.op for n in graph.nodes if MAX_SEQ in n.shape} == {"input", "index_copy"}
    # a step at position 6 over a cache whose unfilled slots hold NaN: finite logits, the same as over zeros
    # (masking every slot instead would multiply the NaN values by a zero weight: NaN)
    inputs = [np.array([[4]]), np.array([6]), np.zeros(7, np.int64)]
    rng = np.random.default_rng(0)
    prefix = [rng.standard_normal(c.shape).astype(np.float32) for c in caches]
    for c in prefix:
        c[:, :, 6:] = 0
    junk = [c.copy() for c in prefix]
    for c in junk:
        c[:, :, 7:] = np.nan
    expected = evaluate(graph, [*inputs, *prefix])[0]
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(evaluate(graph, [*inputs, *junk])[0], expected)


def test_decoder_inputs_it_cannot_take_are_clear_errors(llama):
    _, lm = llama
    with pytest.raises(DecodeInputError, match="max_seq"):
        lm.generate(torch.arange(MAX_SEQ + 1).reshape(1, -1), 1)
    with pytest.raises(DecodeInputError, match="max_seq"):
        lm.generate(PROMPT, MAX_SEQ - 4)  # 6 + 20 - 1 > 24 positions
    with pytest.raises(DecodeInputError, match="outside the vocabulary"):
        lm.generate(torch.tensor([[1, 128]]), 1)
    with pytest.raises(DecodeInputError, match="outside the vocabulary"):
        lm.prefill(np.array([[-1]]))
    with pytest.raises(DecodeInputError, match=r"shape \[1, n\]"):
        lm.prefill(np.zeros((2, 3), np.int64))
    state = lm.prefill(torch.arange(MAX_SEQ - 1).reshape(1, -1))
    _, state = lm.step(1, state)
    with pytest.raises(DecodeInputError, match="max_seq"):
        lm.step(2, state)
    with pytest.raises(ActsparseError, match="max_seq applies to decoders"):
        actsparse.compile(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), max_seq=8)
    with pytest.raises(ActsparseError, match=f"calibration sample has {MAX_SEQ + 1} tokens"):   # not an IndexError
        actsparse.compile(llama[0], mode="threshold", sparsity=0.5, max_seq=MAX_SEQ,
                          calibration=[torch.arange(MAX_SEQ + 1).reshape(1, -1)])


def test_a_square_lowers_to_one_multiply_not_libm_pow():
    """RMSNorm's x ** 2 runs in every layer of every step: one multiply, not a libm pow call per element."""
    from actsparse import targets
    from actsparse.codegen.lower import lower_graph
    from actsparse.ir import Graph, Node, TensorType

    x = Node("input", (), {"name": "x"}, TensorType((4,), "f32"))
    squared = Node("pow", (x, Node("constant", (), {"value": 2.0}, TensorType((), "f32"))), {}, TensorType((4,), "f32"))
    cubed = Node("pow", (x, Node("constant", (), {"value": 3.0}, TensorType((), "f32"))), {}, TensorType((4,), "f32"))
    text = lower_graph(Graph((x,), (squared, cubed), {}), targets.get("x86"))[0].script()
    assert text.count("R.multiply(x, x)") == 1 and text.count("R.power(") == 1
