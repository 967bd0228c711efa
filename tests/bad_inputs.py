"""The bad-input table: what actsparse does with each kind of bad input, each row a case that tests it.

`docs/BAD_INPUTS.md` is generated from `CASES` (`python -m actsparse.tests.bad_inputs > docs/BAD_INPUTS.md`) and
test_bad_inputs.py checks it is current. A case is a function given a `Ctx` (a scratch folder and one small
prebuilt artifact: embedding of 16 tokens, 6 positions, a ReLU gated MLP in exact mode); it asserts the outcome
itself. Cases marked `isolated` could crash the process if their guard regressed (SIGBUS, SIGSEGV): they run in
a subprocess (`python -m actsparse.tests.bad_inputs --run-isolated ARTIFACT`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import actsparse

VOCAB, POSITIONS, D, N_FF = 16, 6, 8, 16
MODEL_TEXT = f"""graph @main(%ids: i64[1,seq]) {{
  @emb : f32[{VOCAB},{D}]
  @pos : f32[{POSITIONS},{D}]
  @mlp.gate.weight : f32[{N_FF},{D}]
  @mlp.up.weight : f32[{N_FF},{D}]
  @mlp.down.weight : f32[{D},{N_FF}]
  @head : f32[{VOCAB},{D}]
  %0 = embedding(@emb, %ids) : f32[1,seq,{D}]  # emb
  %1 = slice(@pos) {{'axis': 0, 'end': 'seq', 'start': 0}} : f32[seq,{D}]  # pos
  %2 = add(%0, %1) : f32[1,seq,{D}]
  %3 = linear(%2, @mlp.gate.weight) : f32[1,seq,{N_FF}]  # mlp.gate
  %4 = relu(%3) : f32[1,seq,{N_FF}]  # mlp
  %5 = linear(%2, @mlp.up.weight) : f32[1,seq,{N_FF}]  # mlp.up
  %6 = mul(%4, %5) : f32[1,seq,{N_FF}]  # mlp
  %7 = linear(%6, @mlp.down.weight) : f32[1,seq,{D}]  # mlp.down
  %8 = add(%2, %7) : f32[1,seq,{D}]
  %9 = linear(%8, @head) : f32[1,seq,{VOCAB}]  # head
  return %9
}}
"""


def model_graph():
    from actsparse.ir import parse_graph

    rng = np.random.default_rng(0)
    shapes = {"emb": (VOCAB, D), "pos": (POSITIONS, D), "mlp.gate.weight": (N_FF, D), "mlp.up.weight": (N_FF, D),
              "mlp.down.weight": (D, N_FF), "head": (VOCAB, D)}
    return parse_graph(MODEL_TEXT, {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})


IDS = np.array([[1, 2, 3, 15]])
REFUSED = "refusing"


@functools.lru_cache(maxsize=1)
def prebuilt() -> Path:
    """The small model compiled (exact mode) and saved once per process; tests copy it before editing."""
    root = Path(tempfile.mkdtemp(prefix="actsparse-bad-inputs-"))
    atexit.register(shutil.rmtree, root, True)
    return actsparse.compile(model_graph(), (IDS,), mode="exact").save(root / "model.actsparse")


@dataclass
class Ctx:
    tmp: Path
    artifact: Path

    def copy(self) -> Path:
        """A fresh copy of the prebuilt artifact (copy.actsparse, then copy1.actsparse, ...)."""
        n = sum(1 for p in self.tmp.iterdir() if p.name.startswith("copy"))
        return Path(shutil.copytree(self.artifact, self.tmp / f"copy{n or ''}.actsparse"))

    @functools.cached_property
    def module(self):
        return actsparse.load(self.artifact)


@dataclass(frozen=True)
class Case:
    area: str
    name: str
    given: str
    gets: str
    run: Callable[[Ctx], None]
    isolated: bool = False


CASES: list[Case] = []


def case(area: str, given: str, gets: str, isolated: bool = False):
    def register(fn):
        CASES.append(Case(area, fn.__name__, given, gets, fn, isolated))
        return fn
    return register


# -- helpers --------------------------------------------------------------------------------------------------
def raises(kind: type[BaseException], fragment: str, fn, *args, **kwargs) -> BaseException:
    try:
        fn(*args, **kwargs)
    except kind as err:
        assert fragment in str(err), f"expected {fragment!r} in: {err}"
        return err
    raise AssertionError(f"expected {kind.__name__} ({fragment!r}), nothing raised")


def edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def write_and_rehash(path: Path, name: str, data: bytes) -> None:
    """Replace a file and update its hash and size in the manifest, as an attacker (or a careless edit) would."""
    import hashlib

    (path / name).write_bytes(data)
    edit_manifest(path, lambda m: m["files"].update({name: {"bytes": len(data),
                                                            "sha256": hashlib.sha256(data).hexdigest()}}))


def cli(*argv: str) -> str:
    """Run the CLI; it must exit 2 with one line on stderr. Returns that line."""
    from actsparse.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    text = err.getvalue()
    assert code == 2, f"exit {code}, stderr {text!r}"
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text


def cli_error(fragment: str, *argv: str) -> None:
    line = cli(*argv)
    assert fragment in line, f"expected {fragment!r} in {line!r}"


@contextlib.contextmanager
def without_module(name: str):
    """As if the package `name` were not installed."""
    saved = {k: v for k, v in sys.modules.items() if k == name or k.startswith(name + ".")}
    for k in saved:
        del sys.modules[k]
    sys.modules[name] = None
    try:
        yield
    finally:
        del sys.modules[name]
        sys.modules.update(saved)


def keypair(tmp: Path, name: str = "key") -> tuple[Path, Path]:
    from actsparse.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["keygen", str(tmp / name)]) == 0
    return tmp / name, tmp / f"{name}.pub"


def user_folder(tmp: Path) -> Path:
    folder = tmp / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    return folder


def intact(folder: Path) -> None:
    assert (folder / "thesis.tex").read_text() == "years of work"


if __name__ != "__main__":  # register the cases, in table order (run as a script, the module below does)
    from . import bad_input_artifacts, bad_input_trust, bad_input_use  # noqa: F401


def markdown() -> str:
    lines = ["# Bad inputs and what they get", "",
             "Generated from `tests/bad_inputs.py` (`python -m actsparse.tests.bad_inputs > docs/BAD_INPUTS.md`); "
             "each row is a test case of `tests/test_bad_inputs.py` (the case name is its test id). Rows marked "
             "*isolated* run in a subprocess, so a crash fails the test instead of killing the test run.",
             "", f"{len(CASES)} cases.", "", "| area | case | given | gets |", "|---|---|---|---|"]
    for c in CASES:
        flag = " *(isolated)*" if c.isolated else ""
        lines.append(f"| {c.area} | `{c.name}`{flag} | {c.given} | {c.gets} |")
    return "\n".join(lines) + "\n"


def run_isolated(artifact: str) -> None:
    """Run the isolated cases in this process, one JSON line per case: {"name", "ok", "error"}."""
    for c in CASES:
        if not c.isolated:
            continue
        tmp = Path(tempfile.mkdtemp(prefix="actsparse-case-"))
        try:
            c.run(Ctx(tmp, Path(artifact)))
            result = {"name": c.name, "ok": True, "error": ""}
        except BaseException as err:  # noqa: BLE001 - reported to the parent test
            result = {"name": c.name, "ok": False, "error": f"{type(err).__name__}: {err}"}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    from actsparse.tests import bad_inputs as table  # the registered module, not this __main__ copy

    if len(sys.argv) == 3 and sys.argv[1] == "--run-isolated":
        table.run_isolated(sys.argv[2])
    else:
        sys.stdout.write(table.markdown())
