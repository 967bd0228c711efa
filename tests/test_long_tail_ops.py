"""The long-tail aten ops (frontends/torch_ops_tail.py, ir/ops_indexing.py): interpreter and TVM vs torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import actsparse
from actsparse.frontends import import_torch
from actsparse.ir import evaluate


class LongTail(nn.Module):
    """One use of each long-tail op on a [1, seq, 8] activation."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        h = self.proj(x)
        acts = torch.square(F.relu(h)) + F.softplus(h) + F.relu6(h * 4) + F.threshold(h, 0.1, 0.0) + F.mish(h)
        acts = acts + torch.log1p(h.abs())
        ranks = torch.cumsum(h, dim=-1)
        best, where = h.max(dim=-1, keepdim=True)
        picked = torch.gather(h, -1, where.expand(*h.shape[:-1], 2))
        marked = torch.zeros_like(h).scatter(-1, where, 1.0)
        rot = h.reshape(*h.shape[:-1], 4, 2)[..., 0].repeat_interleave(2, dim=-1)
        more = torch.erfinv(torch.tanh(h) * 0.999) + h.std(-1, keepdim=True) + torch.var(h, -1, correction=0)[..., None]
        values, order = torch.sort(h, dim=-1, descending=True)  # JetMoE's router sorts
        bits = ((h > 0).long() | ((h < -0.5).long() * 2)) + ((h > 0.3).int() & 1) + ((h > 1).long() ^ 3)  # CPM-Ant
        bits = bits + torch.logical_not((h > 0.2).long())  # of a number: x == 0 (CPM-Ant's context mask)
        more = more + values + order + bits
        return acts + ranks + best + picked.sum(-1, keepdim=True) + marked + rot + h.argmax(-1, keepdim=True) + more


def test_long_tail_ops_match_torch_in_the_interpreter_and_tvm():
    torch.manual_seed(0)
    model = LongTail().eval()
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        want = model(x).numpy()
    graph = import_torch(model, (x,))
    assert {"gather", "scatter", "cumsum", "argmax", "erfinv", "sort", "bitwise_or", "bitwise_and", "bitwise_xor"} <= {
        n.op for n in graph.nodes}
    np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], want, rtol=1e-4, atol=1e-5)
    cm = actsparse.compile(model, (x,), mode="dense")
    np.testing.assert_allclose(cm(x).numpy(), want, rtol=1e-4, atol=1e-5)


class LayerTail(nn.Module):
    """One use of each op of frontends/torch_ops_layers.py on a [1, seq, 8] activation (the length kept)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 8)  # token ids in: their length is the symbolic `seq`
        self.conv = nn.Conv1d(8, 8, 3, padding=1, groups=4)  # a "same" grouped conv keeps the symbolic length
        self.norm = nn.RMSNorm(8, eps=1e-5)

    def forward(self, x):
        h = self.proj(x)
        conv = self.conv(h.transpose(1, 2)).transpose(1, 2)
        xielu = torch.where(h > 0, h, torch.expm1(h.clamp(max=0.5)) - h) + F.logsigmoid(h)
        buckets = torch.floor(h * 3) + torch.div(h * 5, 2, rounding_mode="trunc")
        buckets = buckets + torch.div(h, 0.3, rounding_mode="floor")
        norms = self.norm(h) + torch.linalg.vector_norm(h, dim=-1, keepdim=True)
        norms = norms + torch.linalg.vector_norm(h, 1, -1, True)
        tiled = h[..., :4].repeat(1, 1, 2)
        marked = torch.select_scatter(h, h[..., 1] * 2, -1, 0)
        strided = torch.slice_scatter(h, h[..., 1::2] + 1, -1, 0, None, 2)
        masked = torch.ops.aten.index_put(h, [h > 0.2], torch.tensor(0.0))
        windows = h.unfold(-1, 4, 2).flip(-1).flatten(2)[..., :8]  # 3 windows of 4 channels, each reversed
        return conv + xielu + buckets + norms + tiled + marked + strided + masked + windows


class CausalConv(nn.Module):
    """Mamba's causal depthwise conv: pad both ends by K-1, keep the first seq outputs (length seq + 3 in between)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 8)
        self.conv = nn.Conv1d(8, 8, 4, padding=3, groups=8)

    def forward(self, x):
        h = self.proj(x).transpose(1, 2)
        padded = F.pad(h, (2, 0), value=0.5)  # constant_pad_nd
        windows = F.pad(h, (3, 0)).unfold(-1, 4, 1).flip(-1).sum(-1)  # a causal window sum, newest tap first
        return (self.conv(h)[..., : h.shape[-1]] + padded[..., 2:] + windows).transpose(1, 2)


