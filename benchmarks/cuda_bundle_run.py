"""Time the bundled CUDA MLP kernels on a GPU machine that has PyTorch and nvcc but no TVM (issue 18).

    python -m actsparse.benchmarks.cuda_bundle_run [BUNDLE] [--repeats 50] [--sizes small,mistral] [--dry-run]

BUNDLE (default out/cuda_bundle) is what `cuda_bundle.py` wrote here: the kernels' CUDA source as TVM emits it and
a manifest of each MLP's tensors and launches. This runner imports neither TVM nor the rest of actsparse: it
compiles each source with nvcc for the GPU's architecture (a cubin), loads it through libcuda
(cuModuleLoadData / cuModuleGetFunction) and issues each MLP's launch sequence with cuLaunchKernel on torch's
current stream, the arguments packed from torch tensors' data pointers and the manifest's integers.

For each MLP (batch 1, fp16 weights, ReGLU; the gate's signs chosen so that exactly the sampled neurons are
active; input mode: SwiGLU with thresholds that keep exactly the sampled channels and neurons): the output is
checked against the same MLP in float64 over the same fp16 weights, on the GPU (max error / max |ref| ≤ 1e-2);
then, interleaved, the launch sequence (replayed from a CUDA graph, and launched eagerly), cuBLAS fp16 dense
(torch F.linear, from a CUDA graph) and a torch copy of the bytes the MLP must read are each timed with CUDA
events, the L2 flushed (4x its size rewritten) before every call. Printed: median microseconds, the MLP's weight
bytes read per second, that as a share of the copy's bandwidth (read + write bytes per second) and of a 1 GiB
copy's, and the speed-up over cuBLAS fp16. `--dry-run` needs no GPU: it packs every launch's arguments over CPU
tensors and checks them against the manifest (as tests/test_cuda_bundle.py does).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_BUNDLE = Path("out/cuda_bundle")
TOLERANCE = 1e-2  # max |out - ref| / max |ref|: fp16 weights, fp32 sums in a different order
CTYPES = {"int64": ctypes.c_int64, "int32": ctypes.c_int32, "uint32": ctypes.c_uint32, "float32": ctypes.c_float}


def load_manifest(bundle: Path) -> dict:
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no bundle at {bundle}: write one first (python -m actsparse.benchmarks.cuda_bundle "
                                f"--out {bundle}) and carry it to the GPU machine")
    return json.loads(path.read_text())


@functools.cache
def _base(d: int, n_ff: int, wdt: str, seed: int):
    """x and the three weight matrices of one size (shared by its MLPs: only the gate's signs differ)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, d), np.float32)
    ws = [(rng.standard_normal((n_ff, d), np.float32) / scale).astype(wdt) for scale in (d**0.5, d**0.5, n_ff**0.5)]
    return x, *ws, rng.permutation(n_ff), rng.permutation(d)


def make_inputs(mlp: dict, seed: int = 0) -> dict:
    """numpy arrays for every tensor of `mlp` (manifest entry): x, weights with the gate's row signs set so that
    relu(gate) > 0 exactly on `n_active` neurons, their index list and count, zeroed output and scratch. Input
    mode: thresholds 0 on `n_active` channels and neurons, inf on the others (kept exactly where sampled)."""
    import numpy as np

    d, n_ff, n_active, wdt = mlp["d"], mlp["n_ff"], mlp["n_active"], mlp["dtype"]
    x, wg, wu, wd_t, order, channels = _base(d, n_ff, wdt, seed)
    active = np.zeros(n_ff, bool)
    active[order[:n_active]] = True
    made = {"x": x, "w_up": wu, "w_down_t": wd_t, "w_gate_t": np.ascontiguousarray(wg.T),
            "w_up_t": np.ascontiguousarray(wu.T),
            "x_thr": np.where(np.isin(np.arange(d), channels[:n_active]), 0, np.inf).astype(np.float32),
            "h_thr": np.where(active, 0, np.inf).astype(np.float32)}
    if mlp["kind"] != "input":
        g = wg.astype(np.float32) @ x[0]
        made["w_gate"] = wg * np.where(active == (g > 0), 1, -1).astype(wdt)[:, None]  # negation is exact in fp16
    out = {}
    for t in mlp["tensors"]:
        if t["fill"] == "idx":
            idx = np.zeros(t["shape"], np.int32)
            idx[0, :n_active] = np.flatnonzero(active)
            out[t["name"]] = idx
        elif t["fill"] == "count":
            out[t["name"]] = np.full(t["shape"], n_active, np.int32)
        elif t["fill"] in ("zero", "empty"):
            out[t["name"]] = np.zeros(t["shape"], t["dtype"])
        else:
            out[t["name"]] = made[t["fill"]]
        assert list(out[t["name"]].shape) == t["shape"] and str(out[t["name"]].dtype) == t["dtype"], t
    return out


def reference(t: dict, kind: str, exp):
    """The MLP in float64 over the same (fp16) weights, from `t` (the inputs as float64 numpy arrays or torch
    tensors; `exp` numpy's or torch's): down(relu(gate x) * up x); input mode: x kept where |x| > x_thr,
    h = silu(gate x) * up x kept where |h| > h_thr."""
    if kind != "input":
        g = t["x"] @ t["w_gate"].T
        return (g * (g > 0) * (t["x"] @ t["w_up"].T)) @ t["w_down_t"]
    xs = t["x"] * (abs(t["x"]) > t["x_thr"])
    g = xs @ t["w_gate_t"]
    h = g / (1 + exp(-g)) * (xs @ t["w_up_t"])
    return (h * (abs(h) > t["h_thr"])) @ t["w_down_t"]


def output_name(mlp: dict) -> str:
    return next(t["name"] for t in mlp["tensors"] if t["role"] == "output")


def pack(launch: dict, pointers: dict[str, int]) -> tuple[ctypes.Array, list]:
    """cuLaunchKernel's `kernelParams` (an array of pointers to each argument's value) for one launch, and the
    ctypes values it points to (kept alive by the caller)."""
    values = []
    for arg in launch["args"]:
        if "tensor" in arg:
            values.append(ctypes.c_void_p(pointers[arg["tensor"]]))
        else:
            values.append(CTYPES[arg["ctype"]](arg["value"]))
    params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    return params, values


class Driver:
    """The few libcuda entry points the runner needs, on the context torch made current."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.check(self.lib.cuInit(0), "cuInit")

    def check(self, status: int, what: str):
        if status != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(status, ctypes.byref(name))
            raise RuntimeError(f"{what} failed: {name.value.decode() if name.value else status}")

    def load(self, image: bytes) -> dict:
        module = ctypes.c_void_p()
        self.check(self.lib.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(image)), "cuModuleLoadData")
        return {"module": module}

    def function(self, module: dict, name: str) -> ctypes.c_void_p:
        fn = ctypes.c_void_p()
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(fn), module["module"], name.encode()),
                   f"cuModuleGetFunction({name})")
        return fn

    def launch(self, fn, launch: dict, params, stream: int):
        (gx, gy, gz), (bx, by, bz) = launch["grid"], launch["block"]
        status = self.lib.cuLaunchKernel(fn, gx, gy, gz, bx, by, bz, launch["dynamic_shared_bytes"],
                                         ctypes.c_void_p(stream), params, None)
        self.check(status, f"cuLaunchKernel({launch['kernel']})")


def compile_cubin(source: Path, arch: str, workdir: Path) -> bytes:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    cubin = workdir / (source.stem + ".cubin")
    proc = subprocess.run([nvcc, "--cubin", f"-arch={arch}", "-O3", "-o", str(cubin), str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{proc.stderr[-4000:]}")
    return cubin.read_bytes()


def dry_run(manifest: dict, mlps: list[dict]) -> int:
    """Pack every launch over CPU tensors: each argument resolves to a tensor of the MLP or a typed integer, and
    each pointer packed is that tensor's data pointer. Returns the number of launches packed."""
    import torch

    n = 0
    for mlp in mlps:
        tensors = {k: torch.from_numpy(v) for k, v in make_inputs(mlp).items()}
        pointers = {name: t.data_ptr() for name, t in tensors.items()}
        for launch in mlp["launches"]:
            params, values = pack(launch, pointers)
            for arg, value, slot in zip(launch["args"], values, params):
                assert slot == ctypes.addressof(value)
                assert value.value == (pointers[arg["tensor"]] if "tensor" in arg else arg["value"]), (arg, value)
            n += 1
    return n


def timed(torch, fn, flush) -> float:
    flush.zero_()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3  # microseconds


def copy_bandwidth(torch, flush) -> float:
    """The device's copy bandwidth, GB/s counting bytes read and written: a 1 GiB copy, median of 5."""
    import numpy as np

    src = torch.empty(1 << 28, dtype=torch.float32, device=flush.device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / float(np.median([timed(torch, lambda: dst.copy_(src), flush) for _ in range(5)])) / 1e3


def in_graph(torch, fn):
    """`fn` captured in a CUDA graph: its replay (no host work between its launches), or None when the capture
    fails (the error printed; the eager figure then stands alone)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # warm-up off the default stream, as torch asks before a capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
        return graph.replay
    except RuntimeError as err:
        print(f"CUDA graph capture failed: {err}", file=sys.stderr)
        return None


def run(bundle: Path, manifest: dict, mlps: list[dict], repeats: int) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    torch.zeros(1, device=dev)  # torch's context is current from here on
    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"sm_{major}{minor}"
    driver = Driver()
    print(f"GPU: {props.name} ({arch}, {props.multi_processor_count} SMs; bundle scheduled for {manifest['arch']}) "
          f"| load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        modules = {src: driver.load(compile_cubin(Path(bundle) / src, arch, Path(tmp))) for src in manifest["sources"]
                   if any(m["source"] == src for m in mlps)}
    flush = torch.empty(max(props.L2_cache_size, 1 << 20), dtype=torch.float32, device=dev)  # 4x L2 in bytes
    peak_gbs = copy_bandwidth(torch, flush)
    print(f"\n**CUDA MLP kernels from the bundle (TVM-generated source, launched through libcuda)** — {props.name}; "
          f"batch 1, fp16 weights; L2 flushed before each call; median of {repeats} (CUDA events); 1 GiB copy "
          f"{peak_gbs:.0f} GB/s (read + write)\n")
    print("Each MLP and cuBLAS's chain is timed replayed from a CUDA graph (device time, no host between launches); "
          "'eager' launches ours one by one through ctypes (includes the host's launch gaps).\n")
    print("| MLP | launches | median us | eager us | cuBLAS fp16 us | copy us | MB read | GB/s | % of copy BW | "
          "% of 1 GiB copy | vs cuBLAS | max err |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    failed = []
    for mlp in mlps:
        host = make_inputs(mlp)
        tensors = {k: torch.from_numpy(v).to(dev) for k, v in host.items()}
        fns = [driver.function(modules[mlp["source"]], launch["kernel"]) for launch in mlp["launches"]]
        packed = [pack(launch, {k: t.data_ptr() for k, t in tensors.items()}) for launch in mlp["launches"]]

        def ours():  # on torch's current stream: the capture stream inside a graph capture
            stream = torch.cuda.current_stream().cuda_stream
            for fn, launch, (params, _) in zip(fns, mlp["launches"], packed):
                driver.launch(fn, launch, params, stream)

        x16 = tensors["x"].to(torch.float16)  # cuBLAS: the same dense ReGLU for every kind (input mode's SiLU aside)
        wg = tensors["w_gate"] if "w_gate" in tensors else tensors["w_gate_t"].t().contiguous()
        wu = tensors["w_up"] if "w_up" in tensors else tensors["w_up_t"].t().contiguous()
        wd = tensors["w_down_t"].t().contiguous()
        src = torch.empty(mlp["bytes_read"] // 2, dtype=torch.float16, device=dev)
        dst = torch.empty_like(src)

        def dense():
            return F.linear(F.relu(F.linear(x16, wg)) * F.linear(x16, wu), wd)

        runners = {"eager": ours, "copy of the bytes read": lambda: dst.copy_(src)}
        with torch.no_grad():
            ours()
            torch.cuda.synchronize()
            ref = reference({k: t.double() for k, t in tensors.items()}, mlp["kind"], torch.exp)  # on the GPU
            err = float((tensors[output_name(mlp)].double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            if not err <= TOLERANCE:
                failed.append(f"{mlp['name']}: max error / max |ref| {err:.2e} > {TOLERANCE:g}")
                continue
            runners["actsparse"] = in_graph(torch, ours) or ours
            runners["cuBLAS fp16 dense"] = in_graph(torch, dense) or dense
            for fn in runners.values():
                fn()
            times = {name: [] for name in runners}
            for _ in range(repeats):
                for name, fn in runners.items():
                    times[name].append(timed(torch, fn, flush))
        us = {name: float(np.median(t)) for name, t in times.items()}
        copy_gbs = 2 * mlp["bytes_read"] / us["copy of the bytes read"] / 1e3
        gbs = mlp["bytes_read"] / us["actsparse"] / 1e3
        print(f"| {mlp['name']} | {len(mlp['launches'])} | {us['actsparse']:.1f} | {us['eager']:.1f} | "
              f"{us['cuBLAS fp16 dense']:.1f} | "
              f"{us['copy of the bytes read']:.1f} | {mlp['bytes_read'] / 1e6:.1f} | {gbs:.0f} | "
              f"{gbs / copy_gbs:.0%} | {gbs / peak_gbs:.0%} | {us['cuBLAS fp16 dense'] / us['actsparse']:.2f}x | "
              f"{err:.1e} |", flush=True)
    for line in failed:
        print(f"MISMATCH: {line}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", type=Path, default=DEFAULT_BUNDLE, help="the folder cuda_bundle wrote")
    ap.add_argument("--repeats", type=int, default=50, help="timed calls per MLP and runner")
    ap.add_argument("--sizes", default=None, help="comma-separated sizes of the bundle to run (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="pack every launch over CPU tensors; no GPU needed")
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.bundle)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mlps = manifest["mlps"]
    if args.sizes:
        known = {m["size"] for m in mlps}
        unknown = set(args.sizes.split(",")) - known
        if unknown:
            print(f"error: the bundle has no size {', '.join(sorted(unknown))}; it has {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
        mlps = [m for m in mlps if m["size"] in args.sizes.split(",")]
    if args.repeats < 1:
        print(f"error: --repeats {args.repeats}: give at least 1", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"dry run: {dry_run(manifest, mlps)} launches of {len(mlps)} MLPs packed")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("error: torch finds no CUDA GPU here; --dry-run checks the bundle without one", file=sys.stderr)
        return 2
    return run(args.bundle, manifest, mlps, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
