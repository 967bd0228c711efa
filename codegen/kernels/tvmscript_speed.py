"""A faster `T.macro` expansion in TVMScript 0.27 (same result): imported by `common.py`, so by every kernel.

Each expansion of a `T.macro` inside a PrimFunc looks for the active parser in the globals of the calling frames
with `inspect.getouterframes`, which builds a FrameInfo (source file, module lookup, source line) for every frame
of the stack. `inspect.getmodule` scans all of `sys.modules` for each frame, so once transformers is imported
(~4000 modules) one macro expansion costs about half a second: eight kernels took 43 s to parse instead of 5 s
(`python benchmarks/tvmscript_parse.py`). Only the frames' globals are read, so walking `f_back` gives the same
parser without the FrameInfos.

Three more costs of the same kind, each paid per kernel the compile builds (a tiny model builds five or six, a
kernel test dozens):
- `T.prim_func` takes `inspect.stack()` when it decorates, for a FrameInfo of every frame, and reads only the
  frames and the source line of one of them: `_stack` gives frames whose FrameInfo fields are looked up when read.
- A `Source` (file, first line, the function's text and its whole file's text) is built for every function and
  macro each time it is parsed, with `inspect.getsourcelines` tokenizing the file: the text of one `def` cannot
  change while its code object lives, so `_source_init` keeps it per code object.
- `Source.as_ast` parses that text into TVMScript's doc AST at every macro expansion: `_as_ast` keeps the tree per
  text. The parser reads the tree; its one write (a slice without a step gets step 1) gives the same tree again.
"""

from __future__ import annotations

import inspect
import sys

from tvm.script.parser.core import doc
from tvm.script.parser.core.diagnostics import Source
from tvm.script.parser.core.parser import ScriptMacro
from tvm.tirx.script.parser import entry as tirx_entry

TVM_FIND_PARSER_DEF = ScriptMacro._find_parser_def  # TVM's own, for the test that both give the same kernel


def _find_parser_def(self):
    frame = sys._getframe(0)  # the order getouterframes(currentframe()) visits: this frame, then its callers
    while frame is not None:
        parser = frame.f_globals.get(ScriptMacro.parser_object_name)
        if parser is not None:
            return parser
        frame = frame.f_back
    raise RuntimeError(f"{ScriptMacro.parser_object_name} not available")


ScriptMacro._find_parser_def = _find_parser_def


class _FrameInfo:
    """One frame of `_stack`: `frame` at once, the fields of `inspect.getframeinfo` (source line, file, ...) when
    read."""

    __slots__ = ("frame", "_info")

    def __init__(self, frame):
        self.frame, self._info = frame, None

    def __getattr__(self, name):
        if self._info is None:
            self._info = inspect.getframeinfo(self.frame, 1)
        return getattr(self._info, name)


class _Inspect:
    """`inspect` as TVM's prim_func decorator sees it: the same module, with a `stack` that defers FrameInfos."""

    def __getattr__(self, name):
        return getattr(inspect, name)

    @staticmethod
    def stack(context: int = 1):
        frames, frame = [], sys._getframe(1)  # from the caller, as inspect.stack()
        while frame is not None:
            frames.append(_FrameInfo(frame))
            frame = frame.f_back
        return frames


_SOURCES: dict = {}  # code object -> the fields of its Source
TVM_SOURCE_INIT = Source.__init__


def _source_init(self, program) -> None:
    code = getattr(program, "__code__", None)
    fields = _SOURCES.get(code) if code is not None else None
    if fields is None:
        TVM_SOURCE_INIT(self, program)
        if code is not None:
            _SOURCES[code] = (self.source_name, self.start_line, self.start_column, self.source, self.full_source)
        return
    self.source_name, self.start_line, self.start_column, self.source, self.full_source = fields


_TREES: dict[str, object] = {}  # source text -> its doc AST
TVM_AS_AST = Source.as_ast


def _as_ast(self):
    tree = _TREES.get(self.source)
    if tree is None:
        tree = _TREES[self.source] = doc.parse(self.source)
    return tree


tirx_entry.inspect = _Inspect()
Source.__init__ = _source_init
Source.as_ast = _as_ast
