"""The rows of the bad-input table (see bad_inputs.py), in table order: save, load, signing, library, weights and
IR, inputs, compile options, CLI, readers."""

from __future__ import annotations

import os
import shutil

import numpy as np

import actsparse
from actsparse.errors import ActsparseError, ArtifactError, InputError

from .bad_inputs import (
    IDS,
    POSITIONS,
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
    write_and_rehash,
)

# -- save -------------------------------------------------------------------------------------------------------
REFUSED = "refusing"


@case("save", '`cm.save("")`', "ArtifactError, nothing written or deleted")
def save_empty_path(ctx):
    os.chdir(ctx.tmp)
    (ctx.tmp / "keep.txt").write_text("x")
    raises(ArtifactError, REFUSED, ctx.module.save, "")
    assert sorted(os.listdir(ctx.tmp)) == ["keep.txt"]


@case("save", '`cm.save(".")`', "ArtifactError, the current directory untouched")
def save_dot(ctx):
    os.chdir(ctx.tmp)
    (ctx.tmp / "keep.txt").write_text("x")
    raises(ArtifactError, REFUSED, ctx.module.save, ".")
    assert sorted(os.listdir(ctx.tmp)) == ["keep.txt"]


@case("save", "`cm.save(os.getcwd())` or a parent of it", "ArtifactError (current directory or a parent)")
def save_cwd_or_parent(ctx):
    (ctx.tmp / "sub").mkdir()
    os.chdir(ctx.tmp / "sub")
    raises(ArtifactError, "current directory", ctx.module.save, str(ctx.tmp / "sub"))
    raises(ArtifactError, "current directory", ctx.module.save, str(ctx.tmp))
    raises(ArtifactError, "current directory", ctx.module.save, "..")


@case("save", "`cm.save(dir)`, dir holding the user's files", "ArtifactError (not an actsparse artifact); files intact")
def save_over_user_folder(ctx):
    folder = user_folder(ctx.tmp)
    raises(ArtifactError, "not an actsparse artifact", ctx.module.save, folder)
    intact(folder)


@case("save", "`cm.save(dir)`, dir holding a `manifest.json` that is not ours", "ArtifactError; files intact")
def save_over_foreign_manifest(ctx):
    folder = user_folder(ctx.tmp)
    (folder / "manifest.json").write_text('{"name": "my web app"}')
    raises(ArtifactError, "no actsparse manifest.json", ctx.module.save, folder)
    intact(folder)


@case("save", "`cm.save(artifact)`, the artifact also holding a user's file", "ArtifactError (it also holds ...); "
      "nothing deleted")
def save_over_artifact_with_extra_file(ctx):
    path = ctx.copy()
    (path / "thesis.tex").write_text("years of work")
    raises(ArtifactError, "it also holds thesis.tex", ctx.module.save, path)
    intact(path)


@case("save", "`cm.save(file)` (an existing file)", "ArtifactError; the file intact")
def save_over_file(ctx):
    (ctx.tmp / "notes.txt").write_text("mine")
    raises(ArtifactError, "a file of that name exists", ctx.module.save, ctx.tmp / "notes.txt")
    assert (ctx.tmp / "notes.txt").read_text() == "mine"


@case("save", "`cm.save(link)`, a symlink to a folder", "ArtifactError; the link and its target intact")
def save_over_symlink(ctx):
    folder = user_folder(ctx.tmp)
    (ctx.tmp / "link").symlink_to(folder)
    raises(ArtifactError, "symbolic link", ctx.module.save, ctx.tmp / "link")
    intact(folder)
    assert (ctx.tmp / "link").is_symlink()


@case("save", "`cm.save(artifact)` over an existing artifact", "replaced atomically, loads and runs")
def save_replaces_an_artifact(ctx):
    path = ctx.copy()
    ctx.module.save(path)
    np.testing.assert_array_equal(actsparse.load(path)(IDS), ctx.module(IDS))
    assert sorted(os.listdir(ctx.tmp)) == ["copy.actsparse"]  # no staging or old copy left beside it


