"""A compiled model: the TVM executable, the weights beside it, the final IR and the report.

`save(dir)` writes a self-contained artifact — manifest.json, weights.safetensors, the compiled library and
the IR text — into a temporary sibling directory and renames it into place, so a failed save leaves nothing
half-written. `load(dir)` checks every file against the hashes in the manifest before using it.

A module built for a target that cannot run on this machine (arm on x86, cuda without a GPU) is complete
but not callable here: calling it raises a TargetError saying where it runs; `save()` still writes the
artifact, with the library linked by the target's cross compiler (model.so for aarch64), or, when that
compiler is not installed, its object files (model.tar) to link on the target machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, TargetError
from ..ir import Graph, TensorType
from ..ir.interpreter import bind_symbols
from ..ir.types import np_dtype
from .memory import host_tensor
from .report import Report

FORMAT = "actsparse-artifact/1"
LIB = "model.so"
LIB_OBJECTS = "model.tar"  # the library's object files, when no linker for the target is installed here
WEIGHTS = "weights.safetensors"
IR = "graph.ir"


class CompiledModule:
    def __init__(self, executable, weights: dict[str, np.ndarray], weight_order: list[str], graph: Graph | None,
                 inputs: list[tuple[str, TensorType]], n_outputs: int, report: Report, target_info: dict,
                 ir_text: str = "", library: Path | None = None):
        self.executable = executable
        self.weight_order = weight_order
        self.graph = graph
        self.inputs = inputs
        self.n_outputs = n_outputs
        self.report = report
        self.target_info = target_info
        self.ir_text = ir_text or (str(graph) if graph is not None else "")
        self._weights = weights
        self._library = library  # the saved library of a loaded artifact that cannot run here
        self._vm = None
        self._input_graph = None
        if self.runnable:
            from tvm import relax

            self._device = _device_for(target_info)
            if self._device.dlpack_device_type() == 1:
                use_threads(int(target_info.get("threads") or 0))
            self._vm = relax.VirtualMachine(executable, self._device)
            self._weight_tensors = [self._weight_tensor(weights[n]) for n in weight_order]

    @property
    def runnable(self) -> bool:
        """Whether this machine runs the module (False for arm modules on x86, cuda ones without a GPU)."""
        return bool(self.target_info.get("runs_here", True)) and self.executable is not None

    def _to_device(self, array: np.ndarray):
        import tvm

        return tvm.runtime.tensor(array, device=self._device)

    def _weight_tensor(self, array: np.ndarray):
        if self._device.dlpack_device_type() == 1:  # CPU: zero-copy, huge-page friendly (see memory.py)
            return host_tensor(array)
        return self._to_device(np.ascontiguousarray(array))

    def __call__(self, *inputs):
        if self._vm is None:
            info = self.target_info
            raise TargetError(f"built for {info.get('name', info.get('tvm', {}).get('kind', '?'))}; "
                              f"{info.get('run_hint') or 'run it on a machine of that kind'}")
        is_torch = bool(inputs) and type(inputs[0]).__module__.startswith("torch")
        arrays = [np.asarray(i.detach().cpu().numpy() if is_torch else i) for i in inputs]
        self._check_inputs(arrays)
        result = self._vm["main"](*self._input_tensors(arrays), *self._weight_tensors)
        outs = [result] if self.n_outputs == 1 else [result[i] for i in range(self.n_outputs)]
        outs = [o.numpy() for o in outs]
        if is_torch:
            import torch

            outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if self.n_outputs == 1 else tuple(outs)

    def kernel_inputs(self, inputs: Sequence, weight_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run once on `inputs` and return, per weight named, the first argument (the activations) of the first
        kernel call that takes that weight as its second argument: an MLP block's input, read off the compiled
        run through a VM instrument (what the report measures sparsity on, without a numpy forward)."""
        from tvm import relax

        tensors = dict(zip(self.weight_order, self._weight_tensors))
        wanted = {tensors[n].data_ptr(): n for n in weight_names if n in tensors}
        seen: dict[str, np.ndarray] = {}

        def instrument(func, symbol, before_run, ret_value, *args):
            if before_run and len(args) > 1 and hasattr(args[1], "data_ptr"):
                name = wanted.get(args[1].data_ptr())
                if name is not None and name not in seen:
                    seen[name] = args[0].numpy()
            return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

        vm = relax.VirtualMachine(self.executable, self._device)
        vm.set_instrument(instrument)
        arrays = [np.asarray(i.detach().cpu().numpy() if type(i).__module__.startswith("torch") else i)
                  for i in inputs]
        self._check_inputs(arrays)
        vm["main"](*self._input_tensors(arrays), *self._weight_tensors)
        return seen

    def _input_tensors(self, arrays: Sequence[np.ndarray]) -> list:
        return [self._to_device(np.ascontiguousarray(a.astype(np_dtype(t.dtype), copy=False)))
                for a, (_, t) in zip(arrays, self.inputs)]

    def _check_inputs(self, arrays: Sequence[np.ndarray]) -> None:
        if self._input_graph is None:  # built once: a graph per call cost as much as a small kernel
            from ..ir import Node

            self._input_graph = Graph([Node("input", (), {"name": n}, t) for n, t in self.inputs], [])
        try:
            bind_symbols(self._input_graph, arrays)
        except ValueError as err:
            raise ValueError(f"{err} (the module was compiled for inputs "
                             f"{', '.join(f'{n}: {t}' for n, t in self.inputs)})") from None

    # -- artifacts ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            library = self._save_library(staging)
            save_file({n: np.ascontiguousarray(self._weights[n]) for n in self.weight_order}, str(staging / WEIGHTS))
            (staging / IR).write_text(self.ir_text)
            manifest = {
                "format": FORMAT,
                "inputs": [{"name": n, "type": str(t)} for n, t in self.inputs],
                "n_outputs": self.n_outputs,
                "library": library,
                "weight_order": self.weight_order,
                "target": self.target_info,
                "report": self.report.to_dict(),
                "sha256": {f: _sha256(staging / f) for f in (library, WEIGHTS, IR)},
            }
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            if path.exists():
                shutil.rmtree(path)
            staging.rename(path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path

    def _save_library(self, staging: Path) -> str:
        """Write the compiled library into `staging`; returns its file name."""
        if self.executable is None:  # loaded from an artifact that does not run here: keep its library
            shutil.copyfile(self._library, staging / self._library.name)
            return self._library.name
        cc = self.target_info.get("cross_compiler")
        if cc is None:
            self.executable.export_library(str(staging / LIB))
            return LIB
        if shutil.which(cc):
            from tvm.support.cc import cross_compiler

            self.executable.export_library(str(staging / LIB), fcompile=cross_compiler(cc))
            return LIB
        self.executable.export_library(str(staging / LIB_OBJECTS))  # objects only: no linker needed
        return LIB_OBJECTS


def load(path: str | os.PathLike) -> CompiledModule:
    """Load an artifact written by `CompiledModule.save`; runs without the source model or its code."""
    import tvm
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not an actsparse artifact (no manifest.json); build one with "
                            "`actsparse build` or CompiledModule.save()")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{manifest_path} is corrupted ({err}); rebuild the artifact") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild the artifact")
    for name, digest in manifest["sha256"].items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{path}: {name} is missing; rebuild the artifact")
        if _sha256(file) != digest:
            raise ArtifactError(f"{path}: {name} does not match its checksum (corrupted or edited); rebuild it")
    try:
        weights = load_file(str(path / WEIGHTS))
    except SafetensorError as err:
        raise ArtifactError(f"{path}: cannot read {WEIGHTS}: {err}") from None
    from ..targets import runs_here

    target_info = {**manifest["target"], "runs_here": runs_here(manifest["target"])}
    library = path / manifest.get("library", LIB)
    executable = None
    if target_info["runs_here"]:
        from tvm import relax

        executable = tvm.runtime.load_module(str(library))
        if not isinstance(executable, relax.VMExecutable):
            executable = relax.VMExecutable(executable)
    return CompiledModule(
        executable, weights, manifest["weight_order"], None,
        [(i["name"], TensorType.parse(i["type"])) for i in manifest["inputs"]], manifest["n_outputs"],
        Report.from_dict(manifest["report"]), target_info, (path / IR).read_text(), library=library)


def use_threads(threads: int) -> None:
    """Give TVM's CPU thread pool the target's thread count. Unset, TVM takes half the logical CPUs on x86
    (it assumes hyper-threading), so on a 2-vCPU machine every kernel scheduled for 2 threads ran on one: the
    public path was 1.4x slower than the same kernel with TVM_NUM_THREADS set. The pool is sized when this
    thread first launches parallel work, so this runs before the first call; a user's TVM_NUM_THREADS or
    OMP_NUM_THREADS wins."""
    if threads > 0 and "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(threads)


def _device_for(target_info: dict):
    import tvm

    return tvm.cuda(0) if target_info.get("tvm", {}).get("kind") == "cuda" else tvm.cpu(0)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
