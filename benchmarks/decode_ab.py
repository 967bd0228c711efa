"""Before / after a runtime change: one saved decoder decoded by two source trees' runtimes, interleaved.

    python -m actsparse.benchmarks.decode_ab --trees BEFORE,AFTER ARTIFACT [--tokens 48] [--repeats 15] [--threads 2]

`decode.py --artifacts` times artifacts built by two versions under ONE runtime (the one imported); a change to the
runtime itself (runtime/decoder.py's step path) needs each tree's own. Each tree is a directory holding the
`actsparse` package (a `git worktree` of the last commit, and a link to the working tree); a child process per tree
imports it from there, loads the artifact (built by either version: the runtime is what is compared) and waits. The
parent asks them in turn, the first alternating round by round, to prefill a short prompt (untimed) and decode
`--tokens` steps teacher-forced on the same ids, as `decode.py` times its runners; it prints each tree's median
tokens/s (min / max over the rounds) and after / before, and checks that both chose the same greedy token at every
step (a runtime change must not change what is decoded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import actsparse
lm = actsparse.load(sys.argv[2])
prompt, feed = np.array([json.loads(sys.argv[3])], np.int64), json.loads(sys.argv[4])

def run():
    state = lm.prefill(prompt)
    start, chosen = time.perf_counter(), []
    for token in feed:
        logits, state = lm.step(int(token), state)
        chosen.append(int(np.argmax(logits)))
    return len(feed) / (time.perf_counter() - start), chosen

run()
run()
print(json.dumps({"package": actsparse.__file__}), flush=True)
for _ in sys.stdin:
    rate, chosen = run()
    print(json.dumps({"rate": rate, "chosen": chosen}), flush=True)
"""


def feed_for(artifact: str, tokens: int) -> tuple[list, list]:
    """(prompt ids, the ids fed): `decode.py --artifacts`' choice (its held-out prose in the artifact's tokenizer,
    else random ids), read with this process's actsparse, then dropped before the children load."""
    import gc

    import actsparse

    from .decode_part_b import artifact_tokens

    prompt, feed, _ = artifact_tokens([actsparse.load(artifact)], tokens)
    gc.collect()
    return [int(t) for t in prompt[0]], [int(t) for t in feed]


def main(argv=None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", help="a saved decoder (actsparse build ... -o DIR)")
    ap.add_argument("--trees", required=True, help="before,after: directories that hold the actsparse package")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    trees = args.trees.split(",")
    if len(trees) != 2 or not all(os.path.isdir(os.path.join(t, "actsparse")) for t in trees):
        print("decode_ab: --trees takes two directories, before,after, each holding the actsparse package",
              file=sys.stderr)
        return 2
    prompt, feed = feed_for(args.artifact, args.tokens)
    env = {**os.environ, "TVM_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": "1", "ACTSPARSE_PROGRESS": "0"}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, tree, args.artifact, json.dumps(prompt),
                                  json.dumps(feed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env, cwd="/") for tree in trees]
    packages = [json.loads(child.stdout.readline())["package"] for child in children]
    rates: list[list[float]] = [[], []]
    chosen: list = [None, None]
    try:
        for r in range(args.repeats):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                children[i].stdin.write("\n")
                children[i].stdin.flush()
                result = json.loads(children[i].stdout.readline())
                rates[i].append(result["rate"])
                chosen[i] = result["chosen"]
    finally:
        for child in children:
            child.stdin.close()
            child.wait()
    print(f"{args.artifact}: {len(prompt)}-token prompt, then {args.tokens} steps timed, {args.threads} threads, "
          f"median of {args.repeats} rounds, interleaved (load average {os.getloadavg()[0]:.1f} after)\n")
    print("| tree | package | tokens/s (min / max) |\n|---|---|---:|")
    for tag, package, rate in zip(("before", "after"), packages, rates):
        print(f"| {tag} | {package} | {np.median(rate):.1f} ({min(rate):.1f} / {max(rate):.1f}) |")
    print(f"\nafter / before: {np.median(rates[1]) / np.median(rates[0]):.3f}; per-round ratios' median "
          f"{np.median(np.array(rates[1]) / np.array(rates[0])):.3f}; the same greedy tokens: {chosen[0] == chosen[1]}")
    return 0 if chosen[0] == chosen[1] else 1


if __name__ == "__main__":
    sys.exit(main())
