"""Run CPU kernels built for another architecture (aarch64) under qemu user-mode emulation.

TVM builds the kernels into one object file for the target; a small C harness provides the runtime symbols
the kernels call (`TVMBackendParallelLaunch` running the tasks one after another, workspace allocation, the
error hook), and `aarch64-linux-gnu-gcc -static` links both into one executable that `qemu-aarch64` runs.
Arguments go in and results come out through files, several calls per run (one qemu start for a batch):

    kernels = CrossKernels([prim_a, prim_b], arm_target)     # build + link once
    outs = kernels.run([("actsparse_...", [x, w, out], [2]), ...])   # -> [[out], ...] per call

Test harness only (tests/). The tools come from `scripts/install-cross.sh` (Debian: qemu-user,
gcc-aarch64-linux-gnu), run by CI before the tests; `missing_reason()` says what is missing.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from actsparse.errors import TargetError

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = ROOT / "scripts" / "install-cross.sh"
TOOLS = {"aarch64": ("aarch64-linux-gnu-gcc", "qemu-aarch64")}  # architecture -> (linker, emulator)

_DLPACK_CODES = {"f": 2, "i": 0, "u": 1, "b": 6}  # kDLFloat, kDLInt, kDLUInt, kDLBool

HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

typedef struct { void *sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);

static int default_tasks = 1;
static char last_error[4096];

/* the tasks of a parallel region run one after another: deterministic, and no threads under qemu */
static int serial_launch(FTVMParallelLambda flambda, void *cdata, int num_task) {
  TVMParallelGroupEnv env = {NULL, num_task > 0 ? num_task : default_tasks};
  for (int t = 0; t < env.num_task; ++t) {
    int rc = flambda(t, &env, cdata);
    if (rc != 0) return rc;
  }
  return 0;
}
static void *alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  return aligned_alloc(64, nbytes ? (nbytes + 63) / 64 * 64 : 64);
}
static int free_workspace(int device_type, int device_id, void *ptr) { free(ptr); return 0; }
static int parallel_barrier(int task_id, TVMParallelGroupEnv *penv) { return 0; }

/* the context symbols a TVM library's loader fills in */
void *__TVMBackendParallelLaunch = (void *)serial_launch;
void *__TVMBackendAllocWorkspace = (void *)alloc_workspace;
void *__TVMBackendFreeWorkspace = (void *)free_workspace;
void *__TVMBackendParallelBarrier = (void *)parallel_barrier;

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
  snprintf(last_error, sizeof last_error, "%s: ", kind);
  for (int i = 0; i < n; ++i) strncat(last_error, parts[i], sizeof last_error - strlen(last_error) - 1);
}
void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) {
  snprintf(last_error, sizeof last_error, "%s: %s", kind, message);
}

@DECLS@
static const TVMFFISafeCallType funcs[] = {@FUNCS@};

static void read_exact(FILE *f, void *dst, size_t n) {
  if (n && fread(dst, 1, n, f) != n) { fprintf(stderr, "harness: truncated input\n"); exit(2); }
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: %s IN OUT TASKS\n", argv[0]); return 2; }
  default_tasks = atoi(argv[3]);
  FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
  if (!in || !out) { perror("harness"); return 2; }
  uint32_t n_calls;
  read_exact(in, &n_calls, 4);
  for (uint32_t c = 0; c < n_calls; ++c) {
    uint32_t fid, n_args;
    read_exact(in, &fid, 4);
    read_exact(in, &n_args, 4);
    DLTensor *tensors = calloc(n_args, sizeof(DLTensor));
    TVMFFIAny *args = calloc(n_args, sizeof(TVMFFIAny));
    uint8_t *is_out = calloc(n_args, 1);
    size_t *nbytes = calloc(n_args, sizeof(size_t));
    for (uint32_t a = 0; a < n_args; ++a) {
      uint8_t head[4];
      read_exact(in, head, 4);
      DLTensor *t = &tensors[a];
      t->dtype.code = head[0]; t->dtype.bits = head[1]; t->dtype.lanes = 1;
      t->ndim = head[2]; is_out[a] = head[3];
      t->device.device_type = @DEVICE_TYPE@; t->device.device_id = 0;
      t->shape = calloc(t->ndim ? t->ndim : 1, sizeof(int64_t));
      read_exact(in, t->shape, 8 * (size_t)t->ndim);
      size_t n = (head[1] + 7) / 8;
      for (int d = 0; d < t->ndim; ++d) n *= (size_t)t->shape[d];
      nbytes[a] = n;
      t->data = aligned_alloc(64, n ? (n + 63) / 64 * 64 : 64);
      read_exact(in, t->data, n);
      args[a].type_index = kTVMFFIDLTensorPtr;
      args[a].v_ptr = t;
    }
    TVMFFIAny result;
    memset(&result, 0, sizeof result);
    last_error[0] = 0;
    int32_t rc = funcs[fid](NULL, args, (int32_t)n_args, &result);
    uint32_t len = rc ? (uint32_t)strlen(last_error) : 0;
    fwrite(&rc, 4, 1, out);
    fwrite(&len, 4, 1, out);
    fwrite(last_error, 1, len, out);
    for (uint32_t a = 0; a < n_args; ++a) {
      if (is_out[a]) fwrite(tensors[a].data, 1, nbytes[a], out);
      free(tensors[a].data);
      free(tensors[a].shape);
    }
    free(tensors); free(args); free(is_out); free(nbytes);
  }
  fclose(out);
  return 0;
}
"""


