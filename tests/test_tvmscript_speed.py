"""Kernels expand their `T.macro`s without TVM's `inspect.getouterframes` walk (codegen/kernels/tvmscript_speed.py),
which costs about half a second per expansion once transformers is imported, and the kernel is TVM's own."""

import inspect

import pytest

pytest.importorskip("tvm")

from tvm.script.parser.core.parser import ScriptMacro  # noqa: E402

from actsparse.codegen.kernels import tvmscript_speed  # noqa: E402
from actsparse.codegen.kernels.linear import linear  # noqa: E402
from actsparse.codegen.kernels.schedule import CpuSchedule  # noqa: E402


def test_macros_expand_without_getouterframes_and_give_tvms_kernel(monkeypatch):
    build = linear.__wrapped__  # not the cached PrimFunc: each call parses
    sched = CpuSchedule(lanes=8, threads=2)
    assert ScriptMacro._find_parser_def is tvmscript_speed._find_parser_def
    walks = []
    original = inspect.getouterframes
    monkeypatch.setattr(inspect, "getouterframes", lambda *a, **k: walks.append(1) or original(*a, **k))

    fast = build(19, 23, sched=sched, bias=True)
    fast_walks = len(walks)  # the prim_func decorator's own inspect.stack(): once per PrimFunc
    assert fast_walks <= 1
    with monkeypatch.context() as patch:  # TVM's own lookup walks the stack per macro, for the same PrimFunc
        patch.setattr(ScriptMacro, "_find_parser_def", tvmscript_speed.TVM_FIND_PARSER_DEF)
        tvms = build(19, 23, sched=sched, bias=True)
    assert len(walks) - fast_walks > 3
    assert fast.script() == tvms.script()
