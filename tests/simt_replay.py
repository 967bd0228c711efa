"""The CUDA bundle's launch sequences run by the SIMT emulator (tests/simt.py), without TVM's host code.

`benchmarks/cuda_bundle.py` writes the kernels' CUDA source and, per MLP, the launches TVM's host code would issue
(kernel, arguments, grid and block); `cuda_bundle_run.py` issues them through libcuda on a GPU. Here the same
manifest drives the emulator instead: the source is compiled against simt's prelude, and a small C++ driver reads a
plan (the tensors' files, then each launch's kernel, arguments — a tensor's index or an integer — and its six
extents) and launches each kernel as simt's runtime does. Its outputs equal those of TVM's host code launching the
same kernels (`SimtKernels`) exactly when the manifest says what the host code does.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .simt import _KERNEL, LAUNCH, PRELUDE, _trampoline, cuda_include_dir

DRIVER = r"""
#include <string>
int main(int argc, char **argv) {
  FILE *plan = std::fopen(argv[1], "r");
  int n_tensors = 0, n_launches = 0;
  if (!plan || std::fscanf(plan, "%d", &n_tensors) != 1) return 3;
  std::vector<std::vector<char>> buffers(n_tensors);
  std::vector<std::string> paths(n_tensors);
  for (int i = 0; i < n_tensors; ++i) {
    long bytes; char path[4096];
    if (std::fscanf(plan, "%ld %4095s", &bytes, path) != 2) return 3;
    buffers[i].resize(bytes);
    paths[i] = path;
    FILE *f = std::fopen(path, "rb");
    if (!f || std::fread(buffers[i].data(), 1, bytes, f) != (size_t)bytes) return 4;
    std::fclose(f);
  }
  if (std::fscanf(plan, "%d", &n_launches) != 1) return 3;
  for (int l = 0; l < n_launches; ++l) {
    int k, n_args;
    if (std::fscanf(plan, "%d %d", &k, &n_args) != 2 || k < 0 || k >= simt_n_kernels) return 3;
    if (n_args != simt_kernels[k].n_params) { std::fprintf(stderr, "replay: %s takes %d arguments, plan gives %d\n",
                                                           simt_kernels[k].name, simt_kernels[k].n_params, n_args);
                                              return 5; }
    std::vector<int64_t> raw(n_args + 6);
    for (int a = 0; a < n_args + 6; ++a) {
      int is_tensor = 0; long long v;
      if (a < n_args && std::fscanf(plan, "%d", &is_tensor) != 1) return 3;
      if (std::fscanf(plan, "%lld", &v) != 1) return 3;
      raw[a] = is_tensor ? (int64_t)(intptr_t)buffers[v].data() : (int64_t)v;
    }
    launch(&simt_kernels[k], raw.data());
  }
  for (int i = 0; i < n_tensors; ++i) {
    FILE *f = std::fopen(paths[i].c_str(), "wb");
    std::fwrite(buffers[i].data(), 1, buffers[i].size(), f);
    std::fclose(f);
  }
  return 0;
}
"""


class ManifestReplay:
    """A bundle source compiled for the emulator; `run(mlp, arrays)` issues the manifest entry's launches."""

    def __init__(self, source: str, workdir: Path | None = None):
        self._dir = Path(workdir or tempfile.mkdtemp(prefix="actsparse-replay-"))
        body = re.sub(r"__shared__ (alignas\(\d+\) )?", r"\1static ", source)
        tramps, table = [], []
        self.kernels = []
        for name, params in _KERNEL.findall(body):
            code, n_params = _trampoline(name, params)
            tramps.append(code)
            table.append(f'{{"{name}", tramp_{name}, {n_params}, 6, {{0, 1, 2, 3, 4, 5}}}}')  # grid xyz, block xyz
            self.kernels.append(name)
        program = self._dir / "replay.cpp"
        program.write_text(PRELUDE + body + LAUNCH + "\n".join(tramps) +
                           f"\nextern const SimtKernel simt_kernels[] = {{{', '.join(table)}}};\n"
                           f"extern const int simt_n_kernels = {len(table)};\n" + DRIVER)
        self.executable = self._dir / "replay.run"
        cmd = ["g++", "-O1", "-std=c++20", "-w", f"-I{cuda_include_dir()}", str(program), "-pthread", "-lm", "-o",
               str(self.executable)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the replay failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")

    def run(self, mlp: dict, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every tensor of `mlp` after its launches (inputs from `arrays`, by the manifest's names)."""
        names = [t["name"] for t in mlp["tensors"]]
        lines = [str(len(names))]
        for t in mlp["tensors"]:
            path = self._dir / f"{t['name']}.bin"
            np.ascontiguousarray(arrays[t["name"]], dtype=t["dtype"]).tofile(path)
            lines.append(f"{path.stat().st_size} {path}")
        lines.append(str(len(mlp["launches"])))
        for launch in mlp["launches"]:
            if launch["dynamic_shared_bytes"]:
                raise NotImplementedError("the replay has no dynamic shared memory")
            args = [f"1 {names.index(a['tensor'])}" if "tensor" in a else f"0 {a['value']}" for a in launch["args"]]
            lines.append(" ".join([str(self.kernels.index(launch["kernel"])), str(len(args)), *args,
                                   *map(str, launch["grid"] + launch["block"])]))
        plan = self._dir / "plan.txt"
        plan.write_text("\n".join(lines) + "\n")
        proc = subprocess.run([str(self.executable), str(plan)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"replay exited {proc.returncode}: {proc.stderr[-2000:]}")
        return {t["name"]: np.fromfile(self._dir / f"{t['name']}.bin", t["dtype"]).reshape(t["shape"])
                for t in mlp["tensors"]}
