"""Embedding tables stored like the weights (passes/quantize.py): the lookup of a table in every storage kind equals
a float64 reference of the dequantized table, a tied table is ONE blob read by the lookup and the output projection,
the interpreter dequantizes only the rows it looks up, and a tied tiny Llama decodes on it like its reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actsparse
from actsparse.errors import ActsparseError
from actsparse.ir import evaluate, parse_graph, print_graph, verify
from actsparse.ir.quant import LAYOUTS, dequantize, quantize
from actsparse.passes import run_pipeline
from actsparse.passes.quantize import Quantize

from .test_gguf_quant import float_dot_target

VOCAB, D = 53, 45   # neither a multiple of the 32-column group

TABLE_GRAPH = f"""graph @main(%ids: i64[1,seq]) {{
  @embed.weight : f32[{VOCAB},{D}]
  %0 = embedding(@embed.weight, %ids) : f32[1,seq,{D}]
  return %0
}}"""

TIED_GRAPH = f"""graph @main(%ids: i64[1,seq]) {{
  @embed.weight : f32[{VOCAB},{D}]
  %0 = embedding(@embed.weight, %ids) : f32[1,seq,{D}]
  %1 = linear(%0, @embed.weight) : f32[1,seq,{VOCAB}]
  return %1
}}"""


def table_graph(text=TABLE_GRAPH):
    table = np.random.default_rng(0).standard_normal((VOCAB, D)).astype(np.float32)
    return parse_graph(text, {"embed.weight": table})


# storage -> (quantize=, prequantized= for the table): every layout of ir.quant and fp16
STORAGE = {"fp16": ("fp16", None), "q8_0": ("int8", None), "q4_0": ("int4", "q4_0"), "q4_1": ("int4", "q4_1")}
assert set(STORAGE) - {"fp16"} == set(LAYOUTS), "a new layout needs its STORAGE entry here"


def stored_table(graph, storage: str):
    kind, pre = STORAGE[storage]
    prequantized = {"embed.weight": quantize(graph.weights["embed.weight"], pre)} if pre else None
    return kind, prequantized


def reference_rows(graph, ids):
    """float64 rows of the table as the compiled graph stores it (dequantized), at ids."""
    (table,) = [n for n in graph.nodes if n.op == "weight"]
    blob = graph.weights[table.attrs["name"]]
    layout = table.attrs.get("layout", "dense")
    values = blob if layout == "dense" else dequantize(blob, layout, table.shape[1])
    return values.astype(np.float64)[ids]


@pytest.fixture(scope="module")
def compiled_tables():
    out = {}
    for storage in STORAGE:
        graph = table_graph()
        kind, pre = stored_table(graph, storage)
        out[storage] = actsparse.compile(graph, (np.array([[1, 2, 3]]),), mode="dense", quantize=kind,
                                         prequantized=pre)
    return out


@pytest.mark.parametrize("storage", list(STORAGE))
def test_the_pass_stores_the_table_and_the_reference_reads_it(storage):
    graph = table_graph()
    kind, pre = stored_table(graph, storage)
    result = run_pipeline(graph, [Quantize(kind=kind, prequantized=pre or {})])
    taken = "prequantized" if pre else "fp16" if kind == "fp16" else "quantized"
    asked = "fp16" if kind == "fp16" else "int8"   # a table is asked in the output projection's storage
    assert result.stats["quantize"] == {f"embedding-{asked}": 1, taken: 1}
    out = result.graph
    (table,) = [n for n in out.nodes if n.op == "weight"]
    assert list(out.weights) == [table.attrs["name"]]   # the float32 table is gone
    if storage == "fp16":   # the rows come back float32: the model's activations do not change dtype
        assert out.weights[table.attrs["name"]].dtype == np.float16 and out.outputs[0].op == "cast"
    else:
        assert table.attrs["layout"] == storage
    text = print_graph(out)
    verify(parse_graph(text, dict(out.weights)))
    ids = np.array([[0, 7, VOCAB - 1, 7]])
    np.testing.assert_array_equal(evaluate(out, [ids])[0], reference_rows(out, ids).astype(np.float32))


@pytest.mark.parametrize("storage", list(STORAGE))
@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40))
def test_the_compiled_lookup_equals_the_dequantized_table(compiled_tables, storage, ids):
    cm = compiled_tables[storage]
    ids = np.array([ids], np.int64)
    got = cm(ids)
    want = reference_rows(cm.graph, ids)
    # q4_1's scale * nibble + offset may be one fused multiply-add in the kernel: a rounding apart
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max())
    np.testing.assert_allclose(evaluate(cm.graph, [ids])[0], want, rtol=1e-6, atol=1e-7 * np.abs(want).max())


def test_an_id_past_the_table_is_still_refused_before_the_call(compiled_tables):
    with pytest.raises(ActsparseError, match=str(VOCAB)):
        compiled_tables["q4_0"](np.array([[1, VOCAB]]))


@pytest.mark.parametrize("kind, layout", [("int4", "q8_0"), ("int8", "q8_0"), ("fp16", None)])
def test_a_tied_table_is_one_blob_in_the_output_projections_storage(kind, layout):
    graph = table_graph(TIED_GRAPH)
    result = run_pipeline(graph, [Quantize(kind=kind)])
    stats = result.stats["quantize"]
    out_kind = "int8" if kind != "fp16" else "fp16"
    assert stats[f"embedding-{out_kind}"] == 1 and stats["tied-shared"] == 1
    assert stats.get("quantized", stats.get("fp16")) == 1   # stored once, not once per reader
    out = result.graph
    (blob,) = out.weights.values()
    tables = {id(n) for n in out.nodes if n.op == "weight"}
    assert len(tables) == 1   # the embedding and the linear read the same node
    if layout:
        assert blob.dtype == np.uint8 and blob.shape == (VOCAB, LAYOUTS[layout].row_bytes(D))
    ids = np.array([[3, 9, 51]])
    want = evaluate(graph, [ids])[0]
    got = evaluate(out, [ids])[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_a_table_another_op_reads_as_floats_stays_float():
    graph = table_graph(TIED_GRAPH.replace("  return %1", f"  %2 = matmul(%1, @embed.weight) : f32[1,seq,{D}]\n"
                                           "  return %2"))
    out = run_pipeline(graph, [Quantize(kind="int4")])
    assert "embedding-int8" not in out.stats["quantize"]
    assert out.graph.weights["embed.weight"].dtype == np.float32


def test_the_interpreter_dequantizes_only_the_rows_it_looks_up(monkeypatch):
    import actsparse.ir.quant as quant

    out = run_pipeline(table_graph(), [Quantize(kind="int4")]).graph
    seen = []
    real = quant.dequantize
    monkeypatch.setattr(quant, "dequantize", lambda blob, *a: seen.append(blob.shape[0]) or real(blob, *a))
    evaluate(out, [np.array([[5, 5, 2]])])
    assert seen == [2]


HIDDEN, TINY_VOCAB = 48, 100   # rows of 48 columns: a whole group and a partial one


@pytest.fixture(scope="module")
def tied_llama():
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=80, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=TINY_VOCAB,
                                      max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=None,
                                      initializer_range=0.1, tie_word_embeddings=True, hidden_act="relu")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def interpreter_logits(graph, ids):
    """The IR's reference (the interpreter, on the stored blobs) of a decoder's main function: the last logits of
    `ids` prefilled from an empty cache."""
    caches = [np.zeros(i.type.shape, np.float32) for i in graph.inputs[3:]]  # after ids, pos, filled
    arrays = [ids.astype(np.int64), np.array([0], np.int64), np.zeros(ids.shape[1], np.int64), *caches]
    return evaluate(graph, arrays)[0].reshape(-1)


@pytest.mark.parametrize("kind, layout", [("int8", "q8_0"), ("int4", "q8_0"), ("fp16", None)])
def test_a_tied_model_stores_one_table_and_decodes_like_the_interpreter(tied_llama, kind, layout, tmp_path):
    from safetensors import safe_open

    lm = actsparse.compile(tied_llama, target=float_dot_target(), mode="dense", max_seq=24, quantize=kind)
    stats = lm.report.pass_stats["quantize"]
    assert stats["tied-shared"] == 1 and stats[f"embedding-{'fp16' if kind == 'fp16' else 'int8'}"] == 1, stats
    graph = lm.module.graph
    tables = [k for k, a in graph.weights.items() if a.shape[0] == TINY_VOCAB]
    assert len(tables) == 1, tables   # one blob: no float32 table, no second copy for lm_head
    row_bytes = LAYOUTS[layout].row_bytes(HIDDEN) if layout else 2 * HIDDEN
    assert graph.weights[tables[0]].nbytes == TINY_VOCAB * row_bytes
    assert {id(n.inputs[0]) for n in graph.nodes if n.op == "embedding"} == \
        {id(n.inputs[1]) for n in graph.nodes if n.op == "linear" and n.inputs[1].shape[0] == TINY_VOCAB}

    ids = np.array([[5, 77, 23, 9, 60]])
    want = interpreter_logits(graph, ids)
    np.testing.assert_allclose(lm.prefill(ids).logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    greedy = ids
    for _ in range(6):   # the interpreter's greedy decoding, the whole sequence again each token
        greedy = np.concatenate([greedy, [[int(np.argmax(interpreter_logits(graph, greedy)))]]], 1)
    np.testing.assert_array_equal(lm.generate(ids, max_new_tokens=6), greedy)

    path = lm.save(tmp_path / "tied.actsparse")
    with safe_open(str(path / "weights.safetensors"), "numpy") as f:
        assert [k for k in f.keys() if f.get_slice(k).get_shape()[0] == TINY_VOCAB] == tables
    np.testing.assert_array_equal(actsparse.load(path).generate(ids, max_new_tokens=6), greedy)


@pytest.mark.parametrize("kind", ["int4", "fp16"])
def test_golden_tied_and_untied_tables(kind):
    """The pass's rewrite as text: the tied table one q8_0 (fp16) node read by the lookup and the head, the untied
    one (a position table) at the output projection's precision too (q8_0 under int4), fp16 rows cast back to f32."""
    from .test_passes_golden import GOLDEN, _check_golden

    text = (GOLDEN / "embedding_tables.before.ir").read_text()
    graph = parse_graph(text)
    rng = np.random.default_rng(0)
    graph = parse_graph(text, {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in graph.weights.items()})
    result = run_pipeline(graph, [Quantize(kind=kind)])
    _check_golden("embedding_tables", f"quantize-{kind}", print_graph(result.graph))
    ids = [np.array([[1, 4, 50]]), np.array([[2, 3, 0]])]
    want, got = evaluate(graph, ids)[0], evaluate(result.graph, ids)[0]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_a_cuda_build_schedules_the_lookup_of_a_quantized_table(tied_llama):
    """The lookup is a plain compute: on CUDA dlight binds it to threads (an unbound loop fails the build)."""
    from .kernel_cases import require_nvcc

    require_nvcc()
    lm = actsparse.compile(tied_llama, target="cuda", mode="exact", max_seq=16, quantize="int4")
    assert lm.report.pass_stats["quantize"]["tied-shared"] == 1
    assert [n.inputs[0].attrs["layout"] for n in lm.module.graph.nodes if n.op == "embedding"] == ["q8_0"]