def _arch(target) -> str:
    triple = str(target.tvm.get("mtriple", ""))
    arch = triple.split("-")[0]
    if arch not in TOOLS:
        raise TargetError(f"no cross toolchain known for {triple or target.name!r}; known: {', '.join(TOOLS)}")
    return arch


def tools_missing(arch: str = "aarch64") -> list[str]:
    """The linker/emulator for `arch` that are not on PATH (empty when everything is there)."""
    return [tool for tool in TOOLS[arch] if shutil.which(tool) is None]


def missing_reason(arch: str = "aarch64") -> str | None:
    """None when the linker and emulator for `arch` are on PATH, else what is missing and how to install it (tests
    never install anything: `bash scripts/install-cross.sh` is a CI step of its own)."""
    missing = tools_missing(arch)
    if not missing:
        return None
    return f"{', '.join(missing)} not on PATH (install them with `bash {INSTALL_SCRIPT.relative_to(ROOT)}`)"


def ffi_include_dir() -> Path:
    import tvm_ffi

    return Path(tvm_ffi.__file__).resolve().parent / "include"


def workdir_for(owner, workdir, prefix: str) -> Path:
    """`workdir`, or a temporary directory removed with `owner`."""
    if workdir:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix=prefix))
    weakref.finalize(owner, shutil.rmtree, str(path), True)
    return path


def harness_source(names: Sequence[str], device_type: str = "kDLCPU") -> str:
    """The C harness for kernels `names` (their `__tvm_ffi_<name>` entry points), tensors on `device_type`."""
    decls = "\n".join(f"int __tvm_ffi_{n}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);" for n in names)
    return (HARNESS.replace("@DECLS@", decls).replace("@FUNCS@", ", ".join(f"__tvm_ffi_{n}" for n in names))
            .replace("@DEVICE_TYPE@", device_type))


