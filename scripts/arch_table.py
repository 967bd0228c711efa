"""Every causal-LM architecture transformers knows, shrunk to a tiny config and tried through the frontend.

    for arch in causal_lm_architectures():          # transformers' MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        result = check_architecture(arch)          # build tiny -> torch.export -> IR -> interpreter vs torch

`tiny_config(arch)` (scripts/tiny_config.py) is one generic shrinker, not a config per model. Whatever still
fails is reported with the precise reason (the stage and the first line of the error), which is what the README
table shows. The patterns column holds detect-gated-mlp's counts, the non-gated ReLU-family MLPs sparsify-exact
made exact (`relu2-mlp exact`), and `unmatched-gate` / `unmatched-activation` blocks (a gate, or a plain MLP's
activation, that is no table activation), which the reason column spells.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .tiny_config import (  # noqa: F401 - the shrinker's names, imported from here by the other tables and tests
    CHECKPOINT_VALUES,
    SEQ,
    build_tiny,
    causal_lm_part,
    example_ids,
    kept_layers,
    tiny_config,
)

# what stops an architecture that still fails, and what would fix it (shown only while its check fails)
LIMITS = {
    "blt": "data-dependent: its patch count is the count of its entropy model's outputs over a threshold "
           "(process_patch_lengths: `int(segment_counts.max().item())`), and it sizes every tensor after the "
           "patcher; IR shapes are functions of input sizes, so no general shape rule holds it (a fixed patching "
           "would import)",
    "gemma3n": "its vision tower is timm's (TimmWrapperModel) and timm (which pulls torchvision) is not installed; "
               "gemma3n_text, the decoder alone, imports",
    "gemma4_assistant": "a speculative-decoding draft model whose default config fails transformers' own validation",
    "gemma4_unified_assistant": "a speculative-decoding draft model: it reads the target model's embeddings and KV "
                                "states, so it does not run from token ids alone",
    "qwen4_exp": "data-dependent: its QSA indexer loops over the queries in Python, takes each one's visible keys "
                 "with torch.nonzero over its mask row and branches on their count (`if num_complete_blocks > 0`), "
                 "which torch.export cannot trace at any length; the rest (block means, topk, index_select, a "
                 "scatter into the mask) the frontend has rules for",
}
LIMITS["qwen4_exp_text"] = LIMITS["qwen4_exp"]


def causal_lm_architectures() -> list[str]:
    """Every `model_type` of transformers' causal-LM auto mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


@dataclass
class ArchResult:
    arch: str
    stage: str = "config"  # where it stopped: build, import, interpret, compile; "ok" when all passed
    reason: str = ""
    gated: int = 0  # gated MLP blocks detected
    patterns: dict = field(default_factory=dict)  # detect-gated-mlp's per-pattern counts
    compiled: bool | None = None  # TVM auto-mode build matched torch (None: not tried)
    note: str = ""  # why an importing model was specialised to the example's sequence length (if it was)
    seconds: dict = field(default_factory=dict)

    @property
    def imports(self) -> bool:
        return self.stage in ("compile", "ok")

    def row(self) -> str:
        """Its README table row (no timings: the row must not change between runs)."""
        pattern = ", ".join(f"{k}×{v}" for k, v in sorted(self.patterns.items())) or "–"
        tvm = {None: NOT_RUN, True: "auto: yes", False: "auto: no"}[self.compiled]
        reason = (self.reason or self.note).replace("|", "\\|") or "–"
        return (f"| {self.arch} | {'yes' if self.imports else 'no'} | {self.gated} | {pattern} | {tvm} | "
                f"{reason} |")


