"""Targets as data, one file each. `get()` accepts a name (`x86`: this host; `x86:<cpu>`: an x86 CPU LLVM knows,
e.g. `x86:x86-64-v3` for any AVX2 machine), a Target, or a TVM target dict; `profile()` measures the host's memory
hierarchy."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import TargetError
from .base import Target
from .memory import MemoryLevel


def _x86() -> Target:
    from .x86 import host

    return host()


def _arm() -> Target:
    from .arm import host_features, target

    return target(features=host_features())  # baseline NEON when cross-compiling


def _arm_fhm() -> Target:
    from .arm import target

    return target(features=("fp16fml",))


def _arm_dotprod() -> Target:
    from .arm import target

    return target(features=("dotprod",))


def _cuda() -> Target:
    from .cuda import target

    return target()


REGISTRY: dict[str, Callable[[], Target]] = {"x86": _x86, "cuda": _cuda, "arm": _arm, "arm-fhm": _arm_fhm,
                                             "arm-dotprod": _arm_dotprod}


CPU_PREFIX = "x86:"  # a target name naming an x86 CPU: "x86:haswell", "x86:x86-64-v3"


def names() -> list[str]:
    return list(REGISTRY)


def get(spec: str | Target | dict) -> Target:
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, dict):
        if "aarch64" in str(spec.get("mtriple", "")):
            from .arm import features_of, target

            base = target(features=features_of(spec.get("mattr")))  # the features its mattr enables
        elif spec.get("kind") == "cuda":
            base = REGISTRY["cuda"]()
        else:
            from .x86 import for_cpu

            return for_cpu(spec)  # the CPU it names (LLVM's features of it), not this host
        return Target(**{**base.__dict__, "tvm": dict(spec)})
    if spec.startswith(CPU_PREFIX):  # "x86:x86-64-v3": built for that CPU (and the ones that have its features)
        from .x86 import for_cpu

        return for_cpu({"kind": "llvm", "mcpu": spec[len(CPU_PREFIX):]})
    if spec not in REGISTRY:
        raise TargetError(f"unknown target {spec!r}; valid targets: {', '.join(names())}, or x86:<cpu> for another "
                          "x86 CPU than this one (x86:x86-64-v3: any AVX2 CPU)")
    return REGISTRY[spec]()


def profile(seconds_per_level: float = 0.4, rpc: str | None = None, key: str | None = None,
            target: str | Target = "x86") -> Target:
    """The host's CPU target with its memory levels measured here and now (sizes from /sys, each level's read
    bandwidth from a short streaming read; under ~5 s): what cost-deciding passes should read on this machine.

    With `rpc="host:port"` and `key`: `target`'s levels measured on the device registered under `key` with that
    TVM RPC tracker (a streaming-read kernel built here, timed there; `remote.py`)."""
    from dataclasses import replace

    from .memory import measure_host_levels

    if rpc is not None or key is not None:
        from .remote import profile_remote

        if not rpc or not key:
            raise TargetError("remote profiling needs both rpc='host:port' (the TVM RPC tracker) and key=... (the "
                              "device's key)")
        return profile_remote(rpc, key, get(target), seconds_per_level)
    return replace(get("x86"), memory=measure_host_levels(seconds_per_level))


def runs_here(info: dict) -> bool:
    """Whether a module built for the target `info` (a `Target.to_dict()`, e.g. from an artifact's manifest)
    runs on this machine: the registry rebuilds the target from its name with this machine's facts; an x86
    module runs where this CPU has every feature it was built with (an AVX-512 build stops on an illegal
    instruction on an AVX2 machine)."""
    return not why_not_here(info)


def why_not_here(info: dict) -> str:
    """'' where a module built for the target `info` runs on this machine, else why not and the way out."""
    name = info.get("name")
    if name == "x86":
        from .x86 import not_here

        return not_here(info)
    if name in REGISTRY:
        target = get(name)
        return "" if target.runs_here else target.run_hint or "run it on a machine of that kind"
    return "" if info.get("runs_here", True) else info.get("run_hint") or "run it on a machine of that kind"


__all__ = ["MemoryLevel", "Target", "get", "names", "profile", "runs_here", "why_not_here"]