@case("save", "a save that fails half-way (disk full)", "the error; the old artifact intact, no debris")
def save_interrupted(ctx):
    import copy

    path = ctx.copy()
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def interrupted(staging):
        (staging / "model.so").write_bytes(b"partial")
        raise KeyboardInterrupt

    module = copy.copy(ctx.module)
    module._save_library = interrupted
    raises(KeyboardInterrupt, "", module.save, path)
    raises(KeyboardInterrupt, "", module.save, ctx.tmp / "new")
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(os.listdir(ctx.tmp)) == ["copy.actsparse"]


@case("save", "`cm.save(empty_dir)`", "writes the artifact into it")
def save_into_empty_folder(ctx):
    (ctx.tmp / "empty").mkdir()
    ctx.module.save(ctx.tmp / "empty")
    assert (ctx.tmp / "empty" / "manifest.json").is_file()


@case("save", "saving an artifact that was loaded, then loading it", "the same artifact again (library unchanged)")
def save_a_loaded_artifact(ctx):
    again = ctx.module.save(ctx.tmp / "again")
    assert (again / "model.so").read_bytes() == (ctx.artifact / "model.so").read_bytes()
    np.testing.assert_array_equal(actsparse.load(again)(IDS), ctx.module(IDS))


@case("save", "an extra file named `../x` (a decoder's files)", "ArtifactError; nothing written outside")
def save_extra_file_escaping(ctx):
    raises(ArtifactError, "not a plain relative path", ctx.module.save, ctx.tmp / "a", extra_files={"../x": b"1"})
    assert not (ctx.tmp / "x").exists() and sorted(os.listdir(ctx.tmp)) == []


# -- load: the directory and its manifest ---------------------------------------------------------------------
@case("load", "`load(path)` of a path that does not exist, or of a file", "ArtifactError (not a directory)")
def load_missing_or_file(ctx):
    raises(ArtifactError, "not a directory", actsparse.load, ctx.tmp / "nothing")
    (ctx.tmp / "f").write_text("x")
    raises(ArtifactError, "not a directory", actsparse.load, ctx.tmp / "f")


@case("load", "a folder without manifest.json", "ArtifactError (no manifest.json)")
def load_no_manifest(ctx):
    raises(ArtifactError, "no manifest.json", actsparse.load, ctx.tmp)


def _manifest_bytes(ctx, data: bytes, fragment: str):
    path = ctx.copy()
    (path / "manifest.json").write_bytes(data)
    raises(ArtifactError, fragment, actsparse.load, path)


@case("load", "manifest.json not JSON", "ArtifactError (corrupted)")
def manifest_not_json(ctx):
    _manifest_bytes(ctx, b"{not json", "corrupted")


@case("load", "manifest.json not UTF-8", "ArtifactError (corrupted), not UnicodeDecodeError")
def manifest_not_utf8(ctx):
    _manifest_bytes(ctx, b'{"format": "\xff\xfe"}', "corrupted")


@case("load", "manifest.json a JSON list / number / string", "ArtifactError (not a JSON object)")
def manifest_not_object(ctx):
    for data in (b"[1, 2]", b"7", b'"x"', b"null"):
        _manifest_bytes(ctx, data, "not a JSON object")


@case("load", "manifest.json nested 100000 deep", "ArtifactError (corrupted), not RecursionError")
def manifest_deeply_nested(ctx):
    _manifest_bytes(ctx, b"[" * 100000 + b"]" * 100000, "corrupted")


@case("load", "manifest.json of 100 MB", "ArtifactError (larger than ...), not read whole")
def manifest_huge(ctx):
    path = ctx.copy()
    with open(path / "manifest.json", "wb") as f:
        f.truncate(100 << 20)  # sparse: no disk used
    raises(ArtifactError, "larger than", actsparse.load, path)


def _edited(ctx, edit, fragment: str, kind=ArtifactError):
    path = ctx.copy()
    edit_manifest(path, edit)
    raises(kind, fragment, actsparse.load, path)
    return path


