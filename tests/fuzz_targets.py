"""Hypothesis fuzzers of the four readers of untrusted input: the IR text parser, the artifact manifest loader, the
ONNX importer (mutated protobufs) and the GGUF reader (`frontends/gguf_read.py`). Each mutates a valid input and
requires that the reader either accepts it or raises its one documented error (ParseError / VerifyError,
ArtifactError, FrontendError) — never another exception, a crash or a hang.

    python -m actsparse.tests.fuzz_targets ARTIFACT [TARGET ...] [--examples N]

prints one JSON line per target ({"target", "ok", "examples", "error"}); test_fuzz.py runs it in a subprocess (a
crash fails the test instead of killing pytest) with a few seconds per target. ACTSPARSE_HYPOTHESIS=thorough
(or --examples) runs more. Crashes found while writing these became rows of the bad-input table.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ALLOWED = {}  # target -> the exception types it may raise


def small_gguf() -> bytes:
    """A tiny but well-formed GGUF file: a few metadata fields of several types and two tensors."""
    import gguf
    import numpy as np

    folder = Path(tempfile.mkdtemp())
    try:
        writer = gguf.GGUFWriter(str(folder / "m.gguf"), "llama")
        writer.add_block_count(1)
        writer.add_context_length(16)
        writer.add_string("general.name", "fuzz")
        writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
        writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        writer.add_tensor("a", np.arange(12, dtype=np.float32).reshape(3, 4))
        writer.add_tensor("b", np.ones(8, dtype=np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return (folder / "m.gguf").read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def small_onnx():
    """A gated ReLU MLP as an ONNX ModelProto (opset 17)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("wg", (8, 16)), ("wu", (8, 16)), ("wd", (16, 8)))]
    nodes = [helper.make_node("MatMul", ["x", "wg"], ["g"], name="/mlp/gate_proj/MatMul"),
             helper.make_node("Relu", ["g"], ["a"], name="/mlp/act/Relu"),
             helper.make_node("MatMul", ["x", "wu"], ["u"], name="/mlp/up_proj/MatMul"),
             helper.make_node("Mul", ["a", "u"], ["h"], name="/mlp/Mul"),
             helper.make_node("MatMul", ["h", "wd"], ["y"], name="/mlp/down_proj/MatMul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


# -- mutations -----------------------------------------------------------------------------------------------------
IR_CHARS = "%@(){}[],:=#'\" \n0123456789-.abcdefghijklmnopqrstuvwxyz_"


@st.composite
def mutated_text(draw, text: str) -> str:
    """Delete, insert, replace or shuffle pieces of `text`; sometimes nest brackets deeply."""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "line", "swap", "truncate", "nest"]))
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        if kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        elif kind == "insert":
            text = text[:i] + draw(st.text(st.sampled_from(IR_CHARS), min_size=1, max_size=12)) + text[i:]
        elif kind == "nest":
            depth = draw(st.integers(50, 3000))
            text = text[:i] + draw(st.sampled_from("[({")) * depth + text[i:]
        elif kind == "truncate":
            text = text[:i]
        else:
            lines = text.splitlines()
            if lines:
                j, k = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
                if kind == "swap":
                    lines[j], lines[k] = lines[k], lines[j]
                else:
                    lines[j] = draw(st.text(st.sampled_from(IR_CHARS), max_size=40))
                text = "\n".join(lines)
    return text


@st.composite
def mutated_bytes(draw, data: bytes) -> bytes:
    """Flip, overwrite (often with 0xff.. / large little-endian counts), cut or splice bytes."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "word", "cut", "splice"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "word":
            value = draw(st.sampled_from([0, 1, 2 ** 31, 2 ** 32 - 1, 2 ** 63, 2 ** 64 - 1, 7 << 40]))
            data[i:i + 8] = value.to_bytes(8, "little")
        elif kind == "cut":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=10)


def _paths(value, prefix=()):
    """Every path into a JSON value (dict keys and list indexes)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


# -- targets ----------------------------------------------------------------------------------------------------
def fuzz_ir_text(examples: int, artifact: Path):
    from actsparse.ir import ParseError, VerifyError, parse_graph, verify

    text = (artifact / "graph.ir").read_text()
    ALLOWED["ir_text"] = (ParseError, VerifyError)

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated_text(text))
    def run(mutated):
        try:
            verify(parse_graph(mutated))
        except (ParseError, VerifyError):
            pass

    run()


