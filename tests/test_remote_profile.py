"""targets.profile(rpc=..., key=...) on loopback: a local TVM RPC tracker and server (subprocesses), the memory levels
measured through them, plausible and close to a local run."""

import socket
import subprocess
import sys
import time

import pytest

from actsparse import targets
from actsparse.errors import TargetError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def long_sessions(monkeypatch):
    """Sessions of 10 min instead of targets.remote.connect's 60 s: on a loaded machine (two pytest-xdist workers in
    CI, more on a shared one) a profile through RPC can outlast 60 s; how long it takes is not what is checked."""
    from actsparse.targets import remote

    monkeypatch.setattr(remote.connect, "__defaults__", (600.0,))


@pytest.fixture(scope="module")
def tracker():
    for module in ("tornado", "cloudpickle", "psutil"):
        pytest.importorskip(module, reason=f"TVM's RPC tracker/server need {module} (pip install {module})")
    port, server_port = _free_port(), _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                               str(port), "--port-end", str(port + 1)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)]
    try:
        time.sleep(2)
        procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                                       "--key", "loopback", "--host", "127.0.0.1", "--port", str(server_port),
                                       "--port-end", str(server_port + 1)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        from tvm import rpc

        for _ in range(60):   # until the server has registered with the tracker
            if any(p.poll() is not None for p in procs):
                pytest.skip("the TVM RPC tracker or server could not start: "
                            + b"".join(p.stdout.read() or b"" for p in procs if p.poll() is not None).decode()[-300:])
            try:
                summary = rpc.connect_tracker("127.0.0.1", port).summary()
                if any("loopback" in str(q) for q in summary.get("queue_info", {})):
                    break
            except Exception:
                pass
            time.sleep(0.5)
        else:
            pytest.skip("the TVM RPC server did not register with the tracker within 30 s")
        yield f"127.0.0.1:{port}"
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


def test_profile_through_a_loopback_tracker_measures_plausible_levels(tracker):
    remote = targets.profile(seconds_per_level=0.05, rpc=tracker, key="loopback")
    local = targets.profile(seconds_per_level=0.05)
    names = [lv.name for lv in remote.memory]
    assert names == [lv.name for lv in local.memory]
    for lv in remote.memory:
        if lv.name == "disk":
            assert not lv.measured
            continue
        assert lv.measured and 1e8 < lv.read_bandwidth < 1e13, lv
    # the same machine: main memory within noise of the local measurement (the machine is shared: a wide band)
    ratio = remote.level("DRAM").read_bandwidth / local.level("DRAM").read_bandwidth
    assert 0.1 < ratio < 10, ratio
    assert "loopback" in remote.description


def test_remote_profile_errors_name_the_way_out():
    with pytest.raises(TargetError, match="host:port"):
        targets.profile(rpc="nowhere", key="k")
    with pytest.raises(TargetError, match="needs both"):
        targets.profile(rpc="127.0.0.1:9")


def test_cli_bench_through_the_tracker_measures_the_device(tracker, tmp_path, capsys, monkeypatch):
    import actsparse
    from actsparse.cli import main

    from .helpers import gated_mlp_graph, mlp_input

    out = actsparse.compile(gated_mlp_graph(), (mlp_input(),), mode="exact").save(tmp_path / "mlp.actsparse")
    assert main(["bench", str(out), "--rpc", tracker, "--key", "loopback"]) == 0
    printed = capsys.readouterr().out
    assert "measured on the device" in printed and "DRAM" in printed and "GB/s" in printed
    assert main(["bench", str(out), "--rpc", tracker]) == 2