@case("load", "format `actsparse-artifact/1` (older artifacts, weakly hashed)", "ArtifactError (rebuild)")
def manifest_old_format(ctx):
    _edited(ctx, lambda m: m.update(format="actsparse-artifact/1"), "written before every file was hashed")


@case("load", "format missing or of another tool", "ArtifactError (format ... rebuild)")
def manifest_no_format(ctx):
    _edited(ctx, lambda m: m.pop("format"), "format 'None'")
    _edited(ctx, lambda m: m.update(format=["x"]), "is not 'actsparse-artifact/2'")


@case("load", "kind unknown (`\"kind\": \"plugin\"`)", "ArtifactError (not one this loader reads)")
def manifest_unknown_kind(ctx):
    _edited(ctx, lambda m: m.update(kind="plugin"), "not one this loader reads")


@case("load", "`files` empty, missing or a list (every check disabled, before)", "ArtifactError ('files' must list)")
def manifest_no_file_list(ctx):
    for value in ({}, None, ["model.so"]):
        _edited(ctx, lambda m, v=value: m.update(files=v), "'files' must list")


@case("load", "a listed name that is absolute (`/etc/passwd`)", "ArtifactError (not a plain relative path)")
def manifest_absolute_name(ctx):
    _edited(ctx, lambda m: m["files"].update({"/etc/passwd": m["files"]["graph.ir"]}), "not a plain relative path")


@case("load", "a listed name with `..` (`../../x.so`)", "ArtifactError (not a plain relative path)")
def manifest_dotdot_name(ctx):
    for name in ("../../x.so", "a/../../x.so", "./model.so", ".hidden", "a\\..\\x", ""):
        _edited(ctx, lambda m, n=name: m["files"].update({n: m["files"]["graph.ir"]}), "not a plain relative path")


@case("load", "`library` pointing outside (`../../x.so`, `/tmp/x.so`)", "ArtifactError (not among the artifact's "
      "files); nothing opened")
def manifest_library_outside(ctx):
    for where in ("../../x.so", "/tmp/x.so", "graph.ir.so"):
        _edited(ctx, lambda m, w=where: m.update(library=w), "not among the artifact's files")


@case("load", "a file entry without a valid sha256 or size", "ArtifactError (needs 'sha256' ... and 'bytes')")
def manifest_bad_entry(ctx):
    for entry in ({"sha256": "abc", "bytes": 1}, {"sha256": "0" * 64, "bytes": -1}, {"sha256": "0" * 64},
                  "0" * 64, {"sha256": "0" * 64, "bytes": 1.5}):
        _edited(ctx, lambda m, e=entry: m["files"].update({"graph.ir": e}), "needs 'sha256'")


@case("load", "manifest fields of the wrong type (inputs, n_outputs, target, report, weight_order)",
      "ArtifactError (malformed manifest.json), not KeyError/TypeError/AttributeError")
def manifest_fields_wrong_type(ctx):
    edits = [lambda m: m.update(inputs=[{"name": "ids", "type": "f99[1]"}]), lambda m: m.update(inputs=7),
             lambda m: m.update(n_outputs="two"), lambda m: m.update(n_outputs=0), lambda m: m.update(target=3),
             lambda m: m.pop("report"), lambda m: m["report"]["blocks"].append({"bogus": 1}),
             lambda m: m["report"].update(blocks=[{**m["report"]["blocks"][0], "sparsity": "high"}]),
             lambda m: m.update(weight_order=None), lambda m: m.pop("library"), lambda m: m.update(library=None),
             lambda m: m["report"]["blocks"][0].update(location=["a list"]),  # (fuzzing: rich failed on it)
             lambda m: m["report"].update(pass_stats={"x": {"y": "1"}}),
             lambda m: m["report"].update(notes="one string"), lambda m: m["report"].update(notes=[3])]
    for edit in edits:
        _edited(ctx, edit, "malformed manifest.json")


