"""GGUF's Q5_0 and Q4_K kept quantized (frontends/gguf_kquants.py): Q5_0 blocks as q8_0 groups equal the gguf
package's dequantized values bit for bit, Q4_K super-blocks as q4_1 groups within fp16's rounding of d*sc and
dmin*m; a tiny Llama GGUF holding both compiles with its blocks kept and decodes like transformers; a truncated
tensor and an fp16 overflow are one clear error / a tensor left dequantized with its reason."""

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from .test_gguf_quant import float_dot_target, q4_k_bytes, write_tiny_llama

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

# a tiny Llama of K-quants: attention and down Q4_K (-> q4_1), gate and up Q5_0 (-> q8_0)
K_QUANTS = {"attn_q": "Q4_K", "attn_k": "Q4_K", "attn_v": "Q4_K", "attn_output": "Q4_K", "ffn_gate": "Q5_0",
            "ffn_up": "Q5_0", "ffn_down": "Q4_K"}

U16 = 2.0 ** -11   # fp16's unit roundoff: the most a product rounded to fp16 moves, relative


def q4_k_terms(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K rows -> (|d*sc*q|, |dmin*m|, |d*sc|) per weight, float64 [rows, cols]: the two products fp16 rounds and
    the code step (the sub-scales unpacked by the gguf package, the codes in its nibble order)."""
    from gguf.quants import Q4_K

    blocks = data.reshape(-1, 144)
    n = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
    sc, m = Q4_K.get_scale_min(blocks[:, 4:16])
    codes = (blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 15
    scale = np.abs(d * sc)[..., None] * codes.reshape(n, 8, 32)
    offset = np.broadcast_to(np.abs(dmin * m)[..., None], scale.shape)
    step = np.broadcast_to(np.abs(d * sc)[..., None], scale.shape)
    return tuple(a.reshape(data.shape[0], -1) for a in (scale, offset, step))


def test_q5_0_blocks_are_q8_0_groups_bit_for_bit():
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    from actsparse.frontends.gguf_kquants import UnrepresentableError, q8_0_as_q5_0
    from actsparse.frontends.gguf_quant import kept_blob
    from actsparse.ir.quant import QuantizedWeight, quantize, to_gguf_blocks

    w = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32)
    w[0, :32] = 0   # an all-zero block: scale 0
    data = quants.quantize(w, Q.Q5_0)
    qw = QuantizedWeight(kept_blob(data, "Q5_0", 96), "q8_0", (6, 96))
    np.testing.assert_array_equal(qw.dequantize(), quants.dequantize(data, Q.Q5_0))
    # and back: the q8_0 groups are the file's Q5_0 blocks again
    np.testing.assert_array_equal(q8_0_as_q5_0(to_gguf_blocks(qw.blob, "q8_0", 96).reshape(-1, 34)).reshape(6, -1),
                                  data)
    with pytest.raises(UnrepresentableError, match="do not fit Q5_0's -16..15"):
        q8_0_as_q5_0(to_gguf_blocks(quantize(w, "int8").blob, "q8_0", 96).reshape(-1, 34))


@hypothesis.given(rows=st.integers(1, 4), groups=st.integers(1, 9), seed=st.integers(0, 999))
@hypothesis.settings(max_examples=20, deadline=None)
def test_random_q5_0_bytes_come_back_through_split_q8_0_rows(rows, groups, seed):
    """Any Q5_0 bytes (NaN / Inf scales included) kept as split q8_0 rows give the same bytes back: the rewrite and
    the split move codes and scales, never round them."""
    from actsparse.frontends.gguf_kquants import q8_0_as_q5_0
    from actsparse.frontends.gguf_quant import kept_blob
    from actsparse.ir.quant import LAYOUTS, QuantizedWeight, to_gguf_blocks

    data = np.random.default_rng(seed).integers(0, 256, (rows, groups * 22), dtype=np.uint8)
    qw = QuantizedWeight(kept_blob(data, "Q5_0", groups * 32), "q8_0", (rows, groups * 32))
    assert LAYOUTS[qw.layout].split
    blocks = to_gguf_blocks(qw.blob, "q8_0", groups * 32).reshape(-1, 34)
    np.testing.assert_array_equal(q8_0_as_q5_0(blocks).reshape(rows, -1), data)


def test_q4_k_super_blocks_are_q4_1_groups_within_fp16_rounding():
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    from actsparse.frontends.gguf_kquants import q4_k_scales
    from actsparse.frontends.gguf_quant import kept_blob
    from actsparse.ir.quant import QuantizedWeight

    rng = np.random.default_rng(1)
    # d over fp16's range: subnormal (1e-7), ordinary weights, and products near fp16's top (7.5 * 130 * 63)
    data = np.concatenate([q4_k_bytes(rng, 4, 512, d_range=r) for r in ((1e-7, 5e-6), (2e-3, 6e-3), (100, 130))])
    np.testing.assert_array_equal(np.concatenate(q4_k_scales(data.reshape(-1, 144)[:, 4:16]), -1),
                                  np.concatenate(quants.Q4_K.get_scale_min(data.reshape(-1, 144)[:, 4:16]), -1))
    qw = QuantizedWeight(kept_blob(data, "Q4_K", 512), "q4_1", (12, 512))
    ours, ref = qw.dequantize().astype(np.float64), quants.dequantize(data, Q.Q4_K).astype(np.float64)
    scale, offset, step = q4_k_terms(data)
    bound = U16 * (scale + offset) + 2.0 ** -23 * (scale + offset + np.abs(ref))   # + float32's own roundings
    err = np.abs(ours - ref)
    assert (err <= bound).all(), float((err / np.where(bound > 0, bound, 1)).max())
    assert err.max() > 0   # the products really are rounded (the bound is not vacuous)
    # and it is below one code step wherever there is one: a code in the wrong nibble would break it
    assert (bound < step)[step > 0].all()


def test_bad_k_quant_tensors_are_one_clear_error_or_left_dequantized(tmp_path):
    from actsparse.frontends.gguf_kquants import UnrepresentableError, q4_k_as_q4_1
    from actsparse.frontends.gguf_quant import GGUFQuantError, kept_blob, read_gguf_quantized

    data = q4_k_bytes(np.random.default_rng(2), 2, 256)
    with pytest.raises(GGUFQuantError, match=r"Q4_K tensor with 256 columns .* uint8 \[2, 144\]; got \[2, 143\]"
                                             ".*truncated or corrupt"):
        kept_blob(data[:, :-1], "Q4_K", 256)
    big = data.copy()
    big[:, 0:2] = np.array([[4e3]], np.float16).view(np.uint8)   # d * sc up to 63 * 4000: beyond fp16
    big[:, 4:16] = 0xFF
    with pytest.raises(UnrepresentableError, match="exceeds fp16"):
        q4_k_as_q4_1(big.reshape(-1, 144))
    # in a file: that tensor stays dequantized, the reason said; the others are kept
    types = {**dict.fromkeys(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down"), "Q8_0"),
             "ffn_up": "Q4_K"}
    write_tiny_llama(tmp_path / "big.gguf", types=types, d=256, n_ff=64, q4_k_d=(2e3, 4e3))
    left = {}
    with pytest.warns(UserWarning, match=r"ffn_up.weight \(Q4_K\) stays dequantized.*exceeds fp16"):
        kept = read_gguf_quantized(tmp_path / "big.gguf", left)
    assert list(left) == ["model.layers.0.mlp.up_proj.weight"] and "Q4_K" in left["model.layers.0.mlp.up_proj.weight"]
    assert len(kept) == 6


def test_a_gguf_of_q4_k_and_q5_0_compiles_with_its_blocks_and_decodes_like_transformers(tmp_path):
    """Attention Q4_K (-> q4_1), gate and up Q5_0 (-> q8_0), down Q4_K (-> q4_1; stored as it is, the MLP stays three
    linears, each in its own layout): `compile(quantize="int8")` takes the seven as converted and decodes as
    transformers does on the file's dequantized weights."""
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf import quants
    from transformers import AutoModelForCausalLM

    import actsparse
    from actsparse.ir.quant import dequantize

    blobs = write_tiny_llama(tmp_path / "k.gguf", types=K_QUANTS, d=256, n_ff=256)
    lm = actsparse.compile(str(tmp_path / "k.gguf"), target=float_dot_target(), mode="dense", quantize="int8",
                           max_seq=24)
    stats = lm.report.pass_stats["quantize"]
    assert stats == {"prequantized": 7, "quantized": 2, "embedding-int8": 1}, stats
    assert lm.report.pass_stats["fuse-gated-mlp"] == {"kept-linears": 1}
    weights = lm.module.graph.weights
    assert {"model.layers.0.self_attn.o_proj.weight.q4_1", "model.layers.0.mlp.down_proj.weight.q4_1"} <= set(weights)
    np.testing.assert_array_equal(dequantize(weights["model.layers.0.mlp.gate_proj.weight.q8_0"], "q8_0", 256),
                                  quants.dequantize(blobs["ffn_gate"], Q.Q5_0))   # Q5_0 as q8_0: lossless
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="k.gguf", dtype=torch.float32).eval()
    ids = np.array([[5, 77, 123, 9, 260]])
    with torch.no_grad():
        ref_logits = model(torch.from_numpy(ids)).logits[0, -1].numpy()
    logits = lm.prefill(ids).logits
    # the fp16 rounding of Q4_K's products (<= 2^-11 a weight) and the int8 lm_head
    np.testing.assert_allclose(logits, ref_logits, atol=0.02 * np.abs(ref_logits).max())
    want = model.generate(torch.from_numpy(ids), max_new_tokens=6, do_sample=False).numpy()
    np.testing.assert_array_equal(lm.generate(ids, max_new_tokens=6), want)


