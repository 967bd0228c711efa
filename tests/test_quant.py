"""Quantized layouts (ir.quant): byte-identical to GGUF's Q8_0 / Q4_0 / Q4_1 blocks (gguf.quants is the oracle),
lossless round trips of what they store, ragged rows padded with exact zeros, and clear errors for bad requests."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actsparse.ir import quant

GGUF_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}


@pytest.mark.parametrize("layout", list(GGUF_TYPES))
def test_quantize_is_byte_identical_to_gguf_and_dequantizes_like_it(layout):
    gguf = pytest.importorskip("gguf")
    from gguf import quants

    w = np.random.default_rng(0).standard_normal((6, 128)).astype(np.float32)
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[layout])
    ours = quant.quantize(w, layout)
    blocks = quant.to_gguf_blocks(ours.blob, layout, 128)
    np.testing.assert_array_equal(blocks, quants.quantize(w, qtype))
    np.testing.assert_array_equal(ours.dequantize(), quants.dequantize(blocks, qtype))
    np.testing.assert_array_equal(quant.from_gguf_blocks(blocks, layout, 128), ours.blob)  # lossless both ways


@given(layout=st.sampled_from(["q8_0", "q4_0", "q4_1"]), rows=st.integers(1, 3), cols=st.integers(1, 200),
       seed=st.integers(0, 99))
@settings(max_examples=20)
def test_split_rows_hold_the_codes_then_the_scales_then_the_offsets(layout, rows, cols, seed):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    q = quant.quantize(w, layout)
    lay = quant.layout(layout)
    assert lay.split and quant.LAYOUT_VERSIONS[layout] == quant.SPLIT
    g = -(-cols // 32)
    hb, bb, cb = lay.header_bytes, lay.block_bytes, lay.code_bytes  # q8_0: 32 code bytes a group, q4: 16
    assert q.blob.shape == (rows, bb * g)  # GGUF's size: nothing padded
    blocks = quant.to_gguf_blocks(q.blob, layout, cols).reshape(rows, g, bb)
    np.testing.assert_array_equal(q.blob[:, :cb * g].reshape(rows, g, cb), blocks[..., hb:])
    np.testing.assert_array_equal(q.blob[:, cb * g:(cb + 2) * g].reshape(rows, g, 2), blocks[..., :2])  # scales
    assert lay.scale_byte(1, g) == cb * g + 2 and lay.codes_byte(1, g) == cb
    if lay.offset:  # then the offsets, where the layout says they are
        np.testing.assert_array_equal(q.blob[:, 18 * g:].reshape(rows, g, 2), blocks[..., 2:4])
        assert lay.offset_byte(1, g) == 18 * g + 2


@given(layout=st.sampled_from(["q8_0", "q4_0", "q4_1"]), rows=st.integers(1, 4), groups=st.integers(1, 9),
       seed=st.integers(0, 999))
@settings(max_examples=20)
def test_random_gguf_blocks_convert_losslessly_both_ways(layout, rows, groups, seed):
    """Any bytes of GGUF blocks (NaN / Inf halves included) come back unchanged through our layout, and a blob of
    random bytes through GGUF's: the conversion moves bytes, never values."""
    lay = quant.layout(layout)
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (rows, groups * lay.block_bytes), dtype=np.uint8)
    cols = groups * 32 - int(rng.integers(0, 32))  # a partial last group keeps its stored bytes too
    blob = quant.from_gguf_blocks(blocks, layout, cols)
    assert blob.shape == (rows, lay.row_bytes(cols))
    np.testing.assert_array_equal(quant.to_gguf_blocks(blob, layout, cols), blocks)
    other = rng.integers(0, 256, blob.shape, dtype=np.uint8)
    np.testing.assert_array_equal(quant.from_gguf_blocks(quant.to_gguf_blocks(other, layout, cols), layout, cols),
                                  other)


@settings(max_examples=20)
@given(kind=st.sampled_from(["int8", "int4", "q4_1"]), rows=st.integers(1, 5), cols=st.integers(1, 100),
       seed=st.integers(0, 999))
