"""Affine symbolic dims (ir/dims.py): sizes such as `seq+1` (attention scores with a sink column, gpt-oss) and
slices starting at `64-seq` or `kv-seq` (a causal mask's rows, GPT-Neo) import with the sequence length kept
symbolic, verify, run in the interpreter and compile with TVM for any length."""

import numpy as np
import pytest
import torch
from torch import nn

from actsparse.ir import dims
from actsparse.ir.types import TensorType

torch.set_num_threads(1)


def test_dims_are_canonical_affine_sums():
    assert dims.add("kv", 1) == "kv+1" and dims.sub("kv+1", 1) == "kv" and dims.sub("kv", "kv-seq") == "seq"
    assert dims.add("-seq", "kv") == "kv-seq" and dims.sub("seq+2", "seq") == 2 and dims.add(3, 4) == 7
    assert dims.terms("2*kv-seq+1") == ({"kv": 2, "seq": -1}, 1)
    assert dims.evaluate("2*kv-seq+1", {"kv": 5, "seq": 3}) == 8
    assert TensorType.parse("f32[1,kv+1,kv-seq]").shape == (1, "kv+1", "kv-seq")
    with pytest.raises(ValueError, match="affine"):
        TensorType.parse("f32[1,kv*seq]")


class Sinks(nn.Module):
    """Softmax over the scores and one learned sink column, the sink then dropped (gpt-oss), plus a window of a
    static table that starts at a symbolic position (GPT-Neo's causal-mask rows), plus the length as a value."""

    def __init__(self):
        super().__init__()
        self.sink = nn.Parameter(torch.tensor(0.5))
        self.emb = nn.Embedding(16, 8)
        self.register_buffer("table", torch.randn(32, 8))

    def forward(self, ids):
        x = self.emb(ids)  # [1, seq, 8]
        scores = x @ x.transpose(1, 2)  # [1, seq, seq]
        sink = self.sink.expand(1, scores.shape[1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]  # [1, seq, seq+1] -> [.., seq]
        rows = self.table[32 - ids.shape[1]:]  # [seq, 8], starting at 32 - seq
        return probs @ x + rows + ids.shape[1]  # the length as a number (positions from it: TrOCR, MVP)


def test_a_sink_column_and_a_symbolic_slice_start_import_compile_and_match_torch():
    import actsparse
    from actsparse.frontends.torch_export import import_torch
    from actsparse.ir import evaluate

    model = Sinks().eval()
    ids = torch.arange(5).reshape(1, 5) % 16
    graph = import_torch(model, (ids,))
    shapes = {d for n in graph.nodes for d in n.shape}
    assert graph.inputs[0].shape == (1, "seq") and "seq+1" in shapes
    assert any(n.op == "slice" and n.attrs["start"] == "-seq+32" for n in graph.nodes)
    compiled = actsparse.compile(graph, (ids.numpy(),), mode="dense")
    for n in (3, 7):
        ids = (torch.arange(n).reshape(1, n) * 3) % 16
        with torch.no_grad():
            want = model(ids).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(compiled(ids.numpy())), want, rtol=1e-4, atol=1e-5)