def test_layer_tail_ops_match_torch_in_the_interpreter_and_tvm():
    torch.manual_seed(0)
    model = LayerTail().eval()
    x = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        want = model(x).numpy()
    graph = import_torch(model, (x,))
    assert {"conv1d", "floor", "trunc", "scatter", "where"} <= {n.op for n in graph.nodes}
    assert graph.inputs[0].shape[1] == "seq", "a same-length conv keeps the sequence length symbolic"
    np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], want, rtol=1e-4, atol=1e-5)
    longer = torch.tensor([[2, 7, 1, 8, 2, 8, 1]])
    with torch.no_grad():
        np.testing.assert_allclose(evaluate(graph, [longer.numpy()])[0], model(longer).numpy(), rtol=1e-4, atol=1e-5)
    cm = actsparse.compile(model, (x,), mode="dense")
    np.testing.assert_allclose(cm(x).numpy(), want, rtol=1e-4, atol=1e-5)


def test_a_padded_causal_conv_imports_with_a_symbolic_length_and_matches_torch_at_two_lengths():
    torch.manual_seed(0)
    model = CausalConv().eval()
    x = torch.tensor([[3, 1, 4, 1, 5, 9]])
    graph = import_torch(model, (x,))
    assert graph.inputs[0].shape == (1, "seq")  # no fallback to static shapes
    conv = next(n for n in graph.nodes if n.op == "conv1d")
    assert conv.shape[-1] == "seq+3"  # kernel 4, padding 3 on both ends; `[..., :seq]` cuts it back
    cm = actsparse.compile(graph, (x.numpy(),), mode="dense")
    for ids in (x, torch.tensor([[2, 7, 1]]), torch.tensor([[2, 7, 1, 8, 2, 8, 1, 8, 2]])):
        with torch.no_grad():
            want = model(ids).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(cm(ids.numpy())), want, rtol=1e-4, atol=1e-5)


