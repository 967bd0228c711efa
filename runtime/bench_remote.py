"""`actsparse bench ARTIFACT --rpc HOST:PORT --key K`: the memory levels of a device registered with a TVM RPC
tracker, measured there for the artifact's target (`targets.profile(rpc=...)`: a streaming-read kernel built here,
timed on the device), and what they mean for the artifact: its MLP weight bytes read per token at the device's main
memory bandwidth. Running the whole artifact on the device (its Relax VM over RPC) is not in this build."""

from __future__ import annotations


def bench_remote(path: str, rpc: str, key: str) -> str:
    from .. import targets
    from ..targets.remote import connect, measure_remote_levels
    from .module import read_report

    report, _ = read_report(path)   # verified like a load
    target = artifact_target_of(report, targets)
    levels = measure_remote_levels(connect(rpc, key), target)
    main = next((lv for lv in levels if lv.name in ("DRAM", "VRAM")), levels[-1])
    figures = ", ".join(f"{lv.name} {lv.read_bandwidth / 1e9:.1f} GB/s" + ("" if lv.measured else " (declared)")
                        for lv in levels)
    return (f"{path}: target {target.name}, memory levels of {key!r} via {rpc} (measured on the device):\n"
            f"  {figures}\n  main memory ({main.name}) reads {main.read_bandwidth / 1e9:.1f} GB/s: what the cost "
            "model (hot/cold split, sparse vs dense) uses for this device")


def artifact_target_of(report, targets):
    return targets.get(report.target if report.target in targets.names() else "x86")
