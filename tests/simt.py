"""A SIMT emulator for the CUDA kernels, so their numerics are tested on machines without a GPU.

What runs is exactly what TVM built for CUDA: the host object (x86 code that checks the arguments, including the
scratch buffers the caller passes — `kernel_cases.run_batch` allocates them — and launches the kernels in order)
and the generated CUDA C source. The source is compiled by the host C++ compiler against a prelude that turns
it into plain C++ (cuda_fp16.h's host half type, CUDA's vector types) and emulates the GPU: blocks run one after
another, a block's threads as fibers (ucontext) on one OS thread, `__syncthreads()` is a block barrier at which a
fiber switches to the next, warp shuffles exchange values through a per-block slot array between warp barriers
(32 threads), `__shared__` arrays become function statics (one block runs at a time). A C harness (tests/cross.py's,
with tensors on kDLCUDA) provides what TVM's runtime gives the host code: workspace allocation, and the module
context through which it looks up and launches the kernels — here a table of trampolines that unpack the
launch arguments (pointers, scalars, then the grid/block extents in the order of `tirx.kernel_launch_params`).

Emulation is exact for the kernels' semantics as long as they respect CUDA's rules (a shuffle is reached by
the whole warp, `__syncthreads` by the whole block); it says nothing about speed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .cross import HarnessKernels, ffi_include_dir, harness_source, workdir_for

TAGS = ["blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z"]

PRELUDE = r"""
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>
#include <ucontext.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

uint3 threadIdx, blockIdx;  // the running fiber's: set by the scheduler before it resumes a fiber
dim3 blockDim, gridDim;

namespace simt {
// a barrier of `expected` fibers: the last to arrive opens it (a new generation); the others yield to the scheduler
// until it is open. One OS thread runs every fiber, so plain counters suffice.
struct Barrier { int expected = 0, arrived = 0; unsigned generation = 0; };
struct Block {
  int threads;
  Barrier all;
  std::vector<Barrier> warps;
  std::vector<uint64_t> slots;
};
Block *block;
int tid;  // the running fiber's thread index in its block
ucontext_t scheduler;
std::vector<ucontext_t> fibers;
bool progress;  // something changed since the scheduler's last round: a round without any is a deadlock

inline void arrive_and_wait(Barrier &bar) {
  progress = true;
  unsigned generation = bar.generation;
  if (++bar.arrived == bar.expected) { bar.arrived = 0; ++bar.generation; return; }
  while (bar.generation == generation) swapcontext(&fibers[tid], &scheduler);
}

// a warp-synchronous call names every lane of its warp in `mask` (the kernels use full masks; a partial one,
// e.g. from __activemask() after a divergent branch, is undefined on Volta and later): abort otherwise
inline void check_mask(unsigned mask) {
  int base = tid - tid % 32, lanes = std::min(32, block->threads - base);
  unsigned want = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  if ((mask & want) != want) { std::fprintf(stderr, "simt: warp call with partial mask %#x\n", mask); std::abort(); }
}

template <class T, class F> T exchange(T v, F src_lane, int width) {
  int lane = tid % 32, base = tid - lane;
  auto &bar = block->warps[tid / 32];
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  arrive_and_wait(bar);
  block->slots[tid] = bits;
  arrive_and_wait(bar);
  int group = lane - lane % width, src = src_lane(lane % width);
  T r;
  std::memcpy(&r, &block->slots[base + group + src], sizeof(T));
  arrive_and_wait(bar);
  return r;
}
}  // namespace simt