class Streams(nn.Module):
    """A main stream and two predicting streams along the sequence ([1, 3*seq, 8], as ProphetNet's n-gram
    attention concatenates them), chunked back into three parts of `seq` rows each."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)

    def forward(self, ids):
        x = self.emb(ids)
        main, first, second = torch.cat([x, 2 * x, x + 1], dim=1).chunk(3, dim=1)
        return main * first + second


def test_chunks_of_a_symbolic_dim_slice_at_affine_bounds_and_match_torch():
    from actsparse.frontends.torch_export import import_torch
    from actsparse.ir import evaluate

    model = Streams().eval()
    graph = import_torch(model, (torch.arange(5).reshape(1, 5) % 16,))
    assert graph.inputs[0].shape == (1, "seq")
    assert {(n.attrs["start"], n.attrs["end"]) for n in graph.nodes if n.op == "slice"} >= {("seq", "2*seq"),
                                                                                           ("2*seq", "3*seq")}
    for n in (3, 7):
        ids = (torch.arange(n).reshape(1, n) * 3) % 16
        with torch.no_grad():
            want = model(ids).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-5, atol=1e-6)


# --- floor division and modulo by constants (a chunked scan's padding, DeepSeek-V4's compressed length) -----------
PAD_TO_64 = "seq + (64 - seq % 64) % 64"  # torch's Mod(64 - Mod(seq, 64), 64) padding, spelled as Python


@pytest.mark.parametrize("text, canonical", [
    (PAD_TO_64, "64*((seq+63)//64)"),  # a padded length is a multiple of the chunk
    (f"({PAD_TO_64}) // 64", "(seq+63)//64"),  # ... and the number of chunks a ceiling division
    ("seq % 8 % 8", "seq-8*(seq//8)"),  # Mod(Mod(x, c), c) = Mod(x, c); a modulo is held through its division
    ("(seq + 24) % 8", "seq-8*(seq//8)"),  # (x + c*k) mod c = x mod c
    ("(seq + 24) // 8", "seq//8+3"),  # multiples of c leave the division
    ("(2*seq + 1) // 4", "seq//2"),  # a common factor of the coefficients and the divisor
    ("(-seq) // 64", "-((seq+63)//64)"),  # floor(-x / c) = -ceil(x / c)
    ("seq // 4 // 2", "seq//8"),  # nested divisions
    ("128*(seq//128)", "128*(seq//128)"),
    ("seq//8*8 + seq%8", "seq"),
    ("kv - seq + (kv + 1) // 1", "2*kv-seq+1"),
    ("(seq + 3) % 1", 0),
])
def test_floor_division_and_modulo_rewrite_to_one_canonical_form(text, canonical):
    assert dims.canonical(text) == canonical
    if isinstance(canonical, str):
        assert dims.canonical(canonical) == canonical  # the printed form reads back as itself
        for seq in (0, 1, 5, 63, 64, 65, 200):  # and means what the text means (Python's floor semantics)
            env = {"seq": seq, "kv": seq + 3}
            assert dims.evaluate(canonical, env) == eval(text, {}, env) == eval(canonical, {}, env)


def test_dims_with_divisions_build_parse_and_lower():
    pad = dims.add("seq", dims.mod(dims.sub(64, dims.mod("seq", 64)), 64))
    assert pad == "64*((seq+63)//64)" and dims.floordiv(pad, 64) == "(seq+63)//64" and dims.names(pad) == ["seq"]
    assert dims.mod(pad, 64) == 0 and dims.sub(pad, "seq") == "64*((seq+63)//64)-seq"
    assert dims.terms("64*((seq+63)//64)-seq") == ({"(seq+63)//64": 64, "seq": -1}, 0)
    assert TensorType.parse("f32[1,64*((seq+63)//64),(seq+63)//64]").shape == (1, pad, "(seq+63)//64")
    assert TensorType.parse("f32[seq + (64 - seq % 64) % 64]").shape == (pad,)  # read in canonical form
    for bad in ("seq//kv", "seq%0", "kv*seq", "(seq+1"):
        with pytest.raises(ValueError, match="affine expression"):
            TensorType.parse(f"f32[{bad}]")
    tirx = pytest.importorskip("tvm").tirx
    seq = tirx.Var("seq", "int64")
    expr = dims.build(pad, {"seq": seq}.__getitem__, tirx.floordiv)
    assert str(expr) == str(64 * tirx.floordiv(seq + 63, 64))


@pytest.mark.parametrize("text, canonical", [
    ("min(2048, seq)", "min(seq,2048)"),  # a top-k indexer's k: the symbolic argument first
    ("max(0, 64 - seq)", "-(min(seq,64))+64"),  # MPT's bias offset: max(x, y) = -min(-x, -y), constants out
    ("64 - max(0, 64 - seq)", "min(seq,64)"),  # ... so the slice it starts is min(seq, 64) long
    ("min(seq + 3, seq)", "seq"),  # arguments a constant apart are decided
    ("min(kv, seq) + min(seq, kv)", "2*(min(kv,seq))"),  # arguments in one order
    ("(min(seq, 64) + 63) // 64", "(min(seq,64)+63)//64"),  # a bound inside a division ...
    ("min((seq + 63) // 64, 3)", "min((seq+63)//64,3)"),  # ... and a division inside a bound
])
def test_min_and_max_of_dims_rewrite_to_one_canonical_form(text, canonical):
    assert dims.canonical(text) == canonical
    assert dims.canonical(canonical) == canonical and dims.is_dim_text(canonical)
    for seq in (0, 1, 5, 63, 64, 65, 200):
        env = {"seq": seq, "kv": seq + 3}
        assert dims.evaluate(canonical, env) == eval(text, {}, env) == eval(canonical, {}, env)
    assert TensorType.parse(f"f32[1,{text}]").shape == (1, canonical)


def test_min_and_max_dims_lower_to_tvm_min_and_max():
    tirx = pytest.importorskip("tvm").tirx
    seq = tirx.Var("seq", "int64")
    expr = dims.build("-(min(seq,64))+64", {"seq": seq}.__getitem__, tirx.floordiv, tirx.min, tirx.max)
    assert str(expr) == str(-1 * tirx.min(seq, 64) + 64)


class TopK(nn.Module):
    """A top-k indexer as DeepSeek-V3.2's: k = min(4, seq) of a length-dependent score row."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 4)

    def forward(self, ids):
        x = self.emb(ids)
        scores = x.sum(-1)
        k = torch.sym_min(4, x.shape[1])  # as transformers writes it: a size torch keeps symbolic
        values, _ = scores.topk(k, dim=-1)
        return values


