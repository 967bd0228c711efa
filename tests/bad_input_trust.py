"""The bad-input table's rows about trusting an artifact's contents (see bad_inputs.py), in table order: signing,
the library, weights and IR."""

from __future__ import annotations

import numpy as np

import actsparse
from actsparse.errors import ActsparseError, ArtifactError

from .bad_inputs import (
    IDS,
    VOCAB,
    case,
    edit_manifest,
    keypair,
    model_graph,
    raises,
    write_and_rehash,
)


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