inline void __syncthreads() { simt::arrive_and_wait(simt::block->all); }
// a block barrier returning whether `pred` holds in some thread of the block (every thread gets the same answer)
inline int __syncthreads_or(int pred) {
  auto &all = simt::block->all;
  simt::arrive_and_wait(all);
  simt::block->slots[simt::tid] = pred ? 1 : 0;
  simt::arrive_and_wait(all);
  int any = 0;
  for (int t = 0; t < simt::block->threads; ++t) any |= simt::block->slots[t] != 0;
  simt::arrive_and_wait(all);
  return any;
}
inline unsigned __activemask() { return 0xffffffffu; }
// the warp's predicate bits (lane l's at bit l): every lane's predicate exchanged through the slots
inline unsigned __ballot_sync(unsigned mask, int pred) {
  simt::check_mask(mask);
  int base = simt::tid - simt::tid % 32, lanes = std::min(32, simt::block->threads - base);
  auto &bar = simt::block->warps[simt::tid / 32];
  simt::arrive_and_wait(bar);
  simt::block->slots[simt::tid] = pred ? 1 : 0;
  simt::arrive_and_wait(bar);
  unsigned bits = 0;
  for (int l = 0; l < lanes; ++l) bits |= (unsigned)simt::block->slots[base + l] << l;
  simt::arrive_and_wait(bar);
  return bits;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  simt::check_mask(mask);
  simt::arrive_and_wait(simt::block->warps[simt::tid / 32]);
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
template <class T> T __shfl_xor_sync(unsigned mask, T v, int m, int w = 32) {
  simt::check_mask(mask);
  return simt::exchange(v, [&](int l) { return (l ^ m) < w ? (l ^ m) : l; }, w);
}
template <class T> T __shfl_up_sync(unsigned mask, T v, unsigned d, int w = 32) {
  simt::check_mask(mask);
  return simt::exchange(v, [&](int l) { return l >= (int)d ? l - (int)d : l; }, w);
}
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned d, int w = 32) {
  simt::check_mask(mask);
  return simt::exchange(v, [&](int l) { return l + (int)d < w ? l + (int)d : l; }, w);
}
template <class T> T __shfl_sync(unsigned mask, T v, int s, int w = 32) {
  simt::check_mask(mask);
  return simt::exchange(v, [&](int) { return s % w; }, w);
}
inline float max(float a, float b) { return fmaxf(a, b); }
inline float min(float a, float b) { return fminf(a, b); }
// bit casts (math_constants.h spells CUDART_INF_F / CUDART_NAN_F with them)
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
inline float __int_as_float(unsigned i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, sizeof i); return i; }
using std::max;
using std::min;
"""

LAUNCH = r"""
struct SimtKernel { const char *name; void (*tramp)(const int64_t *); int n_params; int n_launch; int tags[6]; };
extern const SimtKernel simt_kernels[];
extern const int simt_n_kernels;

namespace simt {
constexpr size_t STACK_BYTES = 256 << 10;  // a fiber's stack: the kernels keep small local arrays
const SimtKernel *kernel;
const int64_t *kernel_args;
std::vector<uint3> thread_idx;
std::vector<char> finished;

static void fiber_main(int t) {
  kernel->tramp(kernel_args);
  finished[t] = 1;
  progress = true;
}  // returning resumes the scheduler (uc_link)
}  // namespace simt