class HarnessKernels:
    """Kernels linked with `HARNESS` into an executable that runs batches of calls passed through files.
    Subclasses build `self.executable` and say how to start it (`command`)."""

    names: list[str]
    _dir: Path

    def command(self, in_path: str, out_path: str) -> list[str]:
        raise NotImplementedError

    def run(self, calls: Sequence[tuple[str, Sequence[np.ndarray], Sequence[int]]]) -> list[list[np.ndarray]]:
        """Run `calls` — (kernel name, argument arrays, indices of the output arguments) — in one process;
        returns each call's output arrays in argument order. A kernel's error (e.g. a shape check) raises
        RuntimeError with its message."""
        fd, in_path = tempfile.mkstemp(suffix=".in", dir=self._dir)
        os.close(fd)
        out_path = in_path[:-3] + ".out"
        arrays = [[np.ascontiguousarray(a) for a in args] for _, args, _ in calls]
        with open(in_path, "wb") as f:
            f.write(struct.pack("<I", len(calls)))
            for (name, _, outs), args in zip(calls, arrays):
                f.write(struct.pack("<II", self.names.index(name), len(args)))
                for i, a in enumerate(args):
                    f.write(struct.pack("<BBBB", _DLPACK_CODES[a.dtype.kind], a.dtype.itemsize * 8, a.ndim,
                                        int(i in outs)))
                    f.write(struct.pack(f"<{a.ndim}q", *a.shape))
                    f.write(a.tobytes())
        cmd = self.command(in_path, out_path)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"{Path(cmd[0]).name} exited with {proc.returncode}: {proc.stderr.strip()}")
            data = Path(out_path).read_bytes()
        finally:
            for p in (in_path, out_path):
                Path(p).unlink(missing_ok=True)
        results, pos = [], 0
        for (name, _, outs), args in zip(calls, arrays):
            rc, length = struct.unpack_from("<iI", data, pos)
            pos += 8
            message = data[pos:pos + length].decode(errors="replace")
            pos += length
            if rc != 0:
                raise RuntimeError(f"{name} failed under {Path(cmd[0]).name}: {message}")
            got = []
            for i in sorted(outs):
                a = args[i]
                got.append(np.frombuffer(data, a.dtype, a.size, pos).reshape(a.shape).copy())
                pos += a.nbytes
            results.append(got)
        return results


class CrossKernels(HarnessKernels):
    """PrimFuncs built for a CPU target that does not run here, linked into one emulated executable."""

    def __init__(self, primfuncs: Sequence, target, workdir: str | os.PathLike | None = None, tasks: int | None = None):
        import tvm

        self.arch = _arch(target)
        missing = tools_missing(self.arch)
        if missing:
            raise TargetError(f"running {self.arch} kernels here needs {', '.join(missing)}; "
                              f"run {INSTALL_SCRIPT} (Debian: qemu-user gcc-aarch64-linux-gnu)")
        self.cc, self.emulator = TOOLS[self.arch]
        self.tasks = tasks or target.threads
        self.names = [str(f.attrs["global_symbol"]) for f in primfuncs]
        self._dir = workdir_for(self, workdir, "actsparse-cross-")
        mod = tvm.IRModule(dict(zip(self.names, primfuncs)))
        self.library = tvm.compile(mod, target=target.tvm_target())
        self.object = self._dir / "kernels.o"
        self.library.mod.write_to_file(str(self.object))
        self.executable = self._dir / "kernels.run"
        self._link()

    def _link(self) -> None:
        harness = self._dir / "harness.c"
        harness.write_text(harness_source(self.names))
        cmd = [self.cc, "-static", "-O1", "-std=c11", f"-I{ffi_include_dir()}", str(harness), str(self.object),
               "-lm", "-o", str(self.executable)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"linking the {self.arch} kernels failed:\n{' '.join(cmd)}\n{proc.stderr}")

    def disassembly(self) -> str:
        """objdump -d of the kernels' object file."""
        objdump = self.cc.replace("gcc", "objdump")
        return subprocess.run([objdump, "-d", str(self.object)], capture_output=True, text=True, check=True).stdout

    def command(self, in_path: str, out_path: str) -> list[str]:
        return [self.emulator, str(self.executable), in_path, out_path, str(self.tasks)]