def test_quantization_error_is_bounded_and_requantizing_is_lossless(kind, rows, cols, seed):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    q = quant.quantize(w, kind)
    lay = quant.layout(q.layout)
    assert q.blob.shape == (rows, lay.row_bytes(cols)) and q.shape == (rows, cols)
    deq = q.dequantize()
    groups = np.pad(np.abs(w), ((0, 0), (0, -cols % 32))).reshape(rows, -1, 32).max(-1)
    # half a step (q8_0: amax / 127; q4_1: (max - min) / 15 <= 2 amax / 15); q4_0 (searched scale) one step of
    # amax / 8 at most: the search may clip the extreme value where the rest then rounds finer
    err = {"q8_0": groups / 127 * 0.51, "q4_0": groups / 8 * 1.001, "q4_1": groups * 2 / 15 * 0.51}[lay.name]
    bound = np.repeat(err, 32, axis=1)[:, :cols] + 1e-3 * np.repeat(groups, 32, axis=1)[:, :cols]
    assert np.all(np.abs(deq - w) <= bound)
    # the stored values are representable exactly: quantizing them again changes nothing (symmetric layouts)
    if lay.name != "q4_1":
        np.testing.assert_array_equal(quant.quantize(deq, kind).dequantize(), deq)


def test_int4_searches_the_scale_and_beats_max_abs_rounding():
    w = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    searched = quant.quantize(w, "int4").dequantize()
    max_abs = quant.quantize(w, "q4_0").dequantize()   # ggml's own rule, byte-identical to GGUF
    err_searched, err_max_abs = ((searched - w) ** 2).sum(), ((max_abs - w) ** 2).sum()
    assert err_searched < 0.9 * err_max_abs, (err_searched, err_max_abs)
    # never worse in any group: the max-abs scale is among the candidates (step 0)
    group_err = lambda d: ((d - w) ** 2).reshape(64, -1, 32).sum(-1)   # noqa: E731
    assert np.all(group_err(searched) <= group_err(max_abs) * (1 + 1e-5) + 1e-7)


def test_the_scale_search_gives_each_group_its_own_scale_in_chunks_on_threads(monkeypatch):
    """q4_0_search_scales runs SEARCH_CHUNK groups at a time on a thread pool: the chunks land where their groups
    are (the same scales as one chunk for the whole array), an all-zero group's scale is 0."""
    w = np.random.default_rng(2).standard_normal((37, 96)).astype(np.float32) * np.linspace(0.1, 3, 37)[:, None]
    w[5, 32:64] = 0.0
    whole = quant.quantize(w, "int4")
    monkeypatch.setattr(quant, "SEARCH_CHUNK", 7)   # 111 groups: 16 chunks, the last one short
    chunked = quant.quantize(w, "int4")
    np.testing.assert_array_equal(chunked.blob, whole.blob)
    assert quant.dequantize(chunked.blob, "q4_0", 96)[5, 32:64].tolist() == [0.0] * 32


def test_ragged_rows_pad_their_last_group_with_exact_zeros():
    w = np.ones((2, 40), np.float32)
    for kind in ("int8", "int4"):
        q = quant.quantize(w, kind)
        full = quant.dequantize(q.blob, q.layout, 64)  # the padded columns decode to exactly 0
        np.testing.assert_array_equal(full[:, 40:], 0)
        np.testing.assert_allclose(q.dequantize(), w, rtol=1e-3)  # fp16 scales


def test_bad_requests_are_one_clear_error():
    w = np.zeros((2, 64), np.float32)
    with pytest.raises(quant.QuantizationError, match="group size 48 is not supported.*padded"):
        quant.quantize(w, "int4", group_size=48)
    with pytest.raises(quant.QuantizationError, match="unknown quantization 'int3'; valid: int8, int4"):
        quant.quantize(w, "int3")
    with pytest.raises(quant.QuantizationError, match=r"uint8 \[2, 36\]"):
        quant.QuantizedWeight(np.zeros((2, 35), np.uint8), "q4_0", (2, 64))
