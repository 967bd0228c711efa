"""The bad-input table's rows about saving and loading artifacts (see bad_inputs.py), in table order: save, the
folder and its manifest, its files."""

from __future__ import annotations

import os
import shutil

import numpy as np

import actsparse
from actsparse.errors import ArtifactError

from .bad_inputs import (
    IDS,
    REFUSED,
    case,
    edit_manifest,
    intact,
    raises,
    user_folder,
    write_and_rehash,
)

# -- save -------------------------------------------------------------------------------------------------------


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
