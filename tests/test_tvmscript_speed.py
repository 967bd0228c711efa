"""Kernels parse without TVMScript's repeated source work (codegen/kernels/tvmscript_speed.py): no
`inspect.getouterframes` walk per `T.macro` expansion (about half a second each once transformers is imported), no
FrameInfo per frame when `T.prim_func` decorates, one `Source` per function and one doc AST per source text; and
the kernel is TVM's own."""

import inspect

import pytest

pytest.importorskip("tvm")

from tvm.script.parser.core import doc  # noqa: E402
from tvm.script.parser.core.diagnostics import Source  # noqa: E402
from tvm.script.parser.core.parser import ScriptMacro  # noqa: E402
from tvm.tirx.script.parser import entry as tirx_entry  # noqa: E402

from actsparse.codegen.kernels import tvmscript_speed  # noqa: E402
from actsparse.codegen.kernels.linear import linear  # noqa: E402
from actsparse.codegen.kernels.schedule import CpuSchedule  # noqa: E402


def _tvms_own(patch) -> None:
    patch.setattr(ScriptMacro, "_find_parser_def", tvmscript_speed.TVM_FIND_PARSER_DEF)
    patch.setattr(tirx_entry, "inspect", inspect)
    patch.setattr(Source, "__init__", tvmscript_speed.TVM_SOURCE_INIT)
    patch.setattr(Source, "as_ast", tvmscript_speed.TVM_AS_AST)


def test_kernels_parse_without_repeated_source_work_and_give_tvms_kernel(monkeypatch):
    build = linear.__wrapped__  # not the cached PrimFunc: each call parses
    sched = CpuSchedule(lanes=8, threads=2)
    assert ScriptMacro._find_parser_def is tvmscript_speed._find_parser_def
    assert Source.as_ast is tvmscript_speed._as_ast and Source.__init__ is tvmscript_speed._source_init
    walks, frame_infos, doc_parses = [], [], []
    getouterframes, getframeinfo, parse = inspect.getouterframes, inspect.getframeinfo, doc.parse
    monkeypatch.setattr(inspect, "getouterframes", lambda *a, **k: walks.append(1) or getouterframes(*a, **k))
    monkeypatch.setattr(inspect, "getframeinfo", lambda *a, **k: frame_infos.append(1) or getframeinfo(*a, **k))
    monkeypatch.setattr(doc, "parse", lambda *a, **k: doc_parses.append(1) or parse(*a, **k))

    build(17, 29, sched=sched, bias=True)  # fills the caches with this factory's sources and trees
    walks.clear(), frame_infos.clear(), doc_parses.clear()
    fast = build(19, 23, sched=sched, bias=True)
    assert walks == [] and doc_parses == []  # every tree from the cache, no stack walk
    assert len(frame_infos) <= 3  # the decorator's stack: only the frames it reads, not all ~30 of pytest's
    with monkeypatch.context() as patch:  # TVM's own lookups, for the same PrimFunc
        _tvms_own(patch)
        tvms = build(19, 23, sched=sched, bias=True)
    assert len(walks) > 3 and len(doc_parses) > 3 and len(frame_infos) > 10
    assert fast.script() == tvms.script()