def test_an_empty_prequantized_quantizes_every_gguf_tensor_anew(tmp_path):
    """`prequantized={}` is the way to the fewest bytes: the file's Q5_0 gate (kept, it would be q8_0) is stored in
    int4's q4_0 like everything else, nothing taken from the file's blocks."""
    import actsparse

    write_tiny_llama(tmp_path / "k.gguf", types=K_QUANTS, d=256, n_ff=256)
    lm = actsparse.compile(str(tmp_path / "k.gguf"), target=float_dot_target(), mode="dense", quantize="int4",
                           prequantized={}, max_seq=24)
    stats = lm.report.pass_stats["quantize"]
    assert "prequantized" not in stats and stats["quantized"] >= 7, stats
    weights = lm.module.graph.weights
    assert "model.layers.0.mlp.gate_proj.weight.q4_0" in weights and not any(k.endswith(".q8_0") for k in weights
                                                                              if "layers" in k), sorted(weights)


def test_build_requantize_gguf_flag_and_its_misuse(tmp_path, capsys):
    """`actsparse build x.gguf --quantize int4 --requantize-gguf` stores nothing from the file's blocks; the flag
    without a GGUF and an integer --quantize exits 2 with one line saying which is missing and the way out, nothing
    written."""
    import actsparse
    from actsparse.cli import main

    write_tiny_llama(tmp_path / "k.gguf", types=K_QUANTS, d=256, n_ff=256)
    out = tmp_path / "art"
    assert main(["build", str(tmp_path / "k.gguf"), "-t", "x86", "-m", "dense", "--quantize", "int4",
                 "--requantize-gguf", "--max-seq", "24", "-o", str(out)]) == 0
    stats = actsparse.load(str(out)).report.pass_stats["quantize"]
    assert "prequantized" not in stats and stats["quantized"] >= 7, stats
    capsys.readouterr()
    bad = tmp_path / "bad"
    for given, why in (([str(tmp_path / "k.gguf")], "given no --quantize"),
                       ([str(tmp_path / "k.gguf"), "--quantize", "fp16"], "given --quantize fp16"),
                       ([str(tmp_path), "--quantize", "int4"], f"{tmp_path} is not a .gguf file"),
                       (["m.onnx", "--quantize", "int4"], "m.onnx is not a .gguf file")):
        assert main(["build", *given, "--requantize-gguf", "-o", str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"--requantize-gguf applies to a .gguf file built with --quantize int8 or int4 ({why}); add " \
               "--quantize int4 (or int8) to a .gguf, or leave the flag out" in err, err
        assert "Traceback" not in err and err.count("\n") == 1 and not bad.exists()


def test_storage_note_says_per_gguf_type_what_became_of_its_tensors():
    """Kept as stored, converted (lossless / fp16 rounding), dequantized and quantized anew, dequantized to float32:
    each GGUF type's count per outcome, from the compiled graph's weight names."""
    from actsparse.frontends.gguf_quant import storage_note
    from actsparse.ir.quant import quantize

    def pre(layout):
        return quantize(np.ones((1, 32), np.float32), layout)

    types = {"q": ("blk.0.attn_q.weight", "Q4_K"), "o": ("blk.0.attn_output.weight", "Q4_K"),
             "gate": ("blk.0.ffn_gate.weight", "Q5_0"), "v": ("blk.0.attn_v.weight", "Q8_0"),
             "down": ("blk.0.ffn_down.weight", "Q6_K"), "norm": ("blk.0.attn_norm.weight", "F32"),
             "head": ("output.weight", "F32"), "embd": ("token_embd.weight", "Q4_0")}
    kept = {"q": pre("q4_1"), "o": pre("q4_1"), "gate": pre("q8_0"), "v": pre("q8_0"), "embd": pre("q4_0")}
    stored = ["q.q4_1", "o.t.q8_0", "gate.q8_0", "v.q8_0", "down.t.q8_0", "down.q4_0", "norm", "head.q8_0", "embd"]
    assert storage_note(types, stored, kept) == (
        "GGUF tensors: Q4_0 x1 dequantized to float32; Q4_K x2: 1 kept as q4_1 groups (scale d*sc and offset -dmin*m "
        "rounded to fp16), 1 dequantized, quantized anew as q8_0; Q5_0 x1 kept as q8_0 groups (lossless); "
        "Q6_K x1 dequantized, quantized anew as q4_0, q8_0; Q8_0 x1 kept as stored; F32 x2: 1 as float32, "
        "1 quantized as q8_0")
    fp16 = storage_note(types, ["q.fp16", "norm"], {})   # quantize="fp16" (or none: every one dequantized)
    assert "; Q4_K x2: 1 dequantized, stored as fp16, 1 dequantized to float32; " in fp16, fp16
    assert fp16.endswith("; Q8_0 x1 dequantized to float32; F32 x2 as float32"), fp16


def test_build_report_says_what_became_of_each_gguf_type(tmp_path, capsys):
    """`actsparse build k.GGUF --quantize int8` (any case of the suffix keeps the file's blocks) prints, and `inspect`
    shows, which tensors were kept, converted or quantized anew; `--requantize-gguf` says every one quantized anew,
    no --quantize every one dequantized to float32."""
    from actsparse.cli import main

    write_tiny_llama(tmp_path / "k.GGUF", types=K_QUANTS, d=256, n_ff=256)
    kept = ("GGUF tensors: Q4_K x5 kept as q4_1 groups (scale d*sc and offset -dmin*m rounded to fp16); Q5_0 x2 kept "
            "as q8_0 groups (lossless); F32 x5: 3 as float32, 2 quantized as q8_0")
    out = tmp_path / "art"
    assert main(["build", str(tmp_path / "k.GGUF"), "-m", "dense", "--quantize", "int8", "--max-seq", "24",
                 "-o", str(out)]) == 0
    assert kept in " ".join(capsys.readouterr().out.split())
    assert main(["inspect", str(out)]) == 0
    assert kept in " ".join(capsys.readouterr().out.split())
    assert main(["build", str(tmp_path / "k.GGUF"), "-m", "dense", "--quantize", "int4", "--requantize-gguf",
                 "--max-seq", "24", "-o", str(out)]) == 0
    assert ("GGUF tensors: Q4_K x5 dequantized, quantized anew as q4_0; Q5_0 x2 dequantized, quantized anew as q4_0; "
            "F32 x5: 3 as float32, 2 quantized as q8_0") in " ".join(capsys.readouterr().out.split())
    assert main(["build", str(tmp_path / "k.GGUF"), "-m", "dense", "--max-seq", "24", "-o", str(out)]) == 0
    assert ("GGUF tensors: Q4_K x5 dequantized to float32; Q5_0 x2 dequantized to float32; F32 x5 as float32"
            in " ".join(capsys.readouterr().out.split()))


def test_a_k_quant_moe_ggufs_experts_keep_the_files_values(tmp_path):
    """llama.cpp's Q4_K_M mix for a MoE: the experts' gate / up Q4_K, their down Q6_K (3-D tensors transformers
    merges). Under int4 the routed gate / up stacks are the file's Q4_K blocks as q4_1 groups, found by value within
    fp16's rounding of the products (stat prequantized-by-value), and the down stack the Q6_K values at 8 bits, as the
    file stores it, an output per row (routed-down-as-stored) — not rounded a second time at 4 bits (before: gate / up
    q4_0 from their values, the 6-bit down at 4 bits, logits 10.7% off the float model's; now 2.0%, llama.cpp on the
    same file 2.3%)."""
    import torch
    from transformers import AutoModelForCausalLM

    import actsparse
    from actsparse.benchmarks.decode_models import write_qwen3_moe_gguf

    write_qwen3_moe_gguf(str(tmp_path / "moe.gguf"), d=256, layers=1, experts=4, used=2, heads=4, kv_heads=4,
                         vocab=300, context=64, std=0.05, quant="Q4_K_M")
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="moe.gguf", dtype=torch.float32).eval()
    ids = np.array([[5, 17, 40, 9, 60, 33]])
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits[0, -1].numpy()
    lm = actsparse.compile(str(tmp_path / "moe.gguf"), max_seq=24, quantize="int4")
    stats = lm.report.pass_stats["quantize"]
    assert stats["prequantized-by-value"] == 2 and stats["routed-down-as-stored"] == 1, stats
    (moe,) = [n for n in lm.module.graph.nodes if n.op == "routed_moe"]
    assert [w.attrs["layout"] for w in moe.inputs[1:4]] == ["q4_1", "q4_1", "q8_0"]
    assert moe.attrs["down_rows"] == "outputs"
    note = next(n for n in lm.report.notes if n.startswith("GGUF tensors"))
    assert "2 kept as stored (routed experts)" in note and "Q6_K x1 dequantized, quantized anew as q8_0 (routed " \
        "experts)" in note, note
    got = lm.prefill(ids).logits.reshape(-1)
    assert np.abs(got - want).max() <= 0.04 * np.abs(want).max()