// one block at a time, its threads as fibers on this one OS thread (a barrier switches to the next fiber): no OS
// thread per CUDA thread, so an emulated launch takes one core, whatever the block size
static void launch(const SimtKernel *k, const int64_t *raw) {
  unsigned dims[6] = {1, 1, 1, 1, 1, 1};  // grid x y z, block x y z
  for (int j = 0; j < k->n_launch; ++j) dims[k->tags[j]] = (unsigned)raw[k->n_params + j];
  gridDim = dim3(dims[0], dims[1], dims[2]);
  blockDim = dim3(dims[3], dims[4], dims[5]);
  int threads = dims[3] * dims[4] * dims[5];
  simt::kernel = k;
  simt::kernel_args = raw;
  simt::Block block;
  block.threads = threads;
  block.all.expected = threads;
  for (int w = 0; w < (threads + 31) / 32; ++w) block.warps.push_back({std::min(32, threads - 32 * w), 0, 0});
  block.slots.assign(threads, 0);
  simt::block = &block;
  simt::fibers.assign(threads, ucontext_t{});
  simt::finished.assign(threads, 0);
  simt::thread_idx.resize(threads);
  std::vector<std::unique_ptr<char[]>> stacks(threads);
  for (int t = 0; t < threads; ++t) {
    stacks[t].reset(new char[simt::STACK_BYTES]);
    simt::thread_idx[t] = make_uint3(t % dims[3], t / dims[3] % dims[4], t / (dims[3] * dims[4]));
  }
  for (unsigned bz = 0; bz < dims[2]; ++bz)
    for (unsigned by = 0; by < dims[1]; ++by)
      for (unsigned bx = 0; bx < dims[0]; ++bx) {
        blockIdx = make_uint3(bx, by, bz);
        for (int t = 0; t < threads; ++t) {
          ucontext_t &f = simt::fibers[t];
          getcontext(&f);
          f.uc_stack.ss_sp = stacks[t].get();
          f.uc_stack.ss_size = simt::STACK_BYTES;
          f.uc_link = &simt::scheduler;
          makecontext(&f, (void (*)())simt::fiber_main, 1, t);
          simt::finished[t] = 0;
        }
        for (int live = threads; live > 0;) {  // round robin until every thread of the block has returned
          simt::progress = false;
          live = 0;
          for (int t = 0; t < threads; ++t) {
            if (simt::finished[t]) continue;
            simt::tid = t;
            threadIdx = simt::thread_idx[t];
            swapcontext(&simt::scheduler, &simt::fibers[t]);
            live += !simt::finished[t];
          }
          if (live > 0 && !simt::progress) {
            std::fprintf(stderr, "simt: %s deadlocks: a barrier that not every thread of its block reaches\n",
                         k->name);
            std::abort();
          }
        }
      }
}
"""

RUNTIME = LAUNCH + r"""
#include <tvm/ffi/c_api.h>

static int set_device_sentinel;

extern "C" {
static int init_once(void **handle, int (*init)(void **)) { return *handle ? 0 : init(handle); }
static int lookup(void *, const char *name, void **out) {
  if (std::strcmp(name, "__tvm_set_device") == 0) { *out = &set_device_sentinel; return 0; }
  for (int i = 0; i < simt_n_kernels; ++i)
    if (std::strcmp(simt_kernels[i].name, name) == 0) { *out = (void *)&simt_kernels[i]; return 0; }
  const char *parts[2] = {"simt: no kernel named ", name};
  TVMFFIErrorSetRaisedFromCStrParts("RuntimeError", parts, 2);
  return -1;
}
static int call(void *handle, const TVMFFIAny *args, int32_t n, TVMFFIAny *) {
  if (handle == &set_device_sentinel) return 0;
  const SimtKernel *k = (const SimtKernel *)handle;
  if (n != k->n_params + k->n_launch) {
    const char *parts[2] = {"simt: unexpected argument count for ", k->name};
    TVMFFIErrorSetRaisedFromCStrParts("RuntimeError", parts, 2);
    return -1;
  }
  std::vector<int64_t> raw(n);
  for (int i = 0; i < n; ++i) raw[i] = args[i].v_int64;  // pointers and integers share the 8 bytes
  launch(k, raw.data());
  return 0;
}
static int library_ctx;
void *__tvm_ffi__library_ctx = &library_ctx;
void *__TVMFFIHandleInitOnce = (void *)init_once;
void *__TVMFFIEnvModLookupFromImports = (void *)lookup;
void *__TVMFFIFunctionCall = (void *)call;
}
"""

_KERNEL = re.compile(r'extern "C" __global__ void __launch_bounds__\(\d+\) (\w+)\(([^)]*)\) \{')


def cuda_include_dir() -> Path | None:
    from actsparse.codegen.cuda_support import nvcc_path

    nvcc = nvcc_path()
    for root in ([Path(nvcc).resolve().parents[1]] if nvcc else []) + [Path("/usr/local/cuda")]:
        if (root / "include" / "cuda_fp16.h").exists():
            return root / "include"
    return None


def missing() -> str | None:
    """Why the emulator cannot run here, or None."""
    if shutil.which("g++") is None or shutil.which("gcc") is None:
        return "gcc/g++ not found"
    if cuda_include_dir() is None:
        return "CUDA headers (cuda_fp16.h) not found"
    return None


def launch_params(prims, target) -> dict[str, list[str]]:
    """Device kernel name -> its launch parameter tags, from TVM's own lowering of the PrimFuncs."""
    from actsparse.benchmarks.cuda_bundle import lowered

    _, devices = lowered(prims, target.tvm_target())
    return {gv.name_hint: [str(t) for t in fn.attrs["tirx.kernel_launch_params"]]
            for dm in devices.values() for gv, fn in dm.functions.items()}


