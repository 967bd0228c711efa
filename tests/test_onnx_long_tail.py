"""The ONNX long-tail handlers (frontends/onnx_ops_tail.py): Floor, ReduceLogSumExp, Conv (1-d) and ScatterND
(static and computed indices, negative ones among them), imported, interpreted and compiled, against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import actsparse  # noqa: E402
from actsparse.frontends.onnx import import_onnx  # noqa: E402
from actsparse.frontends.onnx_ops import HANDLERS  # noqa: E402
from actsparse.ir import evaluate  # noqa: E402


def _long_tail_model(keepdims: int):
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((6, 3, 3)).astype(np.float32),  # 6 channels in 2 groups, kernel 3
        "b": rng.standard_normal(6).astype(np.float32),
        "three": np.array(3.0, np.float32), "axes": np.array([-1], np.int64),
        "at": np.array([[0, 1], [1, -1]], np.int64),  # rows (0, 1) and (1, 5) of [2, 6, ·]
        "rows": rng.standard_normal((2, 5)).astype(np.float32),
        "planes": rng.standard_normal((3, 6, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], group=2, pads=[1, 1], kernel_shape=[3]),
        helper.make_node("Mul", ["x", "three"], ["x3"]), helper.make_node("Floor", ["x3"], ["floor"]),
        helper.make_node("ReduceLogSumExp", ["x", "axes"], ["lse"], keepdims=keepdims),
        helper.make_node("ScatterND", ["x", "at", "rows"], ["static"]),
        helper.make_node("ScatterND", ["x", "idx", "planes"], ["computed"]),  # indices from an input
        helper.make_node("Add", ["conv", "floor"], ["s1"]), helper.make_node("Add", ["static", "computed"], ["s2"]),
        helper.make_node("Add", ["s1", "s2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 5]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, [3, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 5]),
         helper.make_tensor_value_info("lse", TensorProto.FLOAT, [2, 6, 1] if keepdims else [2, 6])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("keepdims", [1, 0])
def test_long_tail_onnx_ops_match_onnxruntime(tmp_path, keepdims):
    assert {"Floor", "ReduceLogSumExp", "Conv", "ScatterND"} <= set(HANDLERS)
    path = tmp_path / "tail.onnx"
    onnx.save(_long_tail_model(keepdims), str(path))
    x = np.random.default_rng(1).standard_normal((2, 6, 5)).astype(np.float32)
    idx = np.array([[1], [-2], [0]], np.int64)  # -2: the first dim of size 2, counted from the end
    idx = np.array([[1], [-1], [0]], np.int64) if keepdims else idx
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x, "idx": idx})
    graph = import_onnx(path)
    assert {"conv1d", "floor", "scatter"} <= {n.op for n in graph.nodes}
    for got, expected in zip(evaluate(graph, [x, idx]), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if keepdims:  # the TVM build as well (one parametrisation: a build takes seconds)
        got = actsparse.compile(graph, (x, idx), mode="dense")(x, idx)
        for g, expected in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation, shapes", [
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),  # attention scores
    ("bik,kj->bji", [(2, 3, 4), (4, 5)]),  # a weight, the output transposed
    ("bnhd,bnd->bnh", [(2, 3, 4, 5), (2, 3, 5)]),  # no own dim on the right
    ("bclhn,bcshn->bclhs", [(1, 2, 3, 2, 4), (1, 2, 3, 2, 4)]),  # Mamba-2's SSD chunk scan
    ("abc,cd->db", [(2, 3, 4), (4, 5)]),  # `a` in one operand only: summed first
    ("abc->cb", [(2, 3, 4)]),  # one operand
])
def test_einsum_matches_onnxruntime(tmp_path, equation, shapes):
    names = ["a", "b"][:len(shapes)]
    rng = np.random.default_rng(2)
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes, strict=True)}
    graph = helper.make_graph(
        [helper.make_node("Einsum", names, ["y"], equation=equation)], "einsum",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(names, shapes, strict=True)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, np.einsum(equation, *arrays.values()).shape)])
    path = tmp_path / "einsum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, arrays)[0]
    got = evaluate(import_onnx(path), list(arrays.values()))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_zero_d_symbolic_sizes_fold(tmp_path):
    """`seq - seq` and `seq + 0` on 0-d shape values (GPT-Neo's and MPT's masks compute such) fold to sizes."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["n"], axis=0),  # 0-d: seq
        helper.make_node("Sub", ["n", "n"], ["zero"]), helper.make_node("Add", ["n", "zero"], ["m"]),
        helper.make_node("Unsqueeze", ["m", "axis0"], ["m1"]),
        helper.make_node("Concat", ["minus1", "m1"], ["new"], axis=0),
        helper.make_node("Reshape", ["x", "new"], ["y"]),
    ]
    consts = {"one": np.array(1, np.int64), "axis0": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    graph = helper.make_graph(nodes, "sizes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "seq"])],
                              [numpy_helper.from_array(a, n) for n, a in consts.items()])
    path = tmp_path / "sizes.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(evaluate(import_onnx(path), [x])[0], want)


@pytest.mark.parametrize("axes", [None, [-1], [1]])
def test_constant_pad_matches_onnxruntime(tmp_path, axes):
    """Pads on every axis, on the last one (opset-18 `axes`), and RWKV's time shift (pad 1 before, crop 1 after)."""
    pads = np.array({None: [0, 2, 1, 0, 1, 3], -1: [2, 1], 1: [1, -1]}[axes and axes[0]], np.int64)
    inputs = ["x", "pads", "value"] + (["axes"] if axes else [])
    consts = {"pads": pads, "value": np.array(0.5, np.float32), **({"axes": np.array(axes, np.int64)} if axes else {})}
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
    out = np.pad(x, [(0, 0), (2, 1), (1, 3)] if axes is None else [(0, 0), (0, 0), (2, 1)], constant_values=0.5)
    out = np.pad(x, [(0, 0), (1, 0), (0, 0)], constant_values=0.5)[:, :-1] if axes == [1] else out
    graph = helper.make_graph([helper.make_node("Pad", inputs, ["y"], mode="constant")], "pad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out.shape)],
                              [numpy_helper.from_array(a, n) for n, a in consts.items()])
    path = tmp_path / "pad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(want, out)
    np.testing.assert_array_equal(evaluate(import_onnx(path), [x])[0], want)


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_and_one_hot_match_onnxruntime(tmp_path, fmod):
    """Mod (Python's and C's sign rule) on integer tensors, and OneHot with negative indices, as Mamba-2's chunked
    scan exports them."""
    nodes = [helper.make_node("Mod", ["i", "seven"], ["m"], fmod=fmod),
             helper.make_node("OneHot", ["m", "depth", "values"], ["y"], axis=1)]
    consts = {"seven": np.array(-7 if fmod else 7, np.int64), "depth": np.array(8, np.int64),
              "values": np.array([0.0, 2.5], np.float32)}
    graph = helper.make_graph(nodes, "onehot", [helper.make_tensor_value_info("i", TensorProto.INT64, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 5]),
                               helper.make_tensor_value_info("m", TensorProto.INT64, [2, 5])],
                              [numpy_helper.from_array(a, n) for n, a in consts.items()])
    path = tmp_path / "onehot.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    i = np.array([[-9, -1, 0, 6, 13], [20, -14, 3, 7, -3]], np.int64)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"i": i})
    assert (want[1] < 0).any() == bool(fmod)  # C's rule leaves negative remainders: OneHot wraps them
    for got, expected in zip(evaluate(import_onnx(path), [i]), want, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_topk_and_scatter_elements_match_onnxruntime(tmp_path):
    """A MoE router as the dynamo exporter writes it: TopK (values and indices, the largest along the last axis),
    then ScatterElements writing the chosen experts' weights into a zero [tokens, experts] matrix."""
    nodes = [helper.make_node("TopK", ["logits", "k"], ["values", "indices"], axis=-1, largest=1, sorted=1),
             helper.make_node("ScatterElements", ["zeros", "indices", "values"], ["y"], axis=1)]
    consts = {"k": np.array([2], np.int64), "zeros": np.zeros((3, 5), np.float32)}
    graph = helper.make_graph(nodes, "router", [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5]),
                               helper.make_tensor_value_info("indices", TensorProto.INT64, [3, 2])],
                              [numpy_helper.from_array(a, n) for n, a in consts.items()])
    path = tmp_path / "router.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    logits = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"logits": logits})
    graph = import_onnx(path)
    assert {"topk", "scatter"} <= {n.op for n in graph.nodes}
    for got, expected in zip(evaluate(graph, [logits]), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(actsparse.compile(graph, (logits,), mode="dense")(logits), want, strict=True):
        np.testing.assert_array_equal(np.asarray(got), expected)