def check_architecture(arch: str, compile: bool = False) -> ArchResult:
    """Build the tiny model, import it (torch.export), run the IR interpreter against torch, detect its MLPs;
    with `compile`, also build it for the host in auto mode and check the compiled outputs against torch."""
    from ..frontends.hf import CausalLMLogits
    from ..frontends.torch_export import import_torch
    from ..ir import evaluate
    from ..passes import pipeline_for, run_pipeline

    result, clock = ArchResult(arch), time.perf_counter()

    def lap(stage, next_stage):
        nonlocal clock
        now = time.perf_counter()
        result.seconds[stage] = round(now - clock, 2)
        clock, result.stage = now, next_stage

    try:
        result.stage = "build"
        model = build_tiny(arch)
        ids = example_ids(model)
        wrapped = CausalLMLogits(model).eval()
        with torch.no_grad():
            want = wrapped(ids).numpy()
        lap("build", "import")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graph = import_torch(wrapped, (ids,))
        if not any(isinstance(d, str) for d in graph.inputs[0].shape):
            fell_back = [_FELL_BACK.search(str(w.message)) for w in caught]  # import-time fallbacks (new rows)
            why = next((m.group(1) for m in fell_back if m), "")
            result.note = f"static sequence length: {clean_message(why)}" if why else ""
        lap("import", "interpret")
        assert_close(evaluate(graph, [ids.numpy()])[0], want, "the IR interpreter")
        # a graph with a symbolic length is checked at a second one too (neither a multiple of a chunked scan's
        # chunk: the padding the scan computes from the length is exercised)
        other = example_ids(model, SEQ + 3) if isinstance(graph.inputs[0].shape[-1], str) else None
        if other is not None:
            with torch.no_grad():
                want_other = wrapped(other).numpy()
            assert_close(evaluate(graph, [other.numpy()])[0], want_other, f"the IR interpreter at length {SEQ + 3}")
        run = run_pipeline(graph, pipeline_for("auto"))
        stats = run.stats.get("detect-gated-mlp", {})
        result.gated = stats.get("gated-mlp", 0)
        result.patterns = {k: v for k, v in stats.items() if k not in ("gated-mlp", "biased", "moe-expert")}
        result.patterns.update({f"{k} exact": v for k, v in run.stats.get("sparsify-exact", {}).items()
                                if k.endswith("-mlp")})  # non-gated ReLU-family MLPs made exactly sparse
        gates = sorted({n["gate"] for n in run.notes if n.get("pattern") == "unmatched-gate"})
        activations = sorted({n["activation"] for n in run.notes if n.get("pattern") == "unmatched-activation"})
        missing = "; ".join([*([f"gate not a table activation: {'; '.join(gates)}"] if gates else []),
                             *([f"activation not a table activation: {'; '.join(activations)}"] if activations
                               else [])])
        if missing:  # what the detector lacks, spelled out
            result.note = f"{missing}; {result.note}" if result.note else missing
        lap("interpret", "compile")
        if compile:
            import actsparse

            result.compiled = False
            cm = actsparse.compile(graph, (ids.numpy(),), mode="auto")
            assert_close(np.asarray(cm(ids.numpy())), want, "the TVM build")
            if other is not None:
                assert_close(np.asarray(cm(other.numpy())), want_other, f"the TVM build at length {SEQ + 3}")
            result.compiled = True
            lap("compile", "ok")
        else:
            result.stage = "ok"
    except Exception as err:  # noqa: BLE001 - the reason is the product here
        result.reason = f"{LIMITS[arch]} ({_reason(err)})" if arch in LIMITS else _reason(err)
    return result


def assert_close(got, want, what: str) -> None:
    err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-12))
    if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))):
        raise AssertionError(f"{what} differs from torch (max error {err:.2e} of the largest logit)")


_PATH = re.compile(r"(?:/[\w.@+-]+)+/([\w.-]+\.py)")


_FELL_BACK = re.compile(r"importing with a symbolic sequence length failed \((.*)\); importing with the example's "
                        r"static", re.S)
_EVAL = re.compile(r"<eval_with_key>\.\d+(?::\d+)?")


def _reason(err: Exception) -> str:
    """The first line of the error, site-packages paths cut to the file name (rows must not depend on the
    machine)."""
    return f"{type(err).__name__}: {clean_message(str(err))}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours (torch.onnx's step banners)


def clean_message(message: str, limit: int | None = 240) -> str:
    text = _ANSI.sub("", message).strip().splitlines()
    return _EVAL.sub("<generated>", _PATH.sub(r"\1", text[0] if text else ""))[:limit]


