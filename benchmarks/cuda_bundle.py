"""A self-contained bundle of the CUDA MLP kernels, so that a GPU machine without TVM can time them (issue 18).

The H200 machines this workplace lends have PyTorch and nvcc but no TVM, and TVM's compiler library is too large
to carry there. So the kernels are generated here, exactly as TVM emits them for a model, and written with what
TVM's host code would do with them:

    python -m actsparse.benchmarks.cuda_bundle [--out out/cuda_bundle] [--arch sm_90] [--sizes small,mistral]

writes `<size>.cu` (the CUDA source of one module holding the exact, indexed, dense, threshold and input kernels at
that size, fp16 weights) and `manifest.json`: for each MLP (size x kind x sparsity, batch M = 1) its tensors
(name, shape, dtype, role, how the runner fills it) and its launch sequence — kernel name, every argument (a
tensor by name, or an integer with its C type), grid and block extents, dynamic shared memory. The launches are
read from TVM's own lowered host function (`tirx.call_ffi_kernel` in the order the host code issues them, the
extents evaluated at the MLP's sizes), the C types from the kernel signatures in the source; nothing is restated.
`cuda_bundle_run.py` compiles the sources with nvcc on the GPU machine and launches them through libcuda.

The bundle is a build output (under the ignored out/); a device call carries it (`carry: ["out/cuda_bundle"]`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import operator
import re
import sys
from pathlib import Path

SIZES = {"small": (512, 2048), "mistral": (4096, 14336)}
KINDS = ("exact", "indexed", "dense", "threshold", "input")
SPARSITIES = (0.5, 0.9, 0.95)
DEFAULT_OUT = Path("out/cuda_bundle")
MANIFEST = "manifest.json"
VERSION = 1
TAG_SLOT = {"blockIdx.x": ("grid", 0), "blockIdx.y": ("grid", 1), "blockIdx.z": ("grid", 2),
            "threadIdx.x": ("block", 0), "threadIdx.y": ("block", 1), "threadIdx.z": ("block", 2)}
DYN_SHARED_TAG = "tirx.use_dyn_shared_memory"
# how the runner fills each parameter the kernels take, by name; everything after the output is scratch
FILLS = {name: name for name in ("x", "w_gate", "w_up", "w_down_t", "idx", "count", "w_gate_t", "w_up_t", "x_thr",
                                 "h_thr")}
# integer evaluation of the host code's launch arguments (sizes, extents)
_OPS = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "FloorDiv": operator.floordiv,
        "FloorMod": operator.mod, "Min": min, "Max": max,
        "Div": lambda a, b: int(a / b)}  # C division truncates toward zero
SIGNATURE = re.compile(r'extern "C" __global__ void __launch_bounds__\(\d+\) (\w+)\(([^)]*)\) \{')
CTYPES = {"int64_t": "int64", "int": "int32", "int32_t": "int32", "unsigned int": "uint32", "uint": "uint32",
          "float": "float32"}


def mlp_prims(d: int, n_ff: int, dtype: str, sched) -> dict:
    """kind -> the PrimFunc a model's MLP gets (ReGLU: relu gate, identity up; threshold 0 on the gate; input
    mode, TEAL on SwiGLU: silu gate, |h| against its threshold)."""
    from actsparse.codegen.kernels import kernel

    kw = dict(gate_act="relu", up_act="identity", threshold=0.0, dtype=dtype, sched=sched)
    prims = {kind: kernel(kind, d, n_ff, **kw, **({"criterion": "gate"} if kind == "threshold" else {}))
             for kind in KINDS if kind != "input"}
    prims["input"] = kernel("input", d, n_ff, gate_act="silu", up_act="identity", criterion="product", dtype=dtype,
                            sched=sched)
    return prims


def _children(stmt):
    for field in ("seq", "body", "then_case", "else_case"):
        value = getattr(stmt, field, None)
        if value is not None:
            yield from (value if field == "seq" else [value])


def lowered(prims, tvm_target):
    """(host module, {target: device module}): the PrimFuncs through TVM's default TIR pipeline, as a build does."""
    import tvm
    from tvm.tirx.build import split_host_device_mods

    mod = tvm.IRModule({str(p.attrs["global_symbol"]): p for p in prims})
    mod = tvm.tirx.transform.BindTarget(tvm_target.with_host(tvm_target.host))(mod)
    pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(tvm_target)
    with tvm_target:
        mod = pipeline(mod)
    return split_host_device_mods(mod)