class Convolutions(nn.Module):
    """Mamba's conv then SiLU (depthwise, padded by K-1), a dilated depthwise conv with a bias, a grouped conv with
    two channels per group and four outputs per group (Zaya's kind), and an ungrouped one (TVM's conv1d)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 8)
        self.mamba = nn.Conv1d(8, 8, 4, padding=3, groups=8, bias=False)
        self.dilated = nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.grouped = nn.Conv1d(8, 16, 3, padding=1, groups=4)
        self.full = nn.Conv1d(16, 8, 2, padding=1)

    def forward(self, x):
        h = self.proj(x).transpose(1, 2)
        out = F.silu(self.mamba(h)[..., : h.shape[-1]]) + self.dilated(h)[..., : h.shape[-1]]
        out = out + self.full(self.grouped(h))[..., : h.shape[-1]]
        return out.transpose(1, 2)


@pytest.mark.parametrize("target", ["x86", "cuda"])
def test_grouped_convs_lower_to_shifted_multiply_adds_or_matmuls_and_match_torch(target):
    """A depthwise conv (one filter per channel) lowers to K shifted multiply-adds, elementwise ops that fuse with
    the SiLU after it, and another grouped conv to a batched matmul over its shifted windows: TVM's CUDA rules
    (dlight) fail on its grouped conv1d fused with a consumer (a Mamba hybrid did not build for CUDA) and on the
    cross-thread reduction of a grouped one (Zaya). The CPU build equals torch; the CUDA one builds (no GPU here)."""
    from actsparse import targets
    from actsparse.codegen.build import relax_module

    from .kernel_cases import require_nvcc

    torch.manual_seed(0)
    model = Convolutions().eval()
    x = torch.tensor([[3, 1, 4, 1, 5, 9]])
    graph = import_torch(model, (x,))
    assert graph.count("conv1d") == 4
    mod, _, _ = relax_module(graph, targets.get(target))
    conv_calls = mod["main"].script().count("R.nn.conv1d")
    assert conv_calls == 1  # the ungrouped one only
    if target == "cuda":
        require_nvcc()
        assert actsparse.compile(graph, (x.numpy(),), target="cuda", mode="dense") is not None
        return
    cm = actsparse.compile(graph, (x.numpy(),), mode="dense")
    for ids in (x, torch.tensor([[2, 7, 1, 8, 2, 8, 1, 8, 2]])):
        with torch.no_grad():
            want = model(ids).numpy()
        np.testing.assert_allclose(np.asarray(cm(ids.numpy())), want, rtol=1e-5, atol=1e-6)


class LastColumnWritten(nn.Module):
    """XLNet's generation inputs at a symbolic length: a [1, seq+1, seq+1] mask whose last column and last row are
    written (`m[:, :, -1] = 1`: a select_scatter at an index counted from a symbolic end), and a view filled in place
    with a 0-d tensor's value (aten.fill.Tensor once functionalized)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 8)

    def forward(self, x):
        h = self.proj(x)
        n = x.shape[1] + 1
        mask = torch.zeros(1, n, n)
        mask[:, :, -1] = 1.0
        mask[:, -1, :] = 2.0
        weights = mask.cumsum(-1).sum(-1)[:, 1:, None]  # row i < seq: 1; the last row: 2 + 4 + ... + 2n
        filled = h.clone()
        filled[:, :, 2:5].fill_(h[0, -1, 0])  # functionalized after the table was read: fill.Tensor + slice_scatter
        return weights * h + filled


def test_writes_at_a_symbolic_end_and_a_fill_by_a_tensor_keep_the_length_symbolic():
    torch.manual_seed(0)
    model = LastColumnWritten().eval()
    x = torch.tensor([[3, 1, 4, 1]])
    graph = import_torch(model, (x,))
    assert graph.inputs[0].shape == (1, "seq")  # no fallback to static shapes
    assert any(n.op == "concat" and n.shape[-1] == "seq+1" for n in graph.nodes)  # the written column, concatenated
    cm = actsparse.compile(graph, (x.numpy(),), mode="dense")
    for ids in (x, torch.tensor([[2, 7]]), torch.tensor([[2, 7, 1, 8, 2, 8, 1]])):
        with torch.no_grad():
            want = model(ids).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(cm(ids.numpy())), want, rtol=1e-4, atol=1e-5)


class ChunkPadded(nn.Module):
    """A chunked scan's padding (Mamba-2, gated DeltaNet): the length rounded up to a multiple of the chunk, a size
    (seq + (4 - seq % 4) % 4) that a floor-division dim names: 4*((seq+3)//4) (ir/dims.py)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 8)

    def forward(self, x):
        h = self.proj(x)
        length = h.shape[1]
        chunks = F.pad(h, (0, 0, 0, (4 - length % 4) % 4)).reshape(1, -1, 4, 8).cumsum(2)
        return chunks.reshape(1, -1, 8)[:, :length]


def test_a_size_rounded_up_to_a_multiple_of_the_chunk_imports_with_a_symbolic_length():
    torch.manual_seed(0)
    model = ChunkPadded().eval()
    graph = import_torch(model, (torch.tensor([[3, 1, 4, 1, 5, 9]]),))  # two chunks of 4
    assert graph.inputs[0].shape == (1, "seq")
    assert "4*((seq+3)//4)" in {d for n in graph.nodes for d in n.shape}
    for x in (torch.tensor([[3, 1, 4, 1, 5, 9]]), torch.tensor([[2, 7, 1, 8, 2]])):
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], want, rtol=1e-4, atol=1e-5)


class ComplexRotary(nn.Module):
    """Rotary embedding written with complex numbers (Llama 4, DeepSeek-V2): polar, view_as_complex, a complex
    product, view_as_real."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 8)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)), persistent=False)

    def forward(self, ids):
        x = self.proj(ids)  # [1, seq, 8]
        positions = torch.arange(ids.shape[1]).float()[None, :, None]
        freqs = torch.polar(torch.ones_like(positions * self.inv_freq), positions * self.inv_freq) * 0.5
        pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * freqs).flatten(2) + torch.view_as_real(freqs - pairs).flatten(2)


