"""The bad-input table's rows about using actsparse (see bad_inputs.py), in table order: runtime inputs, compile
options, the CLI, readers."""

from __future__ import annotations

import os

import numpy as np

import actsparse
from actsparse.errors import ActsparseError, InputError

from .bad_inputs import (
    IDS,
    POSITIONS,
    REFUSED,
    VOCAB,
    case,
    cli_error,
    edit_manifest,
    intact,
    keypair,
    model_graph,
    raises,
    user_folder,
    without_module,
)


# -- runtime inputs --------------------------------------------------------------------------------------------
@case("inputs", "token id equal to the vocabulary size", "InputError (outside the vocabulary of 16 tokens)")
def token_id_at_vocab(ctx):
    raises(InputError, f"holds id {VOCAB}, outside the vocabulary", ctx.module, np.array([[1, VOCAB]]))


@case("inputs", "negative token id", "InputError (outside the vocabulary)")
def token_id_negative(ctx):
    raises(InputError, "holds id -1", ctx.module, np.array([[-1, 2]]))


@case("inputs", "token id far outside the vocabulary (2**40, -2**62)", "InputError, not a segfault", isolated=True)
def token_id_huge(ctx):
    for bad in (2 ** 40, -(2 ** 62), 2 ** 63 - 1):
        raises(InputError, "outside the vocabulary", ctx.module, np.array([[1, bad]]))


@case("inputs", "a sequence longer than the model's positions", "InputError (seq = 7 exceeds the 6 positions), not "
      "non-finite logits", isolated=True)
def sequence_too_long(ctx):
    raises(InputError, f"seq = {POSITIONS + 1} exceeds the {POSITIONS} positions", ctx.module,
           np.ones((1, POSITIONS + 1), np.int64))
    assert np.isfinite(ctx.module(np.ones((1, POSITIONS), np.int64))).all()


@case("inputs", "float token ids (`[[1.5]]`), strings, ragged lists", "InputError (expects i64 values / not arrays)")
def token_ids_wrong_dtype(ctx):
    raises(InputError, "expects i64 values, got float64", ctx.module, np.array([[1.5]]))
    raises(InputError, "expects i64 values", ctx.module, np.array([["a"]]))
    raises(InputError, "", ctx.module, [[1, 2], [3]])


@case("inputs", "wrong rank, wrong number of inputs", "InputError (compiled for inputs ids: i64[1,seq])")
def inputs_wrong_shape(ctx):
    raises(InputError, "compiled for inputs ids: i64[1,seq]", ctx.module, np.array([1, 2]))
    raises(InputError, "takes 1 inputs, got 2", ctx.module, IDS, IDS)
    raises(InputError, "expects i64[1,seq]", ctx.module, np.ones((2, 3), np.int64))


@case("inputs", "torch tensors with a bad id", "InputError as for numpy")
def torch_inputs_checked(ctx):
    import torch

    raises(InputError, "outside the vocabulary", ctx.module, torch.tensor([[VOCAB + 3]]))
    assert isinstance(ctx.module(torch.tensor(IDS)), torch.Tensor)