def host_calls(prims, tvm_target) -> dict[str, tuple[list, list]]:
    """PrimFunc symbol -> (its kernel launches in issue order, the host code's bound variables): the host half's
    `tirx.call_ffi_kernel` calls after TVM's lowering."""
    host, _ = lowered(prims, tvm_target)
    found = {}
    for gv, func in host.functions.items():
        calls, binds, stack = [], [], [func.body]
        while stack:
            stmt = stack.pop()
            kind = type(stmt).__name__
            if kind == "Bind":
                binds.append((stmt.var, stmt.value))  # Vars compare by identity (same_as), not in a dict
            elif kind == "Evaluate" and getattr(stmt.value, "op", None) is not None \
                    and stmt.value.op.name == "tirx.call_ffi_kernel":
                calls.append(stmt.value)
            stack.extend(reversed(list(_children(stmt))))  # depth first, in statement order
        if calls:
            found[gv.name_hint] = (calls, binds)
    return found


def evaluate(expr, sizes: dict[str, int], binds: list) -> int:
    """An integer expression of the host code at concrete sizes (M, K by name; let-bound names through `binds`)."""
    kind = type(expr).__name__
    if kind == "IntImm":
        return int(expr.value)
    if kind == "Var":
        if expr.name in sizes:
            return sizes[expr.name]
        for var, value in binds:
            if var.same_as(expr):
                return evaluate(value, sizes, binds)
        raise ValueError(f"launch argument {expr} is neither a size ({', '.join(sizes)}) nor bound in the host code")
    if kind == "Cast":
        return evaluate(expr.value, sizes, binds)
    if kind in _OPS:
        return _OPS[kind](evaluate(expr.a, sizes, binds), evaluate(expr.b, sizes, binds))
    raise ValueError(f"cannot evaluate the launch argument {expr} ({kind}) here")


def signatures(source: str) -> dict[str, list[str]]:
    """Kernel name -> its parameters' C types ("ptr" for pointers), from the CUDA source."""
    out = {}
    for name, params in SIGNATURE.findall(source):
        types = []
        for param in (p.strip() for p in params.split(",") if p.strip()):
            ctype = param.rsplit(" ", 1)[0].replace("__restrict__", "").strip()
            if "*" in ctype:
                types.append("ptr")
            elif ctype in CTYPES:
                types.append(CTYPES[ctype])
            else:
                raise ValueError(f"kernel {name}: parameter type {ctype!r} is not one the runner packs")
        out[name] = types
    return out


def launches(calls, binds, sizes: dict[str, int], sigs: dict[str, list[str]]) -> list[dict]:
    """The manifest's launch entries of one PrimFunc's host calls at concrete sizes."""
    entries = []
    for call in calls:
        name = call.args[0].value
        tags = [str(t) for t in call.attrs.launch_params]
        params, extents = call.args[1:len(call.args) - len(tags)], call.args[len(call.args) - len(tags):]
        types = sigs.get(name)
        if types is None or len(types) != len(params):
            raise ValueError(f"kernel {name}: {len(params)} arguments in the host code, signature {types}")
        args = []
        for arg, ctype in zip(params, types):
            op = getattr(arg, "op", None)
            if op is not None and op.name == "tirx.buffer_data":
                if ctype != "ptr":
                    raise ValueError(f"kernel {name}: buffer {arg.args[0].name} passed as {ctype}")
                args.append({"tensor": arg.args[0].name})
            else:
                args.append({"value": evaluate(arg, sizes, binds), "ctype": ctype})
        entry = {"kernel": name, "args": args, "grid": [1, 1, 1], "block": [1, 1, 1], "dynamic_shared_bytes": 0}
        for tag, extent in zip(tags, extents):
            if tag == DYN_SHARED_TAG:
                entry["dynamic_shared_bytes"] = evaluate(extent, sizes, binds)
            else:
                where, axis = TAG_SLOT[tag]
                entry[where][axis] = evaluate(extent, sizes, binds)
        entries.append(entry)
    return entries


def tensors(prim, sizes: dict[str, int]) -> list[dict]:
    """The PrimFunc's parameters at concrete sizes: name, shape, dtype, role, fill (how the runner makes it)."""
    from actsparse.codegen.kernels.scratch import scratch_count

    n_scratch = scratch_count(prim)
    n = len(prim.params)
    out = []
    for i, param in enumerate(prim.params):
        shape = [sizes[str(s)] if type(s).__name__ == "Var" else int(s) for s in param.shape]
        role = "scratch" if i >= n - n_scratch else "output" if i == n - n_scratch - 1 else "input"
        fill = FILLS.get(param.name, "zero" if role == "output" else "empty")
        if role == "input" and param.name not in FILLS:
            raise ValueError(f"the runner cannot fill input {param.name} of {prim.attrs['global_symbol']}")
        out.append({"name": param.name, "shape": shape, "dtype": str(param.dtype), "role": role, "fill": fill})
    return out


