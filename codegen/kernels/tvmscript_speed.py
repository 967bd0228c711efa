"""A faster `T.macro` expansion in TVMScript 0.27 (same result): imported by `common.py`, so by every kernel.

Each expansion of a `T.macro` inside a PrimFunc looks for the active parser in the globals of the calling frames
with `inspect.getouterframes`, which builds a FrameInfo (source file, module lookup, source line) for every frame
of the stack. `inspect.getmodule` scans all of `sys.modules` for each frame, so once transformers is imported
(~4000 modules) one macro expansion costs about half a second: eight kernels took 43 s to parse instead of 5 s
(`python benchmarks/tvmscript_parse.py`). Only the frames' globals are read, so walking `f_back` gives the same
parser without the FrameInfos.
"""

from __future__ import annotations

import sys

from tvm.script.parser.core.parser import ScriptMacro

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
