"""The TIR text of representative kernels of every family (x86, arm, cuda; f32/f16/q8_0/q4_1), one file each, to
compare a refactor's generated code before and after:

    PYTHONPATH=<parent of checkout A> python -m actsparse.scripts.dump_kernel_tir /tmp/a
    PYTHONPATH=<parent of checkout B> python -m actsparse.scripts.dump_kernel_tir /tmp/b
    diff -r /tmp/a /tmp/b

A combination a family refuses is written as its error line (compare those too). About 2-3 minutes on 2 cores."""

import sys
from pathlib import Path

from actsparse import targets
from actsparse.codegen.kernels import kernel
from actsparse.codegen.schedules import schedule_for

DTYPES = ("float32", "float16", "q8_0", "q4_1")
GATE = dict(gate_act="silu", threshold=0.5, criterion="gate")
PRODUCT = dict(gate_act="silu", threshold=0.5, criterion="product")


def cases() -> list[tuple[str, str, tuple, dict, str]]:
    """(file name, kernel, sizes, options, schedule's target) of every kernel dumped."""
    out = []
    for target in ("x86", "arm"):
        for dt in DTYPES:
            mlp = [("exact", dict(gate_act="relu", up_act="relu")), ("fat", dict(gate_act="fatrelu", threshold=0.25)),
                   ("dense", dict(gate_act="silu")), ("indexed", dict(gate_act="silu")), ("thrgate", GATE),
                   ("thrprod", PRODUCT), ("input", dict(gate_act="silu")),
                   ("inputg", dict(gate_act="silu", criterion="gate"))]
            kinds = {"fat": "exact", "thrgate": "threshold", "thrprod": "threshold", "inputg": "input"}
            out += [(f"{target}_{tag}_{dt}", kinds.get(tag, tag), (64, 160), {**kw, "dtype": dt}, target)
                    for tag, kw in mlp]
            out += [(f"{target}_routedx_{dt}", "routed", (64, 96, 4), dict(gate_act="relu", dtype=dt), target),
                    (f"{target}_routedd_{dt}", "routed", (64, 96, 4), dict(gate_act="silu", dtype=dt, exact=False),
                     target)]
        out += [(f"{target}_sign", "sign_score", (70, 96), {}, target),
                (f"{target}_select", "select", (96,), {}, target)]
    for dt in DTYPES:
        for d in (64, 37):
            mlp = [("exact", dict(gate_act="relu", up_act="relu")), ("thrgate", GATE), ("thrprod", PRODUCT),
                   ("scored", dict(gate_act="silu")), ("dense", dict(gate_act="gelu")),
                   ("indexed", dict(gate_act="silu")), ("input", dict(gate_act="silu")),
                   ("inputg", dict(gate_act="silu", criterion="gate"))]
            kinds = {"thrgate": "threshold", "thrprod": "threshold", "inputg": "input"}
            out += [(f"cuda_{tag}_{dt}_{d}", kinds.get(tag, tag), (d, 53), {**kw, "dtype": dt}, "cuda")
                    for tag, kw in mlp]
    return out + [("cuda_sign", "sign_score", (70, 96), {}, "cuda")]


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    scheds = {t: schedule_for(targets.get(t)) for t in ("x86", "arm", "cuda")}
    ok = bad = 0
    for name, k, args, kw, target in cases():
        try:
            text = kernel(k, *args, sched=scheds[target], **kw).script()
            ok += 1
        except Exception as err:  # noqa: BLE001 - a combination a family refuses: record the refusal
            text = f"ERROR {type(err).__name__}: {str(err).splitlines()[0]}"
            bad += 1
        (out / f"{name}.tir").write_text(text)
    print(f"{ok} kernels, {bad} refused, in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