def bytes_read(kind: str, d: int, n_ff: int, n_active: int, wbytes: int) -> int:
    """Weight bytes the MLP must read at batch 1 (as ffn_cuda): the gate in full where the kernel decides
    activity itself, up and down rows of the active neurons; all three matrices in full for dense; input mode:
    the kept channels' gate and up rows ([d, n_ff] layout) and the kept neurons' down rows (as many of each)."""
    if kind == "input":
        return (2 * n_active * n_ff + n_active * d) * wbytes
    return {"exact": (n_ff + 2 * n_active), "threshold": (n_ff + 2 * n_active), "indexed": 3 * n_active,
            "dense": 3 * n_ff}[kind] * d * wbytes


def size_entries(size: str, d: int, n_ff: int, dtype: str, arch: str, sparsities, source_file: str):
    """(the CUDA source, the manifest's MLP entries) of one size: one module, one nvcc run."""
    from actsparse.codegen.cuda_support import cuda_source
    from actsparse.codegen.kernels.common import build_kernels
    from actsparse.codegen.schedules import schedule_for
    from actsparse.targets.cuda import target

    cuda = target(arch)
    prims = mlp_prims(d, n_ff, dtype, schedule_for(cuda))
    tvm_target = cuda.tvm_target()
    source = cuda_source(build_kernels(list(prims.values()), tvm_target).mod)
    sigs, host = signatures(source), host_calls(prims.values(), tvm_target)
    wbytes = {"float16": 2, "float32": 4}[dtype]
    mlps = []
    for kind, prim in prims.items():
        calls, binds = host[str(prim.attrs["global_symbol"])]
        for sparsity in sparsities:
            n_active = int(round((1 - sparsity) * n_ff))
            sizes = {"M": 1, "K": max(1, n_active)}
            mlps.append({"name": f"{size}/{kind}/{sparsity:g}", "size": size, "kind": kind, "d": d, "n_ff": n_ff,
                         "dtype": dtype, "sparsity": sparsity, "n_active": n_active, "source": source_file,
                         "symbol": str(prim.attrs["global_symbol"]),
                         "bytes_read": bytes_read(kind, d, n_ff, n_active, wbytes),
                         "tensors": tensors(prim, sizes), "launches": launches(calls, binds, sizes, sigs)})
    return source, mlps


def write_bundle(out: Path, sizes: dict[str, tuple[int, int]] | None = None, dtype: str = "float16",
                 arch: str = "sm_90", sparsities=SPARSITIES) -> Path:
    """Write `<size>.cu` for each size and manifest.json under `out`; returns the manifest's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"version": VERSION, "arch": arch, "dtype": dtype, "batch": 1, "sources": {}, "mlps": []}
    for size, (d, n_ff) in (sizes or SIZES).items():
        source, mlps = size_entries(size, d, n_ff, dtype, arch, sparsities, f"{size}.cu")
        (out / f"{size}.cu").write_text(source)
        manifest["sources"][f"{size}.cu"] = hashlib.sha256(source.encode()).hexdigest()
        manifest["mlps"] += mlps
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=1))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the bundle's folder")
    ap.add_argument("--arch", default="sm_90", help="the architecture the kernels are scheduled for (SM count)")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--sparsities", default=",".join(f"{s:g}" for s in SPARSITIES), help="inactive fractions")
    args = ap.parse_args(argv)
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
        print(f"error: unknown size {', '.join(unknown)}; valid: {', '.join(SIZES)}", file=sys.stderr)
        return 2
    try:
        sparsities = [float(s) for s in args.sparsities.split(",")]
    except ValueError:
        sparsities = []
    if not sparsities or not all(0 <= s < 1 for s in sparsities):
        print(f"error: --sparsities {args.sparsities!r}: give fractions in [0, 1), e.g. 0.5,0.9", file=sys.stderr)
        return 2
    path = write_bundle(args.out, {s: SIZES[s] for s in args.sizes.split(",")}, arch=args.arch,
                        sparsities=sparsities)
    total = sum(f.stat().st_size for f in path.parent.iterdir())
    print(f"bundle written: {path} ({total / 1e3:.0f} kB in {len(list(path.parent.iterdir()))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