def test_complex_rotary_matches_torch_as_real_pairs():
    torch.manual_seed(0)
    model = ComplexRotary().eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        want = model(ids).numpy()
    graph = import_torch(model, (ids,))
    assert graph.inputs[0].shape[1] == "seq"
    np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-5, atol=1e-6)
    longer = torch.tensor([[2, 7, 1, 8, 2, 8, 1]])
    with torch.no_grad():
        np.testing.assert_allclose(evaluate(graph, [longer.numpy()])[0], model(longer).numpy(), rtol=1e-5, atol=1e-6)


class AdvancedIndex(nn.Module):
    """Advanced indexing of several adjacent dims, none of size 1 (transformers' mask functions read
    `mask[batch_idx, kv_idx]`; MusicGen's mask has a row per codebook), with negative indices among them."""

    def forward(self, x):  # x: [4, seq, 8]
        rows = torch.arange(4).reshape(4, 1) - 2  # -2, -1, 0, 1: negative rows count from the end
        cols = torch.arange(x.shape[1]).reshape(1, -1)
        both = x[rows, cols]  # [4, seq, 8]
        inner = x[:, torch.tensor([[0], [-1]]), torch.tensor([3, 5, -8])]  # dims 1 and 2 -> [4, 2, 3]
        return both.sum(-1).sum(-1) + inner.sum((1, 2))


def test_advanced_indexing_of_several_dims_matches_torch_in_the_interpreter_and_tvm():
    model = AdvancedIndex().eval()
    x = torch.randn(4, 5, 8)
    want = model(x).numpy()
    graph = import_torch(model, (x,), dynamic_seq=False)
    assert graph.count("index_select") == 2
    np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], want, rtol=1e-5, atol=1e-5)
    cm = actsparse.compile(graph, (x.numpy(),), mode="dense")
    np.testing.assert_allclose(np.asarray(cm(x.numpy())), want, rtol=1e-5, atol=1e-5)


class EmptyScatter(nn.Module):
    """A scatter that writes nothing (an empty section of Qwen3.5's interleaved M-RoPE at small head dims)."""

    def forward(self, x):
        h = x * 2
        return h.scatter(-1, torch.zeros(*h.shape[:-1], 0, dtype=torch.long), h[..., :0]) + 1


def test_a_scatter_of_nothing_builds_and_leaves_its_input():
    """TVM's scatter kernel divides by the index extent; an empty index lowers to its input instead."""
    x = torch.randn(1, 3, 8)
    graph = import_torch(EmptyScatter(), (x,))
    assert "scatter" in {n.op for n in graph.nodes}
    cm = actsparse.compile(EmptyScatter(), (x,), mode="dense")
    np.testing.assert_allclose(cm(x).numpy(), (x * 2 + 1).numpy(), rtol=1e-6)


