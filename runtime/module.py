"""A compiled model: the TVM executable, the weights beside it, the final IR and the report.

`save(dir)` writes a self-contained artifact (manifest.json, weights.safetensors, the compiled library, the IR
text) atomically, and `load(dir)` verifies every file before anything in it is used (`artifact.py`); the library
is checked as an ELF file for this machine (`elf.py`) before it is opened. A call checks its inputs against what
the graph can take (`inputs.py`).

A module built for a target that cannot run on this machine (arm on x86, cuda without a GPU) is complete
but not callable here: calling it raises a TargetError saying where it runs; `save()` still writes the
artifact, with the library linked by the target's cross compiler (model.so for aarch64), or, when that
compiler is not installed, its object files (model.tar) to link on the target machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, TargetError
from ..ir import Graph, TensorType
from ..ir.decoding import workspace_function
from ..ir.limits import input_limits
from ..ir.types import np_dtype
from .artifact import MANIFEST, SIGNATURE, manifest_error, read_artifact, safe_name, write_artifact
from .cold_store import COLD_FILE, load_cold, save_cold
from .cold_store import attach as attach_cold_stores
from .devices import device_for, on_host, use_threads
from .inputs import InputCheck, as_arrays, is_torch
from .memory import host_tensor
from .report import Report
from .tvm_stderr import tvm_noise_dropped
from .weight_layouts import check_layout_versions, layout_versions

KIND = "module"
KINDS = ("module", "decoder")  # artifact kinds holding a compiled module (a decoder adds its own files)
LIB = "model.so"
LIB_OBJECTS = "model.tar"  # the library's object files, when no linker for the target is installed here
WEIGHTS = "weights.safetensors"
IR = "graph.ir"


# where a weight lives: the target's main memory, the host's (CPU) memory, or a file read on demand (the cold neurons
# of a hot/cold split on a CPU: the VM gets an untouched placeholder, runtime/cold_store.py reads the rows)
PLACES = ("device", "host", "file")


class CompiledModule:
    """`placement` maps weight names to where each one lives ("device": the target's memory, the default; "host":
    the host's memory, e.g. the cold neurons of a hot/cold split on a GPU). On a CPU target both are host memory."""

    def __init__(self, executable, weights: dict[str, np.ndarray], weight_order: list[str], graph: Graph | None,
                 inputs: list[tuple[str, TensorType]], n_outputs: int, report: Report, target_info: dict,
                 ir_text: str = "", library: tuple[str, bytes] | None = None, manifest_sha256: str | None = None,
                 artifact_files: dict[str, bytes] | None = None, artifact_kind: str = KIND,
                 placement: dict[str, str] | None = None, cold_file: str | os.PathLike | None = None):
        self.executable = executable
        self.weight_order = weight_order
        self.graph = graph
        self.inputs = inputs
        self.n_outputs = n_outputs
        self.report = report
        self.target_info = target_info
        self.ir_text = ir_text or (str(graph) if graph is not None else "")
        self.limits = input_limits(graph) if graph is not None else None
        self.manifest_sha256 = manifest_sha256  # of the artifact it was loaded from: pin it with load(expect_sha256=)
        self.artifact_files = dict(artifact_files or {})  # verified files beside the module's own (a decoder's)
        self.artifact_kind = artifact_kind
        self._weights = weights
        self._library = library  # (name, bytes) of a loaded artifact's library: saved again unchanged
        self.placement = dict(placement or {})
        unknown = {p for p in self.placement.values() if p not in PLACES} | (set(self.placement) - set(weight_order))
        if unknown:
            raise ValueError(f"placement: unknown weights or places {sorted(map(str, unknown))}; places: {PLACES}, "
                             f"weights: the module's ({len(weight_order)})")
        self._vm = None
        self._workspaces: dict[str, list] = {}  # function -> its lifted buffers (`_workspace`)
        self._check_inputs = InputCheck(inputs, self.limits)
        self.cold_file = cold_file
        self.cold_stores = []
        if self.runnable:
            from tvm import relax

            self._device = device_for(target_info)
            if on_host(self._device):
                use_threads(int(target_info.get("threads") or 0))
            if graph is not None:  # the host functions of a hot/cold split's cold neurons, before the VM looks them up
                self.cold_stores = attach_cold_stores(graph, cold_file, weights)
            self._vm = relax.VirtualMachine(executable, self._device)
            self._weight_tensors = [self._weight_tensor(weights[n], self.placement.get(n, "device"))
                                    for n in weight_order]


    @property
    def weights(self) -> dict[str, np.ndarray]:
        return self._weights

    @property
    def runnable(self) -> bool:
        """Whether this machine runs the module (False for arm modules on x86, cuda ones without a GPU)."""
        return bool(self.target_info.get("runs_here", True)) and self.executable is not None

    def _to_device(self, array: np.ndarray):
        import tvm

        return tvm.runtime.tensor(array, device=self._device)

    def _weight_tensor(self, array: np.ndarray, place: str = "device"):
        if place == "file":  # never read by a kernel: an uninitialised tensor of its type, no pages touched
            return __import__("tvm").runtime.empty(array.shape, str(array.dtype), self._device)
        if place == "host" or on_host(self._device):  # CPU: zero-copy, huge pages (memory.py)
            return host_tensor(array)
        return self._to_device(np.ascontiguousarray(array))

    def _check_runnable(self) -> None:
        if self._vm is None:
            info = self.target_info
            raise TargetError(f"built for {info.get('name', info.get('tvm', {}).get('kind', '?'))}; "
                              f"{info.get('run_hint') or 'run it on a machine of that kind'}")

    @property
    def device(self):
        """The device the module runs on (its tensors' `.device`)."""
        return self._device

    def device_tensor(self, array: np.ndarray):
        """`array` as a tensor on the module's device (for inputs kept there between calls, e.g. a KV cache)."""
        self._check_runnable()
        return self._to_device(np.ascontiguousarray(array))

    def has_function(self, name: str) -> bool:
        """Whether the compiled module has a function `name` beside `main` (a decoder's `step`)."""
        return self._vm is not None and self._vm.module.implements_function(name)

    def function_params(self, name: str) -> list[str]:
        """The parameter names of the compiled function `name` (its inputs, then the weights)."""
        vm = self._vm.module
        return [vm["get_function_param_name"](name, i) for i in range(vm["get_function_arity"](name))]

    def run_device(self, *inputs, function: str = "main", n_outputs: int | None = None, outputs=None) -> list:
        """Run `function` (default `main`) on numpy arrays or device tensors without converting the results back:
        a list of device tensors. Inputs already on the device are passed as they are (a KV cache written in place
        stays put). `n_outputs`: the function's, where not `main`'s (a decoder's `step_graph` returns the logits
        only); `outputs`: the indices of the outputs wanted, the list then holds those only (a decoder leaves the
        caches written in place where they are: a handle each is ~1 us a step). The caller checks the inputs (a
        `Decoder` does)."""
        self._check_runnable()
        args = [self._to_device(np.ascontiguousarray(np.asarray(a).astype(np_dtype(t.dtype), copy=False)))
                if isinstance(a, np.ndarray) else a for a, (_, t) in zip(inputs, self.inputs)]
        args += inputs[len(self.inputs):]  # device buffers past main's inputs (step_graph's logits) as they are
        result = self._vm[function](*args, *self._weight_tensors, *self._workspace(function))
        n = n_outputs or self.n_outputs
        return [result] if n == 1 else [result[i] for i in (range(n) if outputs is None else outputs)]

    def _workspace(self, function: str) -> list:
        """`function`'s lifted intermediate buffers (codegen/step_workspace.py), made on its first call and passed after
        the weights on every call; none where the executable has no `<function>_workspace`."""
        if function not in self._workspaces:
            maker = workspace_function(function)
            made = self._vm[maker]() if self.has_function(maker) else ()
            self._workspaces[function] = list(made)
        return self._workspaces[function]

    def __call__(self, *inputs):
        self._check_runnable()
        torch_in = bool(inputs) and is_torch(inputs[0])
        arrays = as_arrays(inputs)
        self._check_inputs(arrays)
        result = self._vm["main"](*self._input_tensors(arrays), *self._weight_tensors)
        outs = [result] if self.n_outputs == 1 else [result[i] for i in range(self.n_outputs)]
        outs = [o.numpy() for o in outs]
        if torch_in:
            import torch

            outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if self.n_outputs == 1 else tuple(outs)

    def kernel_inputs(self, inputs: Sequence, weight_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run once on `inputs` and return, per weight named, the first argument (the activations) of the first
        kernel call that takes that weight as its second argument: an MLP block's input, read off the compiled
        run through a VM instrument (what the report measures sparsity on, without a numpy forward). A kernel that
        norms its input itself gives x as it computes it (`norm_prologue.unfused_args`)."""
        from tvm import relax

        from ..codegen.kernels.norm_prologue import prologue_of, unfused_args

        tensors = dict(zip(self.weight_order, self._weight_tensors))
        wanted = {tensors[n].data_ptr(): n for n in weight_names if n in tensors}
        seen: dict[str, np.ndarray] = {}

        def instrument(func, symbol, before_run, ret_value, *args):
            if before_run and prologue_of(symbol):   # the kernel normed x itself: x as it computed it
                args = unfused_args(symbol, args)
            if before_run and len(args) > 1 and hasattr(args[1], "data_ptr"):
                name = wanted.get(args[1].data_ptr())
                if name is not None and name not in seen:
                    seen[name] = np.asarray(args[0].numpy() if hasattr(args[0], "numpy") else args[0])
            return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

        vm = relax.VirtualMachine(self.executable, self._device)
        vm.set_instrument(instrument)
        arrays = as_arrays(inputs)
        self._check_inputs(arrays)
        vm["main"](*self._input_tensors(arrays), *self._weight_tensors)
        return seen

    def _input_tensors(self, arrays: Sequence[np.ndarray]) -> list:
        return [self._to_device(np.ascontiguousarray(a.astype(np_dtype(t.dtype), copy=False)))
                for a, (_, t) in zip(arrays, self.inputs)]

    # -- artifacts ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, signing_key=None, extra_files: dict[str, bytes] | None = None,
             kind: str | None = None) -> Path:
        """Write the artifact to `path`: a new path, an empty directory, or an actsparse artifact it replaces (never
        anything else). `signing_key`: an ed25519 private key (PEM file path, bytes or key object) to sign with.
        `extra_files` (relative name -> bytes; default: those of the artifact this module was loaded from) go
        beside the module's files, listed and hashed like them; `kind` names the artifact's kind."""
        extra = self.artifact_files if extra_files is None else extra_files
        kind = kind or self.artifact_kind
        if kind not in KINDS:
            raise ArtifactError(f"unknown artifact kind {kind!r}; valid: {', '.join(KINDS)}")
        return write_artifact(path, kind, lambda staging: self._write_files(staging, extra), signing_key)

    def _write_files(self, staging: Path, extra: dict[str, bytes]) -> dict:
        """Write the module's files and `extra` into `staging`; returns the manifest fields (the files are listed by
        write_artifact)."""
        from safetensors.numpy import save_file

        for name, data in extra.items():
            if not safe_name(name) or name in (LIB, LIB_OBJECTS, WEIGHTS, IR, MANIFEST, SIGNATURE, COLD_FILE):
                raise ArtifactError(f"extra file name {name!r} is not a plain relative path of its own")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        library = self._save_library(staging)
        save_file({n: np.ascontiguousarray(self._weights[n]) for n in self.weight_order
                   if self.placement.get(n) != "file"}, str(staging / WEIGHTS))   # file-placed: in cold.bin
        (staging / IR).write_text(self.ir_text)
        return {
            **save_cold(self.graph, self.cold_file, staging),
            "inputs": [{"name": n, "type": str(t)} for n, t in self.inputs],
            "n_outputs": self.n_outputs,
            "library": library,
            "weight_order": self.weight_order,
            "placement": self.placement,
            "layout_versions": layout_versions(self.graph),
            "target": {k: v for k, v in self.target_info.items() if k != "runs_here"},
            "report": self.report.to_dict(),
        }

    def _save_library(self, staging: Path) -> str:
        """Write the compiled library into `staging`; returns its file name."""
        if self._library is not None:  # loaded from an artifact: its verified library, unchanged
            (staging / self._library[0]).write_bytes(self._library[1])
            return self._library[0]
        with tvm_noise_dropped():  # a "Scope Saving:" line per constant (tvm_stderr.py)
            return self._export_library(staging)

    def _export_library(self, staging: Path) -> str:
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


def load(path: str | os.PathLike, expect_sha256: str | None = None, public_key=None) -> CompiledModule:
    """Load an artifact written by `CompiledModule.save`; runs without the source model or its code.

    Every file is verified before use (see artifact.py). `expect_sha256`: the manifest digest the artifact must
    have (`cm.manifest_sha256` after a load, printed by `actsparse build`); `public_key`: an ed25519 public key
    (PEM path, bytes or key object) whose signature the artifact must carry."""
    from ..targets import why_not_here

    artifact = read_artifact(path, KINDS, expect_sha256, public_key)
    manifest, files = artifact.manifest, artifact.files
    try:
        library = manifest["library"]
        roles = {"library": library, "weights": WEIGHTS, "IR": IR}
        for role, name in roles.items():
            if name not in files:
                raise ArtifactError(f"the {role} file {str(name)[:80]!r} is not among the artifact's files")
        inputs = [(i["name"], TensorType.parse(i["type"])) for i in manifest["inputs"]]
        weight_order, n_outputs = [str(n) for n in manifest["weight_order"]], manifest["n_outputs"]
        if type(n_outputs) is not int or n_outputs < 1:
            raise ArtifactError(f"n_outputs must be a positive integer, got {n_outputs!r}")
        report = Report.from_dict(manifest["report"])
        target = dict(manifest["target"])
        why_not = why_not_here(target)
        target_info = {**target, "runs_here": not why_not, **({"run_hint": why_not} if why_not else {})}
        placement = manifest.get("placement") or {}
        if not isinstance(placement, dict) or not set(placement.values()) <= set(PLACES) \
                or not set(placement) <= set(weight_order):
            raise ArtifactError(f"placement must map the module's weights to one of {PLACES}")
    except (KeyError, TypeError, ValueError, AttributeError, ArtifactError) as err:
        raise manifest_error(artifact.path, err) from None
    weights = _weights(artifact.path, files[WEIGHTS])
    cold_file = load_cold(artifact, weights)   # memory maps of the cold neurons' rows, if any
    graph = _graph(artifact.path, files[IR], weights, inputs, weight_order)
    check_layout_versions(artifact.path, graph, manifest.get("layout_versions"))
    executable = _open_library(library, files[library]) if target_info["runs_here"] else None
    extra = {name: data for name, data in files.items() if name not in (library, WEIGHTS, IR)}
    return CompiledModule(executable, weights, weight_order, graph, inputs, n_outputs, report, target_info,
                          graph_text(files[IR]), library=(library, files[library]),
                          manifest_sha256=artifact.manifest_sha256, artifact_files=extra,
                          artifact_kind=manifest.get("kind", KIND), placement=placement, cold_file=cold_file)


def read_report(path: str | os.PathLike) -> tuple[Report, str]:
    """The report of an artifact of any kind, verified like a load but without opening its library; and the
    manifest's sha256."""
    artifact = read_artifact(path)
    try:
        report = Report.from_dict(artifact.manifest["report"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise manifest_error(artifact.path, err) from None
    return report, artifact.manifest_sha256


def graph_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{IR} is not UTF-8 text ({err}); rebuild the artifact") from None


def _weights(path: Path, data: bytes) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError, OverflowError, MemoryError) as err:
        raise ArtifactError(f"{path}: cannot read {WEIGHTS}: {str(err)[:200]}; rebuild the artifact") from None


def _graph(path: Path, data: bytes, weights: dict[str, np.ndarray], inputs, weight_order) -> Graph:
    """The IR text, parsed and verified, agreeing with the manifest's inputs and holding the weights it declares
    (shape and dtype): the library reads the weights with the IR's shapes."""
    from ..ir import ParseError, VerifyError, parse_graph, verify

    try:
        graph = parse_graph(graph_text(data), weights)
    except ParseError as err:
        raise ArtifactError(f"{path}: {IR} is malformed ({str(err)[:200]}); rebuild the artifact") from None
    if [(n.attrs["name"], n.type) for n in graph.inputs] != list(inputs):
        raise ArtifactError(f"{path}: the manifest's inputs do not match {IR}'s; rebuild the artifact")
    declared = {n.attrs["name"]: n.type for n in graph.nodes if n.op == "weight"}
    # quantized weights (a `layout` attribute) hold a uint8 blob of their layout's shape: verify() checks those
    quantized = {n.attrs["name"] for n in graph.nodes if n.op == "weight" and n.attrs.get("layout", "dense") != "dense"}
    if sorted(declared) != sorted(weight_order) or sorted(weights) != sorted(weight_order):
        raise ArtifactError(f"{path}: {WEIGHTS}, {IR} and the manifest's weight_order name different weights; "
                            "rebuild the artifact")
    for name, ttype in declared.items():
        array = weights[name]
        if name not in quantized and (array.shape != tuple(ttype.shape) or array.dtype != np_dtype(ttype.dtype)):
            raise ArtifactError(f"{path}: weight {name} is {array.dtype}{list(array.shape)} but {IR} declares "
                                f"{ttype}; rebuild the artifact")
    try:
        return verify(graph)
    except VerifyError as err:
        raise ArtifactError(f"{path}: {IR} is malformed ({str(err)[:200]}); rebuild the artifact") from None


def _open_library(name: str, data: bytes):
    """dlopen the verified bytes (from a private copy, so the file checked is the file opened)."""
    import tvm
    from tvm import relax

    from .elf import check_shared_library

    if not name.endswith(".so"):
        raise ArtifactError(f"library {name} is not a shared object (.so); rebuild the artifact for this machine")
    check_shared_library(data, name)
    folder = tempfile.mkdtemp(prefix="actsparse-lib-")
    try:
        copy = Path(folder) / "model.so"
        copy.write_bytes(data)
        with tvm_noise_dropped():  # a "Scope Loaded:" line per constant (tvm_stderr.py)
            executable = tvm.runtime.load_module(str(copy))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return executable if isinstance(executable, relax.VMExecutable) else relax.VMExecutable(executable)