@case("load", "manifest inputs that disagree with graph.ir", "ArtifactError (do not match)")
def manifest_inputs_disagree(ctx):
    _edited(ctx, lambda m: m.update(inputs=[{"name": "ids", "type": "i64[1,7]"}]), "do not match")


# -- load: files ---------------------------------------------------------------------------------------------
@case("load", "a listed file missing", "ArtifactError (... is missing)")
def file_missing(ctx):
    path = ctx.copy()
    (path / "graph.ir").unlink()
    raises(ArtifactError, "graph.ir is missing", actsparse.load, path)


@case("load", "a file present but not listed (`evil.so`)", "ArtifactError (not listed in the manifest)")
def file_unlisted(ctx):
    path = ctx.copy()
    (path / "evil.so").write_bytes(b"\x7fELF")
    raises(ArtifactError, "evil.so is not listed", actsparse.load, path)


@case("load", "model.so replaced by a symlink (to a library outside)", "ArtifactError (a symbolic link)")
def file_symlink(ctx):
    path = ctx.copy()
    shutil.move(path / "model.so", ctx.tmp / "outside.so")
    (path / "model.so").symlink_to(ctx.tmp / "outside.so")
    raises(ArtifactError, "model.so is a symbolic link", actsparse.load, path)


@case("load", "a symlinked folder inside the artifact", "ArtifactError (a symbolic link)")
def folder_symlink(ctx):
    path = ctx.copy()
    (path / "tokenizer").symlink_to(ctx.tmp)
    raises(ArtifactError, "tokenizer is a symbolic link", actsparse.load, path)


@case("load", "a FIFO named like a listed file", "ArtifactError (not a regular file), no hang")
def file_fifo(ctx):
    path = ctx.copy()
    (path / "graph.ir").unlink()
    os.mkfifo(path / "graph.ir")
    raises(ArtifactError, "not a regular file", actsparse.load, path)