# --- the README table --------------------------------------------------------------------------------------
START, END = "<!-- arch-table:start -->", "<!-- arch-table:end -->"
HEADER = ("| architecture | imports | gated MLPs | patterns | TVM build (what ran) | reason it stops |\n"
          "|---|---|---|---|---|---|")
NOT_RUN = "not run"
# the decoding table's markers (scripts/decode_table.py writes it): its TVM builds are evidence for this column
DECODE_START, DECODE_END = "<!-- decode-table:start -->", "<!-- decode-table:end -->"


def readme_path() -> Path:
    return Path(__file__).resolve().parent.parent / "README.md"


def table_rows(readme: str, start: str = START, end: str = END) -> dict[str, str]:
    """arch -> row of the generated table between `start` and `end` in README text (empty if there is none)."""
    if start not in readme:
        return {}
    body = readme.split(start, 1)[1].split(end, 1)[0]
    return {line.split("|")[1].strip(): line for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| architecture") and "---" not in line}


def replace_marked(path: Path, text: str, table: str, start: str, end: str, heading: str) -> None:
    """`text` (the README's) with the section between `start` and `end` replaced by `table` (or `table` appended
    under `heading`), written to `path` atomically."""
    if start in text:
        before, rest = text.split(start, 1)
        text = before + table + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + table + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def tvm_cell(row: str, decoded: dict[str, str]) -> str:
    """`row` with its TVM column filled from the decoding table where no auto build ran for it: `decoder (dense):
    yes` when the architecture, compiled with TVM as a KV-cached decoder in dense mode, decodes token for token as
    transformers' `generate` does (`differs` / `no` otherwise). An auto build's own result is kept."""
    cells = row.split("|")
    if cells[5].strip().startswith("auto:"):
        return row
    verdict = decoded.get(cells[1].strip(), "").split("|")
    cells[5] = f" decoder (dense): {verdict[2].strip()} " if len(verdict) > 2 else f" {NOT_RUN} "
    return "|".join(cells)


def write_table(results: list[ArchResult], path: Path) -> None:
    """Replace (or append) the generated table; rows of architectures not in `results` are kept."""
    text = path.read_text()
    decoded = table_rows(text, DECODE_START, DECODE_END)
    rows = {a: tvm_cell(row, decoded) for a, row in {**table_rows(text), **{r.arch: r.row() for r in results}}.items()}
    ok = sum(row.split("|")[2].strip() == "yes" for row in rows.values())
    cells = [row.split("|")[5].strip() for row in rows.values()]
    built, decodes = cells.count("auto: yes"), cells.count("decoder (dense): yes")
    table = "\n".join([START, f"{ok} of {len(rows)} causal-LM architectures of transformers import and match torch; "
                        f"{built} also built with TVM in auto mode and matched (`auto: yes`); of the rest, {decodes} "
                        "were compiled with TVM as dense KV-cached decoders by the decoding table below and decode "
                        "token for token as transformers (`decoder (dense): yes`). Generated by "
                        "`python -m actsparse.scripts.arch_table --write`.", "", HEADER,
                        *(rows[a] for a in sorted(rows)), END])
    replace_marked(path, text, table, START, END, "Architectures (generated)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Try every causal-LM architecture of transformers (tiny configs) "
                                     "through import, the interpreter and a TVM build; print or write the table.")
    parser.add_argument("archs", nargs="*", help="architectures (default: all of transformers' causal-LM mapping)")
    parser.add_argument("--no-compile", action="store_true", help="skip the TVM build")
    parser.add_argument("--write", action="store_true", help="update the table in README.md")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results = []
    for arch in tqdm(args.archs or causal_lm_architectures(), unit="arch"):
        results.append(check_architecture(arch, compile=not args.no_compile))
        tqdm.write(f"{results[-1].row()}  {results[-1].seconds}")
        if args.write:  # after each one: a long run interrupted keeps what it found
            write_table(results[-1:], readme_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
