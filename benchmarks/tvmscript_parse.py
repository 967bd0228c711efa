"""TVMScript parse time of eight CPU kernels with transformers imported (as when compiling a Hugging Face model),
with actsparse's fast `T.macro` expansion (codegen/kernels/tvmscript_speed.py) and, with --tvm-original, TVM's own.

    python -m actsparse.benchmarks.tvmscript_parse [--tvm-original]

Printed: the seconds for the eight parses, the number of loaded modules and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tvm-original", action="store_true", help="restore TVM's getouterframes-based lookup")
    args = parser.parse_args()
    import transformers.models.llama.modeling_llama  # noqa: F401 - the modules a user's compile has loaded
    from tvm.script.parser.core.parser import ScriptMacro

    original = ScriptMacro._find_parser_def
    from actsparse import targets
    from actsparse.codegen.kernels import linear, sparse_mlp
    from actsparse.codegen.schedules import schedule_for

    if args.tvm_original:
        ScriptMacro._find_parser_def = original
    sched = schedule_for(targets.get("x86"))
    start = time.perf_counter()
    for i in range(4):
        sparse_mlp.sparse_gated_mlp(64 + 16 * i, 96, sched=sched)
        linear.linear(64 + 16 * i, 96, sched=sched)
    print(f"8 kernel parses: {time.perf_counter() - start:.2f} s ({'TVM original' if args.tvm_original else 'fast'}"
          f" macro lookup; {len(sys.modules)} modules loaded; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
