"""GGUF's quantized tensors kept quantized (frontends/gguf_quant.py): on a tiny synthetic Llama GGUF, Q8_0 / Q4_0 /
Q4_1 matrices come back under their Hugging Face names, byte for byte the file's blocks (q/k rows un-permuted as
transformers does), and their values equal transformers' own dequantized load; an unreadable type is one error."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from .helpers import int8_dot_here, paying_x86

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

D, N_FF, HEADS, VOCAB = 64, 96, 4, 300
TYPES = {"attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "Q8_0", "attn_output": "Q4_0", "ffn_gate": "Q4_1",
         "ffn_up": "Q4_0", "ffn_down": "Q8_0"}


def q4_k_bytes(rng, rows: int, cols: int, d_range=(2e-3, 6e-3)) -> np.ndarray:
    """Random Q4_K blocks uint8 [rows, cols / 256 * 144], d drawn from `d_range` (`decode_models.random_k_blocks`)."""
    from actsparse.benchmarks.decode_models import random_k_blocks

    return random_k_blocks(rng, "Q4_K", rows, cols, d_range)


def llama_style_writer(path, arch: str, d: int, n_ff: int, context: int):
    """A GGUFWriter with one block's hyperparameters of `arch` (Llama's keys) and a byte-level SentencePiece
    vocabulary of VOCAB tokens, ready for tensors."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (("context_length", context), ("embedding_length", d), ("block_count", 1),
                       ("feed_forward_length", n_ff), ("attention.head_count", HEADS),
                       ("attention.head_count_kv", HEADS), ("rope.dimension_count", d // HEADS)):
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<0x{i:02X}>" for i in range(256)] + [f"t{i}" for i in range(VOCAB - 256)])
    w.add_token_types([6] * 256 + [1] * (VOCAB - 256))
    w.add_token_scores([0.0] * VOCAB)
    return w


def write_tiny_llama(path, types=TYPES, seed=0, d=D, n_ff=N_FF, q4_k_d=(2e-3, 6e-3)):
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    rng = np.random.default_rng(seed)
    w = llama_style_writer(path, "llama", d, n_ff, context=64)
    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, d)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output.weight", rng.standard_normal((VOCAB, d)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(d, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(d, np.float32))
    shapes = {"attn_q": (d, d), "attn_k": (d, d), "attn_v": (d, d), "attn_output": (d, d), "ffn_gate": (n_ff, d),
              "ffn_up": (n_ff, d), "ffn_down": (d, n_ff)}
    blobs = {}
    for name, shape in shapes.items():
        qtype = getattr(Q, types[name])
        data = q4_k_bytes(rng, *shape, q4_k_d) if qtype == Q.Q4_K else quants.quantize(
            rng.standard_normal(shape).astype(np.float32), qtype)
        w.add_tensor(f"blk.0.{name}.weight", data, raw_dtype=qtype)
        blobs[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return blobs


def test_quantized_tensors_come_back_losslessly_under_hf_names(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from actsparse.frontends.gguf_quant import gguf_tensor_types, read_gguf_quantized
    from actsparse.ir.quant import to_gguf_blocks

    blobs = write_tiny_llama(tmp_path / "tiny.gguf")
    assert gguf_tensor_types(tmp_path / "tiny.gguf") == {"F32": 5, "Q4_0": 3, "Q4_1": 2, "Q8_0": 2}
    got = read_gguf_quantized(tmp_path / "tiny.gguf")
    prefix = "model.layers.0."
    assert sorted(got) == sorted(prefix + n for n in (
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"))
    assert got[prefix + "mlp.gate_proj.weight"].layout == "q4_1"
    for name, gguf_name, layout in (("down", "ffn_down", "q8_0"), ("up", "ffn_up", "q4_0")):
        qw = got[f"{prefix}mlp.{name}_proj.weight"]  # the same bytes, split per row (ir.quant): no arithmetic
        assert qw.layout == layout
        np.testing.assert_array_equal(to_gguf_blocks(qw.blob, layout, qw.shape[1]), blobs[gguf_name])
    assert not np.array_equal(got[prefix + "self_attn.q_proj.weight"].blob, blobs["attn_q"])  # rows un-permuted
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    state = model.state_dict()
    for name, qw in got.items():
        np.testing.assert_array_equal(qw.dequantize(), state[name].numpy(), err_msg=name)


def test_an_unreadable_gguf_type_is_one_clear_error(tmp_path):
    from gguf import GGMLQuantizationType as Q

    from actsparse.frontends.gguf_quant import GGUFQuantError, gguf_tensor_types, read_gguf_quantized

    for name, qtype, row_bytes in (("iq", Q.IQ2_XXS, 66), ("q8k", Q.Q8_K, 292)):  # 256 columns a row
        w = gguf.GGUFWriter(str(tmp_path / f"{name}.gguf"), "llama")
        w.add_tensor("blk.0.ffn_up.weight", np.zeros((4, row_bytes), np.uint8), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    # IQ types are dequantized (the gguf package reads them); Q8_K, llama.cpp's internal dot type, nothing reads
    assert gguf_tensor_types(tmp_path / "iq.gguf") == {"IQ2_XXS": 1}
    with pytest.raises(GGUFQuantError, match="tensor type.* Q8_K are not supported.*Q8_0, Q4_0 or Q4_1"):
        read_gguf_quantized(tmp_path / "q8k.gguf")


def test_compiling_a_gguf_with_quantize_keeps_its_blocks_and_decodes_like_transformers(tmp_path):
    """`actsparse.compile(x.gguf, quantize=...)`: the file's blocks are the kernels' weights as stored wherever a
    kernel reads that matrix's rows (no second rounding), the compiled model computes exactly on what it stores,
    and greedy decoding follows transformers' dequantized model of the same file."""
    import torch
    from transformers import AutoModelForCausalLM

    import actsparse
    from actsparse.ir.interpreter import evaluate
    from actsparse.ir.quant import to_gguf_blocks

    # attention as in TYPES (Q4_0 / Q4_1 / Q8_0 mixed); the MLP Q8_0, the layout int8 stores down in
    blobs = write_tiny_llama(tmp_path / "tiny.gguf", types={**TYPES, "ffn_gate": "Q8_0", "ffn_up": "Q8_0"})
    # x as it is in every dot (the int8-dot path, which rounds x to 8-bit blocks, is checked at the end)
    lm = actsparse.compile(str(tmp_path / "tiny.gguf"), target=float_dot_target(), mode="dense", quantize="int8",
                           max_seq=24)
    stats = lm.report.pass_stats["quantize"]
    # q, k, v, o, gate, up and down taken as stored: with a stored down the MLP stays three linears (the fused
    # kernel would read down transposed, quantized anew); the f32 lm_head and token table are quantized from float
    assert stats == {"prequantized": 7, "quantized": 2, "embedding-int8": 1}, stats
    assert lm.report.pass_stats["fuse-gated-mlp"] == {"kept-linears": 1}
    weights = lm.module.graph.weights
    gate = weights["model.layers.0.mlp.gate_proj.weight.q8_0"]   # the file's bytes, split per row (ir.quant)
    np.testing.assert_array_equal(to_gguf_blocks(gate, "q8_0", blobs["ffn_gate"].shape[1] // 34 * 32),
                                  blobs["ffn_gate"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    ids = np.array([[5, 77, 123, 9, 260]])
    caches = [np.zeros(i.type.shape, np.float32) for i in lm.module.graph.inputs[3:]]  # after ids, pos, filled
    arrays = [ids.astype(np.int64), np.array([0], np.int64), np.zeros(ids.shape[1], np.int64), *caches]
    exact = evaluate(lm.module.graph, arrays)[0].reshape(-1)   # the IR's reference on the stored blocks
    logits = lm.prefill(ids).logits
    np.testing.assert_allclose(logits, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    with torch.no_grad():
        ref_logits = model(torch.from_numpy(ids)).logits[0, -1].numpy()
    # only the int8 lm_head separates them from transformers
    np.testing.assert_allclose(logits, ref_logits, atol=0.02 * np.abs(ref_logits).max())
    want = model.generate(torch.from_numpy(ids), max_new_tokens=6, do_sample=False).numpy()
    np.testing.assert_array_equal(lm.generate(ids, max_new_tokens=6), want)
    if int8_dot_here():  # the host's default: quantized dots on x rounded to 8-bit blocks (VNNI)
        lm8 = actsparse.compile(str(tmp_path / "tiny.gguf"), mode="dense", quantize="int8", max_seq=24)
        np.testing.assert_allclose(lm8.prefill(ids).logits, ref_logits, atol=0.05 * np.abs(ref_logits).max())
        np.testing.assert_array_equal(lm8.generate(ids, max_new_tokens=6), want)


def write_tiny_gpt2(path, seed=0, d=64, n_ff=256, heads=4):
    """GPT-2 as llama.cpp writes it: Q8_0 matrices [out, in] with biases, which transformers' tensor processor
    transposes into the [in, out] of GPT-2's Conv1D (a byte-level BPE vocabulary of 258 tokens)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    rng = np.random.default_rng(seed)
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's bytes_to_unicode
    tokens = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))] + ["Ġt", "<|eot|>"]
    w = gguf.GGUFWriter(str(path), "gpt2")
    for key, value in (("context_length", 1024), ("embedding_length", d), ("block_count", 1),
                       ("feed_forward_length", n_ff), ("attention.head_count", heads)):
        w.add_uint32(f"gpt2.{key}", value)
    w.add_float32("gpt2.attention.layer_norm_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["Ġ t"])
    w.add_eos_token_id(len(tokens) - 1)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w.add_tensor("token_embd.weight", normal(len(tokens), d))
    w.add_tensor("position_embd.weight", normal(1024, d))
    w.add_tensor("output.weight", normal(len(tokens), d))
    for norm in ("output_norm", "blk.0.attn_norm", "blk.0.ffn_norm"):
        w.add_tensor(f"{norm}.weight", np.ones(d, np.float32))
        w.add_tensor(f"{norm}.bias", np.zeros(d, np.float32))
    for name, shape in (("attn_qkv", (3 * d, d)), ("attn_output", (d, d)), ("ffn_up", (n_ff, d)),
                        ("ffn_down", (d, n_ff))):
        w.add_tensor(f"blk.0.{name}.weight", quants.quantize(normal(*shape), Q.Q8_0), raw_dtype=Q.Q8_0)
        w.add_tensor(f"blk.0.{name}.bias", normal(shape[0]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_whose_matrices_transformers_transposes_stays_dequantized_and_decodes(tmp_path):
    """GPT-2's GGUF matrices are transposed by transformers' loader (its Conv1D takes [in, out]): their blocks cannot
    follow, so they stay dequantized (before, `quantize=` failed on them as "truncated or corrupt") and are quantized
    anew; Llama's q/k un-permutation, a reordering of rows, is still followed (the test above)."""
    import torch
    from transformers import AutoModelForCausalLM

    import actsparse
    from actsparse.frontends.gguf_quant import read_gguf_quantized

    write_tiny_gpt2(tmp_path / "gpt2.gguf")
    left = {}
    assert read_gguf_quantized(tmp_path / "gpt2.gguf", left) == {}
    assert sorted(left) == [f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                      "mlp.c_proj")]
    assert all("rewrites this tensor" in why for why in left.values())
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="gpt2.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 33, 2, 9]])
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False).numpy()
    lm = actsparse.compile(str(tmp_path / "gpt2.gguf"), target=float_dot_target(), quantize="int8", max_seq=16)
    assert "Q8_0 x4 dequantized, quantized anew as q8_0" in " ".join(lm.report.notes)
    np.testing.assert_array_equal(lm.generate(ids.numpy(), max_new_tokens=6), want)


def test_a_phi3_ggufs_fused_matrices_are_kept_quantized_and_decode(tmp_path):
    """Phi-3 as llama.cpp writes it: q, k and v in one Q8_0 matrix, gate and up in another (transformers maps them to
    the fused qkv_proj / gate_up_proj); the blocks are kept as stored and split by the compile like any fused weight,
    and greedy decoding follows transformers' dequantized model of the same file."""
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf import quants
    from transformers import AutoModelForCausalLM

    import actsparse

    rng = np.random.default_rng(0)
    w = llama_style_writer(tmp_path / "phi3.gguf", "phi3", D, N_FF, context=4096)
    w.add_pad_token_id(0)  # Phi-3's default (32000) lies outside this vocabulary

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w.add_tensor("token_embd.weight", normal(VOCAB, D))
    w.add_tensor("output.weight", normal(VOCAB, D))
    for norm in ("output_norm", "blk.0.attn_norm", "blk.0.ffn_norm"):
        w.add_tensor(f"{norm}.weight", np.ones(D, np.float32))
    for name, shape in (("attn_qkv", (3 * D, D)), ("attn_output", (D, D)), ("ffn_up", (2 * N_FF, D)),
                        ("ffn_down", (D, N_FF))):
        w.add_tensor(f"blk.0.{name}.weight", quants.quantize(normal(*shape), Q.Q8_0), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="phi3.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([[5, 77, 123, 9, 260]])
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                          do_sample=False).numpy()
    lm = actsparse.compile(str(tmp_path / "phi3.gguf"), target=float_dot_target(), quantize="int8", max_seq=16)
    assert lm.report.pass_stats["quantize"]["prequantized"] == 4  # qkv, o, gate_up (fused), down
    assert "Q8_0 x4 kept as stored" in " ".join(lm.report.notes)
    np.testing.assert_array_equal(lm.generate(ids.numpy(), max_new_tokens=6), want)


def float_dot_target():
    """This host's x86 target without the flags an int8 dot is chosen by (VNNI, AVX2): quantized rows meet x in
    fp32."""
    from dataclasses import replace

    from actsparse import targets
    from actsparse.codegen.schedules import INT8_DOT_FEATURES

    host, dot_flags = targets.get("x86"), {flag for flag, *_ in INT8_DOT_FEATURES}
    return replace(host, features=tuple(f for f in host.features if f not in dot_flags))


def test_a_gguf_compile_parses_the_file_once_and_keeps_nothing_open(tmp_path, monkeypatch):
    """One compile of a .gguf reads it in five places (our checks, transformers' config, tokenizer and weights):
    all of them share one parse (frontends/gguf_read.py `parsed_once`); after it, a read parses the file anew
    (nothing is kept past the compile) and gguf's own reader is back."""
    import actsparse
    from actsparse.frontends.gguf_read import read_gguf

    parses = []

    class CountedReader(gguf.GGUFReader):
        def __init__(self, path, *args, **kwargs):
            parses.append(str(path))
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountedReader)
    write_tiny_llama(tmp_path / "tiny.gguf")
    lm = actsparse.compile(str(tmp_path / "tiny.gguf"), mode="dense", quantize="int8", max_seq=8)
    assert lm.report.pass_stats["quantize"]["prequantized"] >= 1  # the quantized path read the file's blocks too
    assert parses == [str(tmp_path / "tiny.gguf")]
    assert gguf.GGUFReader is CountedReader
    read_gguf(tmp_path / "tiny.gguf")
    assert len(parses) == 2


def test_threshold_mode_keeps_a_4_bit_files_blocks_rather_than_round_them_again(tmp_path):
    """Threshold mode's input methods store gate / up as columns and down transposed: a GGUF's Q4_0 MLP blocks cannot
    be kept there, and rounding them again at 4 bits cost SmolLM2's Q4_1 file +82-84% perplexity (Gemma 3's Q4_K_M,
    whose gate / up are Q5_0, +31%). Under quantize="int4" such a block stays dense, uncalibrated (stat
    kept-dense-file-blocks), even where the kernel would pay: three linears on the file's blocks, decoding as the
    dense int4 build does; a Q8_0 file's too (the file's 8 bits are kept by dense mode). int8's 8-bit re-laid copies may
    go input-sparse, priced against the file's blocks; `prequantized={}` (every tensor anew, the user's choice) too,
    with the report's warning."""
    import actsparse

    mlp = {"ffn_gate": "Q4_0", "ffn_up": "Q4_0", "ffn_down": "Q4_0"}
    write_tiny_llama(tmp_path / "tiny.gguf", types={**TYPES, **mlp})
    calibration = [np.random.default_rng(s).integers(1, VOCAB, (1, 16)) for s in range(4)]
    paying = paying_x86()

    def build(**options):
        return actsparse.compile(str(tmp_path / "tiny.gguf"), max_seq=24, **options)

    def warnings(lm):
        return [n for n in lm.report.notes if "quantized a second time" in n]

    lm = build(mode="threshold", sparsity=0.5, calibration=calibration, quantize="int4", target=paying)
    stats = lm.report.pass_stats["sparsify-threshold"]
    assert stats["kept-dense-file-blocks"] == 1 and "kept-dense-by-cost" not in stats, stats
    assert lm.module.graph.count("sparse_gated_mlp") == 0 and lm.module.graph.count("gated_mlp") == 1
    assert lm.report.blocks[0].mode == "dense" and "the file's quantized blocks" in lm.report.blocks[0].reason
    assert warnings(lm) == []
    dense = build(mode="dense", quantize="int4")
    ids = np.random.default_rng(7).integers(1, VOCAB, (1, 5))
    np.testing.assert_array_equal(lm.generate(ids, max_new_tokens=6), dense.generate(ids, max_new_tokens=6))
    assert warnings(dense) == []
    # int8's copies are 8-bit, no second 4-bit rounding: priced against the file's blocks dense reads (1.9x fewer
    # bytes), they pay at 0.5 only where the kernel reads a byte at most 0.95x as fast as dense (here: not at 1.0)
    int8 = build(mode="threshold", sparsity=0.5, calibration=calibration, quantize="int8", target=paying)
    assert int8.module.graph.count("sparse_gated_mlp") == 0 and warnings(int8) == []
    assert "copies 1.9x the size of the file's blocks dense reads" in int8.report.blocks[0].reason
    int8 = build(mode="threshold", sparsity=0.5, calibration=calibration, quantize="int8",
                 target=dataclasses.replace(paying, input_byte_cost={"int8": 0.5}))
    assert int8.module.graph.count("sparse_gated_mlp") == 1 and warnings(int8) == []
    anew = build(mode="threshold", sparsity=0.5, calibration=calibration, quantize="int4", target=paying,
                 prequantized={})
    assert anew.module.graph.count("sparse_gated_mlp") == 1
    (warning,) = warnings(anew)   # (every 4-bit tensor of the file rounded anew: attention's too)
    assert warning.startswith("6 tensors the GGUF stores in 4-5 bit blocks") and "quantize='int8'" in warning
    write_tiny_llama(tmp_path / "tiny.gguf", types={**TYPES, "ffn_gate": "Q8_0", "ffn_up": "Q8_0", "ffn_down": "Q8_0"})
    lm = build(mode="threshold", sparsity=0.5, calibration=calibration, quantize="int4", target=paying)
    assert lm.report.pass_stats["sparsify-threshold"]["kept-dense-file-blocks"] == 1
    assert lm.module.graph.count("sparse_gated_mlp") == 0
    # where the cost rule keeps a block dense (a float file's blocks, this host's int4 cost), the same three linears
    write_tiny_llama(tmp_path / "tiny.gguf", types={**TYPES, "ffn_gate": "F32", "ffn_up": "F32", "ffn_down": "F32"})
    lm = build(mode="threshold", sparsity=0.5, calibration=calibration, quantize="int4",
               target=dataclasses.replace(paying, input_byte_cost={"int4": 4.0}))
    assert lm.report.pass_stats["sparsify-threshold"]["kept-dense-by-cost"] == 1
    assert lm.module.graph.count("sparse_gated_mlp") == 0 and lm.module.graph.count("gated_mlp") == 1
    assert lm.report.blocks[0].mode == "dense" and lm.report.blocks[0].reason.startswith("kept dense by cost")


def test_the_second_rounding_rule():
    """The report's warning names a tensor the file stores in 4-5 bit blocks that was stored again in a 4-bit
    layout: a kept tensor, an 8-bit copy and a Q8_0 tensor are no second 4-bit rounding."""
    from actsparse.frontends.gguf_quant import second_rounding_note

    types = {"a": ("blk.0.a", "Q4_0"), "b": ("blk.0.b", "Q4_1"), "c": ("blk.0.c", "Q8_0"), "d": ("blk.0.d", "Q4_K")}
    stored = ["a.t.q4_0", "b.q8_0", "c.t.q4_0", "d.q4_1"]
    kept = {"d": SimpleNamespace(layout="q4_1")}
    assert second_rounding_note(types, stored, kept).startswith("1 tensors the GGUF stores in 4-5 bit blocks (a, ")
    assert second_rounding_note(types, stored[1:], kept) == ""


def test_tensors_the_file_keeps_above_4_bits_stay_8_bit_under_int4(tmp_path):
    """A K-quant mix keeps some tensors wider on purpose (Q6_K / Q5_K / Q5_1, which nothing of ours holds as they
    are): under quantize="int4" such a tensor is stored q8_0, not rounded to 4 bits a second time (stat wide-int8);
    `prequantized={}` (every tensor anew, the fewest bytes) still takes it to q4_0."""
    import actsparse

    write_tiny_llama(tmp_path / "tiny.gguf", types={**TYPES, "ffn_gate": "Q4_0", "ffn_up": "Q4_0", "ffn_down": "Q5_1"})
    down = "model.layers.0.mlp.down_proj.weight"
    lm = actsparse.compile(str(tmp_path / "tiny.gguf"), mode="dense", quantize="int4", max_seq=16)
    assert lm.report.pass_stats["quantize"]["wide-int8"] == 1
    assert f"{down}.q8_0" in lm.module.graph.weights and f"{down}.q4_0" not in lm.module.graph.weights
    assert "Q5_1 x1 dequantized, quantized anew as q8_0" in " ".join(lm.report.notes)
    fewest = actsparse.compile(str(tmp_path / "tiny.gguf"), mode="dense", quantize="int4", max_seq=16,
                               prequantized={})
    assert "wide-int8" not in fewest.report.pass_stats["quantize"] and f"{down}.q4_0" in fewest.module.graph.weights


def test_a_sparse_mode_keeps_a_4_bit_files_gate_and_up_and_rounds_its_down_again_at_8_bits(tmp_path):
    """The kernels reading gate / up by neuron rows (exact, predictor, threshold's row methods) take a Q4 file's gate
    and up as stored; its down, whose blocks run along n_ff, is re-laid a neuron per row and now quantized at 8 bits
    (stat requantized-int8): no second 4-bit rounding, so no warning, and the compiled prefill's logits equal the
    interpreter's on the stored weights."""
    import actsparse
    from actsparse.ir.interpreter import evaluate
    from actsparse.ir.quant import to_gguf_blocks

    blobs = write_tiny_llama(tmp_path / "tiny.gguf", types={**TYPES, "ffn_gate": "Q4_1", "ffn_up": "Q4_1",
                                                             "ffn_down": "Q4_0"})
    calibration = [np.random.default_rng(s).integers(1, VOCAB, (1, 16)) for s in range(4)]
    lm = actsparse.compile(str(tmp_path / "tiny.gguf"), mode="threshold", method="cats", sparsity=0.5,
                           calibration=calibration, quantize="int4", max_seq=24)
    stats = lm.report.pass_stats["quantize"]
    assert stats["requantized-int8"] == 1 and not any(k.startswith("relaid") for k in stats), stats
    assert not [n for n in lm.report.notes if "quantized a second time" in n]
    (node,) = [n for n in lm.module.graph.nodes if n.op == "sparse_gated_mlp"]
    assert [w.attrs["layout"] for w in node.inputs[1:4]] == ["q4_1", "q4_1", "q8_0"]
    stored_gate = lm.module.graph.weights[node.inputs[1].attrs["name"]]
    np.testing.assert_array_equal(to_gguf_blocks(stored_gate, "q4_1", D), blobs["ffn_gate"])
    ids = np.array([[5, 77, 123, 9, 260]])
    caches = [np.zeros(i.type.shape, np.float32) for i in lm.module.graph.inputs[3:]]
    arrays = [ids.astype(np.int64), np.array([0], np.int64), np.zeros(ids.shape[1], np.int64), *caches]
    exact = evaluate(lm.module.graph, arrays)[0].reshape(-1)
    tolerance = 0.02 if int8_dot_here("q4_1") else 1e-4   # the host's int8 dots round x to 8-bit blocks
    np.testing.assert_allclose(lm.prefill(ids).logits, exact, rtol=1e-4, atol=tolerance * np.abs(exact).max())
    assert lm.generate(ids, max_new_tokens=6).shape == (1, 11)


def write_tiny_qwen3_moe(path, experts=4):
    """A one-layer Qwen3-MoE GGUF as llama.cpp writes one (benchmarks/decode_models.py's writer): its experts as 3-D
    tensors ffn_{gate,up,down}_exps [E, rows, cols], every matrix Q4_0 (transformers merges gate and up into one
    gate_up_proj; n_ff 768, the expert size its config mapping assumes). Returns the expert tensors' blocks."""
    from actsparse.benchmarks.decode_models import write_qwen3_moe_gguf

    return write_qwen3_moe_gguf(str(path), d=D, layers=1, experts=experts, used=2, heads=HEADS, kv_heads=HEADS,
                                vocab=VOCAB, context=64, std=0.2)


def test_a_moe_ggufs_expert_rows_are_kept_as_stored_in_the_routed_stacks(tmp_path):
    """transformers merges a Qwen-MoE GGUF's ffn_gate_exps / ffn_up_exps into one gate_up_proj, which no row order of
    one tensor follows; the routed experts' stacked gate and up rows are the file's 3-D tensors' rows in order, so the
    quantize pass takes those blocks where the values are equal (stat prequantized-by-value): the file's bytes, not a
    second 4-bit rounding; the down stack (the file's ffn_down_exps transposed expert by expert) is taken as the file
    stores it, an output per row (stat routed-down-as-stored, down_rows "outputs"), on a CUDA target's quantize pass
    (no routed kernel for that form) re-laid a neuron per row at 8 bits. The float build decodes as transformers
    does; the int4 build computes on what it stores."""
    import torch
    from transformers import AutoModelForCausalLM

    import actsparse
    from actsparse.ir.interpreter import evaluate
    from actsparse.ir.quant import to_gguf_blocks

    blobs = write_tiny_qwen3_moe(tmp_path / "moe.gguf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="moe.gguf", dtype=torch.float32).eval()
    ids = np.array([[5, 17, 40, 9, 60, 33]])
    with torch.no_grad():
        want = model.generate(torch.from_numpy(ids), max_new_tokens=6, do_sample=False).numpy()
    lm = actsparse.compile(str(tmp_path / "moe.gguf"), max_seq=24)
    np.testing.assert_array_equal(lm.generate(ids, 6), want)
    lm4 = actsparse.compile(str(tmp_path / "moe.gguf"), max_seq=24, quantize="int4")
    stats = lm4.report.pass_stats["quantize"]
    assert stats["prequantized-by-value"] == 2 and stats["routed-down-as-stored"] == 1, stats
    assert "requantized-int8" not in stats, stats
    (moe,) = [n for n in lm4.module.graph.nodes if n.op == "routed_moe"]
    # the down stack is the file's ffn_down_exps as stored: an output per row, its 4-bit blocks unchanged
    assert [moe.inputs[i].attrs["layout"] for i in (1, 2, 3)] == ["q4_0", "q4_0", "q4_0"]
    assert moe.attrs["down_rows"] == "outputs" and moe.inputs[3].shape == (4 * D, 768)
    note = next(n for n in lm4.report.notes if n.startswith("GGUF tensors"))
    assert "Q4_0 x7: 4 kept as stored, 3 kept as stored (routed experts)" in note, note
    for i, name in ((1, "ffn_gate_exps"), (2, "ffn_up_exps"), (3, "ffn_down_exps")):
        stored = lm4.module.graph.weights[moe.inputs[i].attrs["name"]]
        cols = moe.inputs[i].shape[1]
        np.testing.assert_array_equal(to_gguf_blocks(stored, "q4_0", cols), blobs[name].reshape(stored.shape[0], -1))
    caches = [np.zeros(i.type.shape, np.float32) for i in lm4.module.graph.inputs[3:]]
    arrays = [ids.astype(np.int64), np.array([0], np.int64), np.zeros(ids.shape[1], np.int64), *caches]
    exact = evaluate(lm4.module.graph, arrays)[0].reshape(-1)
    tolerance = 0.02 if int8_dot_here("q4_0") else 1e-4
    np.testing.assert_allclose(lm4.prefill(ids).logits, exact, rtol=1e-4, atol=tolerance * np.abs(exact).max())