def fuzz_manifest(examples: int, artifact: Path):
    import actsparse
    from actsparse.errors import ArtifactError

    manifest = json.loads((artifact / "manifest.json").read_text())
    paths = list(_paths(manifest))[1:]
    work = Path(tempfile.mkdtemp(prefix="actsparse-fuzz-"))
    copy = Path(shutil.copytree(artifact, work / "a"))
    original = (artifact / "manifest.json").read_bytes()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        if data.draw(st.booleans()):
            edited = json.loads(original)
            for _ in range(data.draw(st.integers(1, 3))):
                path = data.draw(st.sampled_from(paths))
                parent = edited
                try:
                    for key in path[:-1]:
                        parent = parent[key]
                    if data.draw(st.booleans()) and isinstance(parent, dict):
                        parent.pop(path[-1], None)
                    else:
                        parent[path[-1]] = data.draw(JSON)
                except (KeyError, IndexError, TypeError):
                    pass
            raw = json.dumps(edited).encode()
        else:
            raw = data.draw(mutated_bytes(original))
        (copy / "manifest.json").write_bytes(raw)
        try:
            actsparse.load(copy)
        except ArtifactError:
            pass

    try:
        run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fuzz_onnx(examples: int, artifact: Path):
    import onnx

    from actsparse.frontends.errors import FrontendError
    from actsparse.frontends.onnx import import_onnx

    model = small_onnx()
    data = model.SerializeToString()
    ops = ["MatMul", "Relu", "Mul", "Add", "Gemm", "Reshape", "Gather", "Softmax", "Transpose", "Frob", "Slice"]

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(draw):
        if draw.draw(st.booleans()):
            try:
                mutated = onnx.load_from_string(draw.draw(mutated_bytes(data)))
            except Exception:  # noqa: BLE001 - not a protobuf at all: the file-reading path is fuzzed below
                mutated = None
        else:
            mutated = onnx.ModelProto()
            mutated.CopyFrom(model)
            nodes = mutated.graph.node
            for _ in range(draw.draw(st.integers(1, 3))):
                node = nodes[draw.draw(st.integers(0, len(nodes) - 1))]
                kind = draw.draw(st.sampled_from(["op", "input", "dims", "attr", "dtype", "opset"]))
                if kind == "op":
                    node.op_type = draw.draw(st.sampled_from(ops))
                elif kind == "input":
                    node.input[draw.draw(st.integers(0, len(node.input) - 1))] = draw.draw(
                        st.sampled_from(["x", "wg", "g", "y", "missing", ""]))
                elif kind == "dims":
                    dim = mutated.graph.input[0].type.tensor_type.shape.dim[draw.draw(st.integers(0, 2))]
                    dim.dim_value = draw.draw(st.integers(0, 2 ** 40))
                elif kind == "attr":
                    node.attribute.append(onnx.helper.make_attribute(
                        draw.draw(st.sampled_from(["axis", "perm", "transA", "to"])), draw.draw(st.integers(-5, 5))))
                elif kind == "dtype":
                    mutated.graph.initializer[draw.draw(st.integers(0, 2))].data_type = draw.draw(st.integers(0, 17))
                else:
                    mutated.opset_import[0].version = draw.draw(st.integers(0, 30))
        if mutated is None:
            return
        try:
            import_onnx(mutated)
        except FrontendError:
            pass

    run()
    work = Path(tempfile.mkdtemp(prefix="actsparse-fuzz-"))

    @settings(max_examples=max(examples // 3, 3), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated_bytes(data))
    def run_file(raw):
        (work / "m.onnx").write_bytes(raw)
        try:
            import_onnx(str(work / "m.onnx"))
        except FrontendError:
            pass

    try:
        run_file()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fuzz_gguf(examples: int, artifact: Path):
    from actsparse.frontends.gguf_read import GGUFError, read_gguf

    data = small_gguf()
    work = Path(tempfile.mkdtemp(prefix="actsparse-fuzz-"))

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated_bytes(data))
    def run(raw):
        (work / "m.gguf").write_bytes(raw)
        try:
            reader = read_gguf(work / "m.gguf")
            for tensor in reader.tensors:  # the data of every tensor is readable: inside the file
                tensor.data.sum()
        except GGUFError:
            pass

    try:
        run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


TARGETS = {"ir_text": fuzz_ir_text, "manifest": fuzz_manifest, "onnx": fuzz_onnx, "gguf": fuzz_gguf}


def main(argv: list[str]) -> None:
    import os

    examples = 300 if os.environ.get("ACTSPARSE_HYPOTHESIS") == "thorough" else 40
    if "--examples" in argv:
        i = argv.index("--examples")
        examples = int(argv[i + 1])
        del argv[i:i + 2]
    artifact, names = Path(argv[0]), argv[1:] or list(TARGETS)
    for name in names:
        start = time.perf_counter()
        try:
            TARGETS[name](examples, artifact)
            result = {"target": name, "ok": True, "error": ""}
        except BaseException as err:  # noqa: BLE001 - reported to the parent test (hypothesis shows the input)
            result = {"target": name, "ok": False, "error": f"{type(err).__name__}: {str(err)[:2000]}"}
        result.update(examples=examples, seconds=round(time.perf_counter() - start, 2))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
