"""Targets are data with a memory hierarchy (levels with size and read bandwidth); `profile()` measures the host's
memory levels; schedules come from codegen; pipelines take a target; the runtime places weights per name."""

from __future__ import annotations

import numpy as np
import pytest

from actsparse import targets
from actsparse.targets import MemoryLevel


@pytest.mark.parametrize("name", ["x86", "arm", "cuda"])
def test_every_target_declares_its_memory_levels(name):
    t = targets.get(name)
    assert t.memory and all(isinstance(lv, MemoryLevel) and lv.size_bytes > 0 for lv in t.memory)
    assert t.main_memory is not None and t.main_memory.read_bandwidth > 0
    assert t.llc_bytes > 0
    if name == "cuda":  # shared memory is the GPU schedule's, not a "cache": two names, no ambiguity
        assert t.shared_memory_bytes == 48 << 10 and t.l2_bytes == 0
        assert [lv.name for lv in t.memory] == ["shared", "L2", "VRAM", "host"]
        assert t.level("VRAM").read_bandwidth > 10 * t.level("host").read_bandwidth  # what hot/cold weighs
    else:
        assert t.shared_memory_bytes == 0 and t.l2_bytes > 0 and t.main_memory.name == "DRAM"
        assert [lv.name for lv in t.memory][-2:] == (["DRAM", "disk"] if name == "x86" else ["L3", "DRAM"])
    assert t.to_dict()["memory"][0]["name"] == t.memory[0].name


def test_a_target_naming_a_cpu_has_that_cpus_features_not_the_hosts():
    """An x86 target built from a TVM dict naming a CPU takes LLVM's features of that CPU: an AVX2 build on an
    AVX-512 host gets 256-bit AVX2 kernels (it had the host's 512-bit width and AVX-512 features, whose kernels an
    AVX2 CPU cannot run), and it runs here only where this CPU has all of them."""
    from actsparse.targets.x86 import missing_features

    haswell = targets.get({"kind": "llvm", "mcpu": "haswell"})
    assert haswell.vector_bits == 256 and set(haswell.features) == {"avx2", "fma", "f16c"}
    assert haswell.tvm["mcpu"] == "haswell" and haswell.exact_gate == "dense"
    spr = targets.get({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 4})
    assert spr.vector_bits == 512 and {"avx512f", "avx512_vnni", "avx2"} <= set(spr.features) and spr.threads == 4
    assert spr.runs_here == (not missing_features(spr.to_dict())) and spr.runs_here == targets.runs_here(spr.to_dict())
    assert {"avx512bw", "avx512vl", "avx512_fp16", "gfni"} <= set(spr.requires)  # what LLVM may emit for it
    if not spr.runs_here:
        assert "which this CPU lacks" in spr.run_hint
    narrowed = targets.get({"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-avx512f"]})
    assert narrowed.vector_bits == 256 and not any(f.startswith("avx512") for f in narrowed.features)
    generic = targets.get({"kind": "llvm"})
    assert generic.vector_bits == 128 and generic.features == () and generic.runs_here
    host = targets.get("x86")
    assert targets.runs_here(host.to_dict()) and not missing_features(host.to_dict())
    assert not targets.runs_here({**host.to_dict(), "features": [*host.features, "avx512_4fmaps"]})
    # a build records every instruction set LLVM may use for its CPU, beyond those the kernels choose by: a Zen 4
    # build holds AVX512-VBMI (vpermb), which a Cooper Lake with every one of its kernel features lacks
    assert set(haswell.requires) >= {"avx", "avx2", "fma", "bmi2"} and not any("avx512" in f for f in haswell.requires)
    assert "avx512vbmi" in targets.get("x86:znver4").requires and "sha_ni" not in targets.get("x86:znver4").requires
    assert not targets.runs_here({**host.to_dict(), "requires": [*host.requires, "avx512_4vnniw"]})


def test_profile_measures_the_host():
    # no wall-clock bound here: a test worker beside it makes any time limit a flaky speed claim
    host = targets.profile(seconds_per_level=0.1)
    assert all(lv.measured and lv.read_bandwidth > 1e8 for lv in host.memory)  # > 0.1 GB/s: a real measurement
    names = [lv.name for lv in host.memory]
    assert names[-2:] == ["DRAM", "disk"] and "L2" in names
    assert host.level("L2").size_bytes == targets.get("x86").l2_bytes  # sizes as declared (from /sys)


def test_schedule_comes_from_codegen_and_targets_import_no_codegen():
    import ast
    from pathlib import Path

    from actsparse.codegen.schedules import schedule_for

    x86 = targets.get("x86")
    sched = schedule_for(x86)
    assert (sched.lanes, sched.threads, sched.l2_bytes) == (x86.lanes, x86.threads, x86.l2_bytes)
    assert not hasattr(x86, "schedule") and not hasattr(x86, "cache_bytes")
    for path in (Path(targets.__file__).parent).glob("*.py"):
        imported = [n.module or "" for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)]
        assert not any("codegen" in m for m in imported), path


def test_pipeline_for_takes_a_target_and_keeps_the_old_form():
    from actsparse.passes import pipeline_for
    from actsparse.passes.pipeline import PipelineOptions

    assert [p.name for p in pipeline_for("exact")] == [p.name for p in pipeline_for("exact", "arm")]
    assert PipelineOptions(targets.get("arm")).target.name == "arm"
    assert PipelineOptions().target.name == "x86"  # the default: the host
    with pytest.raises(Exception, match="unknown target 'tpu'"):
        pipeline_for("exact", "tpu")


def test_runtime_places_each_weight_where_told(tmp_path):
    import actsparse

    from .helpers import gated_mlp_graph, mlp_input

    cm = actsparse.compile(gated_mlp_graph(), (mlp_input(),), mode="exact")
    x = mlp_input(seq=3)
    name = cm.weight_order[0]
    placed = type(cm)(cm.executable, cm.weights, cm.weight_order, cm.graph, cm.inputs, cm.n_outputs, cm.report,
                      cm.target_info, placement={name: "host"})
    np.testing.assert_allclose(placed(x), cm(x), rtol=1e-6)
    loaded = actsparse.load(placed.save(tmp_path / "m"))
    assert loaded.placement == {name: "host"}
    with pytest.raises(ValueError, match="placement: unknown weights or places"):
        type(cm)(cm.executable, cm.weights, cm.weight_order, cm.graph, cm.inputs, cm.n_outputs, cm.report,
                 cm.target_info, placement={name: "moon"})


def test_an_arm_module_using_a_feature_this_core_lacks_does_not_run_here(monkeypatch):
    """On an aarch64 host without the dot product (a Cortex-A53 or A72), an `arm-dotprod` module would stop on its
    first sdot: it is not runnable there and says which feature is missing; the features the core has run."""
    from actsparse.targets import arm

    monkeypatch.setattr(arm, "on_aarch64", lambda: True)
    monkeypatch.setattr(arm, "host_features", lambda: ("fp16fml",))
    dotprod, fhm, plain = targets.get("arm-dotprod"), targets.get("arm-fhm"), targets.get("arm")
    assert not dotprod.runs_here and "dotprod, which this CPU lacks" in dotprod.run_hint
    assert fhm.runs_here and plain.runs_here and dotprod.cross_compiler is None  # built here, natively
    assert not targets.runs_here(dotprod.to_dict()) and targets.runs_here(fhm.to_dict())
    assert "dotprod" in targets.why_not_here(dotprod.to_dict())