def _trampoline(name: str, params: str) -> tuple[str, int]:
    args = []
    for i, param in enumerate(p.strip() for p in params.split(",") if p.strip()):
        ctype = param.rsplit(" ", 1)[0].replace("__restrict__", "").strip()
        args.append(f"({ctype})(intptr_t)raw[{i}]" if "*" in ctype else f"({ctype})raw[{i}]")
    return f"static void tramp_{name}(const int64_t *raw) {{ {name}({', '.join(args)}); }}", len(args)


class SimtKernels(HarnessKernels):
    """PrimFuncs built for CUDA, run by the emulator: `run(calls)` as `cross.CrossKernels.run`."""

    def __init__(self, prims: Sequence, target, workdir=None):
        from actsparse.codegen.cuda_support import cuda_source
        from actsparse.codegen.kernels.common import build_kernels

        self.names = [str(p.attrs["global_symbol"]) for p in prims]
        self._dir = workdir_for(self, workdir, "actsparse-simt-")
        module = build_kernels(list(prims), target.tvm_target())
        host = self._dir / "host.o"
        module.mod.write_to_file(str(host))
        self.source = cuda_source(module.mod)  # as nvcc compiled it
        source = re.sub(r"__shared__ (alignas\(\d+\) )?", r"\1static ", self.source)
        tags = launch_params(prims, target)
        tramps, table = [], []
        for name, params in _KERNEL.findall(source):
            code, n_params = _trampoline(name, params)
            tramps.append(code)
            t = [TAGS.index(x) for x in tags[name]]
            slots = ", ".join(map(str, (t + [0] * 6)[:6]))
            table.append(f'{{"{name}", tramp_{name}, {n_params}, {len(t)}, {{{slots}}}}}')
        device = self._dir / "device.cpp"
        device.write_text(PRELUDE + source + RUNTIME + "\n".join(tramps) +
                          f"\nextern const SimtKernel simt_kernels[] = {{{', '.join(table)}}};\n"
                          f"extern const int simt_n_kernels = {len(table)};\n")
        harness = self._dir / "harness.c"
        harness.write_text(harness_source(self.names, "kDLCUDA"))
        self.executable = self._dir / "kernels.run"
        include = [f"-I{ffi_include_dir()}", f"-I{cuda_include_dir()}"]
        steps = [["gcc", "-c", "-O1", "-std=c11", *include, str(harness), "-o", str(self._dir / "harness.o")],
                 ["g++", "-c", "-O1", "-std=c++20", "-w", *include, str(device), "-o", str(self._dir / "device.o")],
                 ["g++", str(self._dir / "harness.o"), str(self._dir / "device.o"), str(host), "-pthread", "-lm",
                  "-o", str(self.executable)]]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"building the SIMT emulation failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")

    def command(self, in_path: str, out_path: str) -> list[str]:
        return [str(self.executable), in_path, out_path, "1"]