class TailOfAll(nn.Module):
    """`h[:, -n:]` of a sequence n long (XLM keeps the ids not yet cached: `ids[:, -(n - cached):]`)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 8)

    def forward(self, ids):
        h = self.proj(ids)
        return h[:, -ids.shape[1]:] * 2


def test_a_slice_from_minus_the_symbolic_length_keeps_it_symbolic():
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    model = TailOfAll().eval()
    graph = import_torch(model, (ids,))
    assert graph.inputs[0].shape[1] == "seq", "x[-seq:] is all of x: no fallback to static shapes"
    longer = torch.tensor([[2, 7, 1, 8, 2, 8, 1]])
    with torch.no_grad():
        np.testing.assert_allclose(evaluate(graph, [longer.numpy()])[0], model(longer).numpy(), rtol=1e-6)


@pytest.mark.parametrize("arch", ["lfm3", "zaya"])
def test_short_conv_architectures_import_with_a_dynamic_length_and_match_torch_at_two_lengths(arch):
    """LFM3's short convolution (kernel 7, padding 6, then `[..., :seq]`) and ZAYA's depthwise conv over seq + 2:
    one import, run at two sequence lengths."""
    pytest.importorskip("transformers")
    from actsparse.frontends.hf import CausalLMLogits
    from actsparse.scripts.arch_table import build_tiny, example_ids

    model = build_tiny(arch)
    wrapped = CausalLMLogits(model).eval()
    graph = import_torch(wrapped, (example_ids(model),))
    assert graph.inputs[0].shape[-1] == "seq"
    assert any(n.op == "conv1d" and isinstance(n.shape[-1], str) and n.shape[-1] != "seq" for n in graph.nodes)
    for seq in (3, 9):
        ids = example_ids(model, seq)
        with torch.no_grad():
            want = wrapped(ids).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


class Einsums(nn.Module):
    """Mamba-2's chunked-scan einsums (Falcon-H1, Zamba2, ...) on a symbolic length, with F.pad, floor_divide,
    concatenate, max.other and rms_norm beside them, and the other einsum forms: one operand, an outer product, two
    contracted labels, an implicit output; with `ellipsis`, one einsum torch must decompose (torch_einsum.py
    leaves it)."""

    def __init__(self, ellipsis: bool = False):
        super().__init__()
        self.proj = nn.Embedding(32, 24)
        self.ellipsis = ellipsis

    def forward(self, x):
        h = self.proj(x)  # [1, seq, 24]
        seq = h.shape[1]
        C, B = h[..., :6].reshape(1, 1, seq, 2, 3), h[..., 6:12].reshape(1, 1, seq, 2, 3)
        X = h[..., 12:20].reshape(1, 1, seq, 2, 4)
        G = torch.einsum("bclhn,bcshn->bclsh", C, B)
        Y = torch.einsum("bclsh,bcshp->bclhp", G, X)  # contracted over the symbolic length
        states = torch.einsum("bclhn,bclhp->bchpn", B, X)
        decay = F.pad(h[:, :2, 20:22].sum(1)[:, None, None], (0, 0, 1, 0))  # [1, 1, 2, 2]: bzch
        states = torch.einsum("bzch,bzhpn->bchpn", decay.exp(), states.expand(1, 2, 2, 4, 3))  # two right labels
        CS = torch.einsum("bclhn,bchpn->bclhp", C, states[:, :1])
        out = (Y + CS).reshape(1, seq, 8)
        v, w = h[0, :, :8], h[0, :, 8:16]
        out = out + torch.einsum("sd->ds", v).t() + torch.einsum("s,d->sd", v[:, 0], w[0])  # one operand; outer
        out = out + torch.einsum("sd,sd->", v, w) + torch.einsum("ij,jk", v, w.t() @ w)  # two; implicit
        buckets = torch.floor_divide((x * 7)[..., None], torch.tensor([3, 5, 4, 2, 3, 5, 4, 2]))
        out = out + buckets + torch.concatenate([v[:, :4], w[:, 4:]], -1)  # Zamba2's spelling of cat
        out = out + torch.max(v, w) + F.rms_norm(h, (24,), eps=1e-5)[..., :8]  # max.other (xLSTM); rms_norm
        if self.ellipsis:
            out = out + torch.einsum("...d,...d->...", h, h)[..., None]
        return out


@pytest.mark.parametrize("ellipsis", (False, True))
def test_einsums_pad_and_floor_divide_import_without_torchs_decompositions(monkeypatch, ellipsis):
    """Mapped einsum forms, constant padding, floor_divide and concatenate import as they are, so the program is not
    re-traced through torch's decompositions (seconds per hybrid compile); an ellipsis einsum still is, and both
    match torch at two lengths, the first also through TVM."""
    from torch.export import ExportedProgram

    decomposed = []
    real = ExportedProgram.run_decompositions
    monkeypatch.setattr(ExportedProgram, "run_decompositions",
                        lambda self, *a, **k: decomposed.append(1) or real(self, *a, **k))
    torch.manual_seed(0)
    model = Einsums(ellipsis).eval()
    x = torch.tensor([[3, 1, 4, 1, 5]])
    graph = import_torch(model, (x,))
    assert len(decomposed) == int(ellipsis)
    assert graph.inputs[0].shape == (1, "seq") and sum(n.op == "matmul" for n in graph.nodes) >= 4
    for ids in (x, torch.tensor([[2, 7, 1, 8, 2, 8, 1]])):
        with torch.no_grad():
            np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], model(ids).numpy(), rtol=1e-4, atol=1e-4)
    if not ellipsis:
        cm = actsparse.compile(graph, (x.numpy(),), mode="dense")
        with torch.no_grad():
            np.testing.assert_allclose(np.asarray(cm(x.numpy())), model(x).numpy(), rtol=1e-4, atol=1e-4)


class EyeBroadcast(nn.Module):
    """torch.eye of the symbolic length and of a static size, and broadcast_tensors (XLNet's target mask, Kimi's
    chunk masks, Gemma 3n's per-layer inputs)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 8)

    def forward(self, ids):
        h = self.proj(ids)  # [1, seq, 8]
        mixed = (torch.eye(ids.shape[1]) - 0.5 * torch.eye(ids.shape[1], dtype=torch.float64).float()) @ h[0]
        a, b = torch.broadcast_tensors(h[:, :, :1], h[:, :1, :])  # both [1, seq, 8]
        return mixed[None] + a * b + (h @ torch.eye(8, 3)).sum(-1, keepdim=True)


def _imported_as_mapped(monkeypatch, model, x):
    """`model` imported on `x` with a symbolic length and without torch's whole-program decompositions (every op
    it holds is in the aten table)."""
    from torch.export import ExportedProgram

    decomposed = []
    real = ExportedProgram.run_decompositions
    monkeypatch.setattr(ExportedProgram, "run_decompositions",
                        lambda self, *a, **k: decomposed.append(1) or real(self, *a, **k))
    graph = import_torch(model, (x,))
    assert not decomposed and graph.inputs[0].shape == (1, "seq")
    return graph


def test_eye_and_broadcast_tensors_import_without_torchs_decompositions(monkeypatch):
    torch.manual_seed(0)
    model = EyeBroadcast().eval()
    x = torch.tensor([[3, 1, 4, 1, 5]])
    graph = _imported_as_mapped(monkeypatch, model, x)
    assert sum(n.op == "arange" for n in graph.nodes) >= 2 and any(n.op == "expand" for n in graph.nodes)
    for ids in (x, torch.tensor([[2, 7, 1, 8, 2, 8, 1]])):
        with torch.no_grad():
            np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], model(ids).numpy(), rtol=1e-5, atol=1e-6)
    cm = actsparse.compile(graph, (x.numpy(),), mode="dense")
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(cm(x.numpy())), model(x).numpy(), rtol=1e-5, atol=1e-6)



class TensorSplit(nn.Module):
    """torch.tensor_split at a symbolic position (Kimi-Linear's and Zamba2's prompt split since transformers 5.25:
    at seq - kept, here with the last token kept and with none kept, whose empty part nothing reads) and into three
    sections of a static dim."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(32, 12)

    def forward(self, ids):
        h = self.proj(ids)  # [1, seq, 12]
        seq = ids.shape[1]
        head, last = torch.tensor_split(h, [seq - 1], dim=1)
        whole, _ = torch.tensor_split(h, [seq], dim=1)
        a, b, c = torch.tensor_split(h, 3, dim=-1)  # [1, seq, 4] each
        return torch.cat([head, 2 * last], dim=1) + whole + torch.cat([a * b, c, -c], dim=-1)


def test_tensor_split_imports_at_a_symbolic_position_without_torchs_decompositions(monkeypatch):
    torch.manual_seed(0)
    model = TensorSplit().eval()
    x = torch.tensor([[3, 1, 4, 1, 5]])
    graph = _imported_as_mapped(monkeypatch, model, x)
    for ids in (x, torch.tensor([[2, 7, 1, 8, 2, 8, 1]])):
        with torch.no_grad():
            np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], model(ids).numpy(), rtol=1e-5, atol=1e-6)