@case("load", "a file's bytes edited (hash kept)", "ArtifactError (does not match its checksum)")
def file_edited(ctx):
    path = ctx.copy()
    data = bytearray((path / "model.so").read_bytes())
    data[len(data) // 2] ^= 1
    (path / "model.so").write_bytes(bytes(data))
    raises(ArtifactError, "model.so does not match its checksum", actsparse.load, path)


@case("load", "a file grown past its listed size", "ArtifactError (larger than its manifest says)")
def file_grown(ctx):
    path = ctx.copy()
    with open(path / "graph.ir", "ab") as f:
        f.write(b"\n# more")
    raises(ArtifactError, "larger than its manifest says", actsparse.load, path)


@case("load", "model.so edited and its hash updated, with the digest pinned (`expect_sha256=`)",
      "ArtifactError (not the artifact you pinned); nothing opened")
def pinned_digest(ctx):
    path = ctx.copy()
    write_and_rehash(path, "model.so", (path / "model.so").read_bytes() + b"\0")
    raises(ArtifactError, "not the expected", actsparse.load, path, expect_sha256=ctx.module.manifest_sha256)
    assert actsparse.load(ctx.artifact, expect_sha256=ctx.module.manifest_sha256.upper()).manifest_sha256


# -- signing -----------------------------------------------------------------------------------------------------
@case("sign", "`load(dir, public_key=KEY.pub)` of an unsigned artifact", "ArtifactError (not signed)")
def unsigned_with_key(ctx):
    _, public = keypair(ctx.tmp)
    raises(ArtifactError, "not signed", actsparse.load, ctx.artifact, public_key=public)


@case("sign", "an artifact signed by another key", "ArtifactError (signature does not match)")
def signed_by_other_key(ctx):
    key, _ = keypair(ctx.tmp, "a")
    _, other = keypair(ctx.tmp, "b")
    path = ctx.module.save(ctx.tmp / "signed", signing_key=key)
    raises(ArtifactError, "signature does not match", actsparse.load, path, public_key=other)


@case("sign", "a signed artifact, manifest edited after signing", "ArtifactError (signature does not match)")
def signed_then_edited(ctx):
    key, public = keypair(ctx.tmp)
    path = ctx.module.save(ctx.tmp / "signed", signing_key=key)
    edit_manifest(path, lambda m: m.update(n_outputs=1))  # re-serialized: same meaning, other bytes
    raises(ArtifactError, "signature does not match", actsparse.load, path, public_key=public)


@case("sign", "a signed artifact with its key", "loads and runs")
def signed_and_verified(ctx):
    key, public = keypair(ctx.tmp)
    path = ctx.module.save(ctx.tmp / "signed", signing_key=key)
    assert actsparse.load(path, public_key=public)(IDS).shape == (1, 4, VOCAB)
    assert actsparse.load(path, public_key=public.read_bytes()).manifest_sha256


@case("sign", "a public or signing key that is garbage, missing, or not ed25519", "ArtifactError (not a PEM ... key)")
def bad_keys(ctx):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    (ctx.tmp / "junk.pem").write_text("hello")
    raises(ArtifactError, "not a PEM public key", actsparse.load, ctx.artifact, public_key=ctx.tmp / "junk.pem")
    raises(ArtifactError, "cannot read the public key", actsparse.load, ctx.artifact, public_key=ctx.tmp / "none")
    raises(ArtifactError, "not an unencrypted PEM private key", ctx.module.save, ctx.tmp / "a",
           signing_key=ctx.tmp / "junk.pem")
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    raises(ArtifactError, "not an ed25519 key", ctx.module.save, ctx.tmp / "a", signing_key=ec_key)
    assert not (ctx.tmp / "a").exists()


# -- the library ---------------------------------------------------------------------------------------------------
@case("library", "model.so truncated, its hash updated", "ArtifactError (truncated), not SIGBUS", isolated=True)
def library_truncated(ctx):
    path = ctx.copy()
    data = (path / "model.so").read_bytes()
    for keep in (len(data) // 2, len(data) - 100, 200):
        write_and_rehash(path, "model.so", data[:keep])
        raises(ArtifactError, "truncated", actsparse.load, path)


@case("library", "model.so not an ELF file (text), its hash updated", "ArtifactError (no ELF header)", isolated=True)
def library_not_elf(ctx):
    path = ctx.copy()
    write_and_rehash(path, "model.so", b"#!/bin/sh\nrm -rf ~\n" * 10)
    raises(ArtifactError, "no ELF header", actsparse.load, path)


@case("library", "model.so for another machine (ELF machine aarch64), hash updated", "ArtifactError (built for "
      "aarch64)", isolated=True)
def library_other_machine(ctx):
    import platform

    path = ctx.copy()
    data = bytearray((path / "model.so").read_bytes())
    data[18:20] = (183 if platform.machine() != "aarch64" else 62).to_bytes(2, "little")
    write_and_rehash(path, "model.so", bytes(data))
    raises(ArtifactError, "built for", actsparse.load, path)


@case("library", "model.so a 32-bit or big-endian ELF, or a relocatable object", "ArtifactError (not 64-bit ... / "
      "not a shared object)", isolated=True)
def library_wrong_elf_kind(ctx):
    path = ctx.copy()
    good = (path / "model.so").read_bytes()
    for offset, value, fragment in ((4, 1, "not a 64-bit"), (5, 2, "little-endian"), (16, 1, "not a shared object")):
        data = bytearray(good)
        data[offset] = value
        write_and_rehash(path, "model.so", bytes(data))
        raises(ArtifactError, fragment, actsparse.load, path)


# -- weights and IR ---------------------------------------------------------------------------------------------
@case("weights", "weights.safetensors garbage, hash updated", "ArtifactError (cannot read weights.safetensors)")
def weights_garbage(ctx):
    path = ctx.copy()
    for data in (b"", b"\xff" * 64, (8).to_bytes(8, "little") + b"{\"a\":1}"):
        write_and_rehash(path, "weights.safetensors", data)
        raises(ArtifactError, "cannot read weights.safetensors", actsparse.load, path)


@case("weights", "a weight of the wrong shape or dtype, hash updated", "ArtifactError (weight ... declares ...)")
def weights_wrong_shape(ctx):
    from safetensors.numpy import load, save

    path = ctx.copy()
    weights = load((path / "weights.safetensors").read_bytes())
    for change in (np.zeros((VOCAB + 1, 8), np.float32), np.zeros((VOCAB, 8), np.float64)):
        write_and_rehash(path, "weights.safetensors", save({**weights, "emb": change}))
        raises(ArtifactError, "but graph.ir declares", actsparse.load, path)


@case("weights", "a weight missing, or one more, hash updated", "ArtifactError (name different weights)")
def weights_missing(ctx):
    from safetensors.numpy import load, save

    path = ctx.copy()
    weights = load((path / "weights.safetensors").read_bytes())
    write_and_rehash(path, "weights.safetensors", save({k: v for k, v in weights.items() if k != "head"}))
    raises(ArtifactError, "name different weights", actsparse.load, path)
    write_and_rehash(path, "weights.safetensors", save({**weights, "extra": np.zeros(1, np.float32)}))
    raises(ArtifactError, "name different weights", actsparse.load, path)


@case("IR", "graph.ir garbage or not UTF-8, hash updated", "ArtifactError (graph.ir is malformed / not UTF-8)")
def ir_garbage(ctx):
    path = ctx.copy()
    good = (path / "graph.ir").read_text()
    for data, fragment in ((b"\xff\xfe", "not UTF-8"), (b"hello", "malformed"),
                           (good.replace("i64[1,seq]", "i64[1,seq").encode(), "malformed"),
                           (good.replace("embedding(", "frobnicate(").encode(), "malformed")):
        write_and_rehash(path, "graph.ir", data)
        raises(ArtifactError, fragment, actsparse.load, path)


@case("IR", "`parse_graph` of malformed text (no header, no return, unknown value, bad attrs, bad dtype, "
      "deep nesting)", "ParseError (an ActsparseError, with the line)")
def ir_parser_errors(ctx):
    from actsparse.ir import ParseError, parse_graph, print_graph

    text = print_graph(model_graph())
    bad = ["", "graph", text.replace("return %9", ""), text.replace("add(%0, %1)", "add(%0, %77)"),
           text.replace("{'axis': 0", "{'axis': [0"), text.replace("f32[1,seq,8]", "f99[1,seq,8]", 1),
           text.replace("{'axis': 0, 'end': 'seq', 'start': 0}", "{'a': " + "[" * 5000 + "]" * 5000 + "}"),
           text.replace("{'axis': 0, 'end': 'seq', 'start': 0}", "[1, 2]"), text.replace("f32[16,8]", "f32[-1,8]")]
    for t in bad:
        err = raises(ParseError, "", parse_graph, t)
        assert isinstance(err, ActsparseError)


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
@case("GGUF", "a GGUF file truncated, garbage, or missing", "FrontendError (not a readable GGUF file / no such "
      "file)")
def gguf_bad_files(ctx):
    from actsparse.frontends.errors import FrontendError
    from actsparse.frontends.gguf_read import read_gguf

    from .fuzz_targets import small_gguf

    data = small_gguf()
    for name, content in (("cut.gguf", data[:40]), ("junk.gguf", b"GGUF" + b"\xff" * 60), ("empty.gguf", b"")):
        (ctx.tmp / name).write_bytes(content)
        raises(FrontendError, "not a readable GGUF file", read_gguf, ctx.tmp / name)
    raises(FrontendError, "no such GGUF file", read_gguf, ctx.tmp / "none.gguf")


@case("calibration", "`--calib` a pickle, or misnamed tensors", "exit 2, one line (never unpickled)")
def cli_calibration_pickle(ctx):
    (ctx.tmp / "c.safetensors").write_bytes(b"\x80\x04K\x01.")
    cli_error("not a readable .safetensors file", "build", "tests.factories:tiny_drelu", "-m", "threshold",
              "--sparsity", "0.5", "--calib", str(ctx.tmp / "c.safetensors"), "-o", str(ctx.tmp / "o"))

