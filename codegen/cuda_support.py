"""Building CUDA code on a machine without a GPU.

TVM's CUDA runtime library (libtvm_runtime_cuda.so, which also creates the CUDA modules `tvm.compile`
returns) links against the driver's libcuda.so.1; without a driver it fails to load and TVM silently has no
CUDA module support. `ensure_cuda_build()` then builds a stub libcuda.so.1 (every entry point answers
CUDA_ERROR_NO_DEVICE), loads it and the CUDA runtime library, and selects nvcc as the CUDA compiler
(`TVM_CUDA_COMPILE_MODE=nvcc`: NVRTC needs the cuda-bindings package). Code generation and nvcc then work
as on a GPU machine; running the result needs a GPU. With a real driver present nothing is stubbed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from ..errors import TargetError

# the driver entry points libtvm_runtime_cuda.so imports (nm -D --undefined-only)
_STUB_SOURCE = """
typedef int CUresult;
#define NO_DEVICE 100 /* CUDA_ERROR_NO_DEVICE */
CUresult cuDeviceGetName(char *n, int l, int d) { return NO_DEVICE; }
CUresult cuFuncSetAttribute(void *f, int a, int v) { return NO_DEVICE; }
CUresult cuGetErrorName(CUresult e, const char **s) { *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(CUresult e, const char **s) { *s = "no CUDA driver (actsparse build stub)"; return 0; }
CUresult cuLaunchKernelEx(const void *c, void *f, void **p, void **e) { return NO_DEVICE; }
CUresult cuModuleGetFunction(void **f, void *m, const char *n) { return NO_DEVICE; }
CUresult cuModuleLoadData(void **m, const void *i) { return NO_DEVICE; }
CUresult cuModuleUnload(void *m) { return NO_DEVICE; }
CUresult cuTensorMapEncodeTiled(void *t, ...) { return NO_DEVICE; }
"""


def nvcc_path() -> str | None:
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "actsparse"
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:
        return Path(tempfile.gettempdir())


def _driver_loadable() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def _build_stub() -> Path:
    out = _cache_dir() / "cuda-stub" / "libcuda.so.1"
    if out.exists():
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise TargetError("building CUDA code without a GPU needs a C compiler (cc/gcc) for the libcuda stub")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stub.c"
        src.write_text(_STUB_SOURCE)
        lib = Path(tmp) / "libcuda.so.1"
        subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(lib), str(src)],
                       check=True, capture_output=True)
        shutil.move(str(lib), str(out))  # atomic within one file system: concurrent builders agree
    return out


@cache
def ensure_cuda_build() -> str:
    """Make `tvm.compile` for CUDA work here; returns how ("driver" or "stub"). Raises TargetError if nvcc
    is missing and no NVRTC is available."""
    from tvm.base import _LOADED_LIBS

    how = "driver" if _driver_loadable() else "stub"
    if how == "stub":
        ctypes.CDLL(str(_build_stub()), mode=ctypes.RTLD_GLOBAL)
    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        from tvm_ffi.libinfo import load_lib_ctypes

        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    if "TVM_CUDA_COMPILE_MODE" not in os.environ:
        try:
            import cuda.bindings.nvrtc  # noqa: F401

            has_nvrtc = True
        except ImportError:
            has_nvrtc = False
        if not has_nvrtc:
            if nvcc_path() is None:
                raise TargetError("compiling for CUDA needs nvcc (CUDA toolkit) or NVRTC (pip install cuda-bindings)")
            os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    return how


def cuda_source(module) -> str:
    """The CUDA C source of a module built for CUDA: its (possibly nested) imported device modules."""
    sources, stack = [], [module]
    while stack:
        mod = stack.pop()
        if mod.kind == "cuda":
            sources.append(mod.inspect_source())
        stack.extend(mod.imports)
    if not sources:
        raise ValueError("the module has no CUDA device code")
    return "\n".join(sources)


def compile_ptx(source: str, arch: str) -> str:
    """nvcc the CUDA source to PTX for `arch` (e.g. "sm_80"); raises RuntimeError with nvcc's message."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise TargetError("nvcc not found (install the CUDA toolkit or put nvcc on PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        src, ptx = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.ptx"
        src.write_text(source)
        proc = subprocess.run([nvcc, "--ptx", f"-arch={arch}", "-O3", "-o", str(ptx), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed:\n{proc.stderr}")
        return ptx.read_text()