@case("inputs", "a module built for arm called on x86", "TargetError (where it runs)")
def not_runnable_here(ctx):
    from actsparse.errors import TargetError

    path = ctx.copy()
    edit_manifest(path, lambda m: m["target"].update(name="arm", tvm={"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
                                                     cross_compiler="aarch64-linux-gnu-gcc"))
    import platform

    if platform.machine() == "aarch64":
        return
    raises(TargetError, "built for arm", actsparse.load(path), IDS)


@case("inputs", "an x86 module built for a CPU feature this CPU lacks (an AVX-512 build copied to an AVX2 machine)",
      "TargetError naming the feature, not an illegal instruction")
def cpu_feature_missing_here(ctx):
    from actsparse.errors import TargetError

    path = ctx.copy()  # avx512_4fmaps: Xeon Phi only, on no CPU this runs on
    edit_manifest(path, lambda m: m["target"].update(features=[*m["target"]["features"], "avx512_4fmaps"]))
    module = actsparse.load(path)
    assert not module.runnable
    raises(TargetError, "avx512_4fmaps, which this CPU lacks", module, IDS)


# -- compile options ---------------------------------------------------------------------------------------------
def _compile(**kwargs):
    args = {"model": model_graph(), "example_inputs": (IDS,), **kwargs}
    return actsparse.compile(**args)


@case("compile", "a bare tensor as `example_inputs`", "ActsparseError (wrap it: (input_ids,)), not a dropped batch "
      "axis")
def bare_tensor_example(ctx):
    import torch

    raises(ActsparseError, "wrap it: (input_ids,)", _compile, example_inputs=IDS)
    raises(ActsparseError, "bare Tensor", _compile, example_inputs=torch.tensor(IDS))
    raises(ActsparseError, "got a dict", _compile, example_inputs={"ids": IDS})


@case("compile", "`sparsity=` with mode exact / dense / auto", "ActsparseError (does not use them)")
def sparsity_for_lossless_modes(ctx):
    for mode in ("exact", "dense", "auto"):
        raises(ActsparseError, "sparsity=0.5: mode=", _compile, mode=mode, sparsity=0.5)


@case("compile", "`calibration=` or `method=` with mode exact / dense / auto", "ActsparseError (does not use them)")
def calibration_for_lossless_modes(ctx):
    raises(ActsparseError, "does not use them", _compile, mode="dense", calibration=[(IDS,)])
    raises(ActsparseError, "does not use them", _compile, mode="exact", method="cats")


@case("compile", '`sparsity="half"`, `1.5`, `0`, `True`, `nan`', "ActsparseError (a number between 0 and 1)")
def sparsity_not_a_fraction(ctx):
    for bad in ("half", 1.5, 0, True, float("nan"), None):
        raises(ActsparseError, "a number between 0 and 1", _compile, mode="threshold", sparsity=bad,
               calibration=[(IDS,)])


@case("compile", "unknown mode, target or threshold method", "ActsparseError listing the valid ones")
def unknown_names(ctx):
    raises(ActsparseError, "valid modes", _compile, mode="sparse")
    raises(ActsparseError, "valid targets", _compile, target="tpu")
    raises(ActsparseError, "valid methods", _compile, mode="threshold", sparsity=0.5, calibration=[(IDS,)],
           method="magic")


@case("compile", "a model path that is not .onnx/.mlir, or does not exist", "ActsparseError (expected a .onnx ... / "
      "no such file)")
def model_path_bad(ctx):
    raises(ActsparseError, "expected a .onnx or .mlir", actsparse.compile, "model.pt", ())
    raises(ActsparseError, "no such file", actsparse.compile, str(ctx.tmp / "x.onnx"), ())


@case("compile", "a .onnx file without the onnx package installed", "ActsparseError (pip install onnx)")
def onnx_not_installed(ctx):
    (ctx.tmp / "x.onnx").write_bytes(b"\x08\x07")
    with without_module("onnx"):
        raises(ActsparseError, "pip install onnx", actsparse.compile, str(ctx.tmp / "x.onnx"), ())


@case("compile", "a corrupt .onnx file", "FrontendError (not a readable ONNX model)")
def onnx_corrupt(ctx):
    (ctx.tmp / "x.onnx").write_bytes(b"\x08\x07garbage" * 10)
    raises(ActsparseError, "not a readable ONNX model", actsparse.compile, str(ctx.tmp / "x.onnx"), ())


@case("compile", "an ONNX model whose initializer holds fewer bytes than its dims (found by fuzzing)",
      "FrontendError (initializer ... is malformed), not ValueError")
def onnx_initializer_wrong_size(ctx):
    from .fuzz_targets import small_onnx

    model = small_onnx()
    model.graph.initializer[0].data_type = 2  # uint8: the raw bytes hold 4x the elements its dims say
    raises(ActsparseError, "initializer wg is malformed", actsparse.compile, model, ())


@case("compile", "an ONNX file with a node name that is not UTF-8 (found by fuzzing)", "FrontendError (not valid "
      "UTF-8), not TypeError")
def onnx_name_not_utf8(ctx):
    from .fuzz_targets import small_onnx

    name = b"/mlp/gate_proj/MatMul"
    data = small_onnx().SerializeToString().replace(name, b"\x80\x80\x80" + name[3:])  # same length
    (ctx.tmp / "m.onnx").write_bytes(data)
    raises(ActsparseError, "not valid UTF-8", actsparse.compile, str(ctx.tmp / "m.onnx"), ())


@case("compile", "`memory_budget=-1` or a budget below what must stay resident", "MemoryBudgetError naming the "
      "feasible range")
def memory_budget_infeasible(ctx):
    from actsparse.errors import MemoryBudgetError

    raises(MemoryBudgetError, "must not be negative", _compile, memory_budget=-1)
    raises(MemoryBudgetError, "memory_budget=1 bytes", _compile, memory_budget=1)


# -- CLI ---------------------------------------------------------------------------------------------------------
@case("CLI", "`actsparse bench ART --repeats 0` (or `--seq 0`)", "exit 2, one line (must be at least 1)")
def cli_bench_repeats_zero(ctx):
    cli_error("must be at least 1", "bench", str(ctx.artifact), "--repeats", "0")
    cli_error("must be at least 1", "bench", str(ctx.artifact), "--seq", "0")


@case("CLI", "`actsparse build SPEC --seq -5`", "exit 2, one line")
def cli_build_negative_seq(ctx):
    cli_error("must be at least 1", "build", "tests.factories:tiny_drelu", "--seq", "-5", "-o", str(ctx.tmp / "o"))


@case("CLI", "`actsparse inspect DIR` with a garbage manifest", "exit 2, one line (corrupted)")
def cli_inspect_garbage_manifest(ctx):
    path = ctx.copy()
    (path / "manifest.json").write_bytes(b"\x00garbage")
    cli_error("corrupted", "inspect", str(path))


@case("CLI", "`actsparse inspect DIR` with a tampered file", "exit 2, one line (does not match its checksum)")
def cli_inspect_tampered(ctx):
    path = ctx.copy()
    (path / "graph.ir").write_text("x")
    cli_error("does not match its checksum", "inspect", str(path))


@case("CLI", "`actsparse build x.onnx` without the onnx package", "exit 2, one line (pip install onnx)")
def cli_build_onnx_missing(ctx):
    (ctx.tmp / "x.onnx").write_bytes(b"\x08\x07")
    with without_module("onnx"):
        cli_error("pip install onnx", "build", str(ctx.tmp / "x.onnx"), "-o", str(ctx.tmp / "o"))


@case("CLI", "`actsparse build SPEC -o DIR`, DIR holding the user's files", "exit 2 before compiling; files intact")
def cli_build_over_user_folder(ctx):
    folder = user_folder(ctx.tmp)
    cli_error("not an actsparse artifact", "build", "no_such_module:f", "-o", str(folder))
    intact(folder)


@case("CLI", "`actsparse build SPEC -o .`", "exit 2 before compiling (refusing)")
def cli_build_to_cwd(ctx):
    os.chdir(ctx.tmp)
    cli_error(REFUSED, "build", "no_such_module:f", "-o", ".")


@case("CLI", "`actsparse build SPEC --sign missing.pem`", "exit 2 (make one with actsparse keygen)")
def cli_sign_missing_key(ctx):
    cli_error("actsparse keygen", "build", "x:y", "--sign", str(ctx.tmp / "missing.pem"), "-o", str(ctx.tmp / "o"))


@case("CLI", "`actsparse keygen KEY` over an existing key", "exit 2 (never overwrites a key)")
def cli_keygen_no_overwrite(ctx):
    keypair(ctx.tmp)
    cli_error("never overwrites", "keygen", str(ctx.tmp / "key"))


@case("CLI", "`actsparse bench DIR` on a folder that is not an artifact", "exit 2, one line")
def cli_bench_not_artifact(ctx):
    cli_error("not an actsparse artifact", "bench", str(ctx.tmp))


@case("CLI", "unknown option or command, missing argument", "exit 2, one line (see --help)")
def cli_unknown_option(ctx):
    cli_error("see --help", "build", "--frobnicate")
    cli_error("see --help", "frobnicate")
    cli_error("see --help", "inspect")


@case("CLI", "`actsparse demo --tokens 0`", "exit 2, one line")
def cli_demo_zero_tokens(ctx):
    cli_error("must be at least 1", "demo", "--tokens", "0")


@case("CLI", "`actsparse build missing.onnx`", "exit 2, one line (no such file)")
def cli_build_missing_file(ctx):
    cli_error("no such file", "build", str(ctx.tmp / "missing.onnx"), "-o", str(ctx.tmp / "o"))


# -- other readers ---------------------------------------------------------------------------------------------
@case("GGUF", "a GGUF file truncated, garbage, or missing", "FrontendError (not a readable GGUF file ... download "
      "the file again / no such file)")
def gguf_bad_files(ctx):
    from actsparse.frontends.errors import FrontendError
    from actsparse.frontends.gguf_read import read_gguf

    from .fuzz_targets import small_gguf

    data = small_gguf()
    for name, content in (("cut.gguf", data[:40]), ("junk.gguf", b"GGUF" + b"\xff" * 60), ("empty.gguf", b"")):
        (ctx.tmp / name).write_bytes(content)
        err = raises(FrontendError, "not a readable GGUF file", read_gguf, ctx.tmp / name)
        assert "download the file again" in str(err), err   # the way out
    raises(FrontendError, "no such GGUF file", read_gguf, ctx.tmp / "none.gguf")


@case("calibration", "`--calib` a pickle, or misnamed tensors", "exit 2, one line (never unpickled)")
def cli_calibration_pickle(ctx):
    (ctx.tmp / "c.safetensors").write_bytes(b"\x80\x04K\x01.")
    cli_error("not a readable .safetensors file", "build", "tests.factories:tiny_drelu", "-m", "threshold",
              "--sparsity", "0.5", "--calib", str(ctx.tmp / "c.safetensors"), "-o", str(ctx.tmp / "o"))