def test_a_top_k_of_min_c_and_the_length_imports_with_a_dynamic_length():
    """torch sizes the top-k by `Min(4, seq)`: the graph keeps it as a dim of its own (the first k of the sorted
    axis), and the interpreter and the TVM build match torch on both sides of the bound."""
    import actsparse
    from actsparse.frontends.torch_export import import_torch
    from actsparse.ir import evaluate

    torch.manual_seed(0)
    model = TopK().eval()
    graph = import_torch(model, (torch.randint(0, 16, (1, 6)),), dynamic_seq=True)
    assert graph.outputs[0].shape == (1, "min(seq,4)")
    cm = actsparse.compile(graph, (np.zeros((1, 6), np.int64),), mode="dense")
    for n in (2, 6, 9):
        ids = torch.randint(0, 16, (1, n))
        want = model(ids).detach().numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-5)
        np.testing.assert_allclose(cm(ids.numpy()), want, rtol=1e-5)


class ChunkScan(nn.Module):
    """A chunked scan as Mamba-2 and gated-DeltaNet layers write it: pad the sequence to a multiple of the chunk,
    scan within and across chunks, slice the padding off."""

    def __init__(self, chunk=8):
        super().__init__()
        self.chunk = chunk
        self.emb = nn.Embedding(16, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, ids):
        x = self.emb(ids)
        seq = x.shape[1]
        padded = nn.functional.pad(x, (0, 0, 0, (self.chunk - seq % self.chunk) % self.chunk))
        chunks = padded.reshape(x.shape[0], -1, self.chunk, 4)
        within = torch.cumsum(chunks, dim=2)
        carry = torch.cumsum(within[:, :, -1:], dim=1) - within[:, :, -1:]
        return self.proj((within + carry).reshape(x.shape[0], -1, 4)[:, :seq])


def test_a_chunk_padded_scan_imports_with_a_dynamic_length_and_matches_torch():
    import warnings

    import actsparse
    from actsparse.frontends.torch_export import import_torch
    from actsparse.ir import evaluate
    from actsparse.ir.printer import parse_graph, print_graph

    model = ChunkScan().eval()
    ids = torch.arange(16).reshape(1, 16)  # two chunks: torch specialises a chunk count of 1 in the example
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="actsparse")  # no fallback to the example's static length
        graph = import_torch(model, (ids,))
    shapes = {d for n in graph.nodes for d in n.shape if isinstance(d, str)}
    assert graph.inputs[0].shape == (1, "seq") and {"8*((seq+7)//8)", "(seq+7)//8"} <= shapes
    text = print_graph(graph)
    assert print_graph(parse_graph(text, graph.weights)) == text
    compiled = actsparse.compile(graph, (ids.numpy(),), mode="dense")
    for n in (5, 16):  # one not a multiple of the chunk
        ids = (torch.arange(n).reshape(1, n) * 5) % 16
        with torch.no_grad():
            want = model(ids).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(compiled(ids.numpy())), want, rtol=1e-4, atol=1e-5)


def test_a_chunk_count_torch_fixes_bounds_the_length_the_compiled_module_takes():
    """An example of one chunk (5 tokens, chunk 8): torch's export fixes the chunk count, `(seq+7)//8 = 1`; the
    graph holds for lengths up to 8, its padded length is static, and the compiled module refuses 9 by name."""
    import actsparse
    from actsparse.errors import ActsparseError
    from actsparse.frontends.torch_export import import_torch

    model = ChunkScan().eval()
    ids = torch.arange(5).reshape(1, 5)
    graph = import_torch(model, (ids,))
    assert graph.inputs[0].shape == (1, "seq")
    assert any(n.op == "pad" or "-seq+8" in n.shape for n in graph.nodes)  # the padding: 8 - seq rows
    compiled = actsparse.compile(graph, (ids.numpy(),), mode="dense")
    for n in (3, 8):
        ids = (torch.arange(n).reshape(1, n) * 5) % 16
        with torch.no_grad():
            np.testing.assert_allclose(np.asarray(compiled(ids.numpy())), model(ids).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ActsparseError, match="seq = 9 exceeds"):
        compiled(np.zeros((1, 9), np.int64))
