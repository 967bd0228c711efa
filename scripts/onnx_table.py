"""ONNX coverage by enumeration: the architectures of the README's table that import through torch.export,
exported to ONNX by both torch.onnx exporters at opsets 14–21, and the ONNX ops our ONNX frontend lacks.

    for arch in importing architectures:            # rows of the generated architecture table with imports = yes
        for exporter in ("torchscript", "dynamo"):
            for opset in 14..21: export; collect the op types; missing = op types - frontends.onnx_ops.HANDLERS
        import the first complete export with our ONNX frontend and compare with torch (rtol 1e-3)

The TorchScript exporter exports once per opset. The dynamo exporter exports at its own opset (18) and, as
torch.onnx does for any other `opset_version`, the model is converted with `onnx.version_converter` (which has
no adapters below some ops' versions: such an opset is reported as failing, with the converter's reason).
A row: architecture, the opsets each exporter produced, the op types our frontend lacks (any exporter or opset),
and whether our import of one export matched torch. A TorchScript export whose symbolic sequence length makes a
size the IR cannot name (a padded convolution's `seq + 3`) is imported again from a static-shape export, as
`import_torch` does ("static shapes" in the row); an export our import fails on is also run by onnxruntime, and
the row says when onnxruntime fails on it too (the exporter's fault, not the frontend's). It takes minutes per
architecture (the dynamo exporter is slow), so this is a script, run by hand; `tests/test_onnx_table.py` checks
one row each run.

    python -m actsparse.scripts.onnx_table --write              # every importing architecture
    python -m actsparse.scripts.onnx_table llama opt --write    # some
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arch_table import assert_close, build_tiny, clean_message, example_ids, readme_path, replace_marked, table_rows

OPSETS = tuple(range(14, 22))
EXPORTERS = ("torchscript", "dynamo")
DYNAMO_OPSET = 18  # the dynamo exporter's own opset; others are converted from it


def importing_architectures(readme: str | None = None) -> list[str]:
    """The architectures whose generated README row says they import (torch.export)."""
    rows = table_rows(readme if readme is not None else readme_path().read_text())
    return sorted(a for a, row in rows.items() if row.split("|")[2].strip() == "yes")


def op_types(proto) -> set[str]:
    """Every op type of the model, its local functions' and subgraphs' included (`domain::Op` off the default
    domain)."""
    from onnx import AttributeProto

    found: set[str] = set()

    def walk(nodes):
        for n in nodes:
            found.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}")
            for a in n.attribute:
                if a.type == AttributeProto.GRAPH:
                    walk(a.g.node)
                elif a.type == AttributeProto.GRAPHS:
                    for g in a.graphs:
                        walk(g.node)

    walk(proto.graph.node)
    for f in proto.functions:
        walk(f.node)
    local = {f"{f.domain}::{f.name}" for f in proto.functions}
    return found - local  # calls of local functions are not ops: their bodies are walked


def lacking(ops: set[str]) -> set[str]:
    from ..frontends.onnx_ops import HANDLERS

    return {op for op in ops if op not in HANDLERS}


def export(model, ids, exporter: str, opsets=OPSETS, dynamic: bool = True) -> dict:
    """opset -> ModelProto, or the first line of why that export failed (`dynamic`: the sequence length symbolic;
    the TorchScript exporter only)."""
    import onnx

    out: dict = {}
    if exporter == "torchscript":
        for opset in opsets:
            buffer = io.BytesIO()
            try:
                with torch.no_grad():
                    torch.onnx.export(model, (ids,), buffer, dynamo=False, opset_version=opset,
                                      input_names=["input_ids"],
                                      dynamic_axes={"input_ids": {1: "seq"}} if dynamic else None)
                out[opset] = onnx.load_from_string(buffer.getvalue())
            except Exception as err:  # noqa: BLE001 - the reason is the product here
                out[opset] = f"{type(err).__name__}: {clean_message(str(err))}"
        return out
    from onnx import version_converter

    try:
        with torch.no_grad():
            program = torch.onnx.export(model, (ids,), dynamo=True, opset_version=DYNAMO_OPSET, verbose=False,
                                        input_names=["input_ids"], dynamic_shapes=({1: torch.export.Dim("seq")},))
        base = program.model_proto
    except Exception as err:  # noqa: BLE001
        return dict.fromkeys(opsets, f"{type(err).__name__}: {clean_message(str(err))}")
    for opset in opsets:
        try:
            out[opset] = base if opset == DYNAMO_OPSET else version_converter.convert_version(base, opset)
        except Exception as err:  # noqa: BLE001
            out[opset] = f"version_converter: {clean_message(str(err)).split('failed: ')[-1]}"
    return out


@dataclass
class OnnxResult:
    arch: str
    exported: dict = field(default_factory=dict)  # exporter -> opsets it produced
    missing: set = field(default_factory=set)  # ONNX op types our frontend lacks
    imports: str = "not run"  # "yes (<exporter> <opset>)" | "no" | "not run"
    reason: str = ""

    def row(self) -> str:
        def opsets(exporter):
            if exporter not in self.exported:
                return "not run"
            got = self.exported[exporter]
            return "–" if not got else f"{got[0]}–{got[-1]}" if got == list(range(got[0], got[-1] + 1)) else \
                ", ".join(map(str, got))

        missing = ", ".join(sorted(self.missing)) or "–"
        reason = self.reason.replace("|", "\\|") or "–"
        return f"| {self.arch} | {opsets('torchscript')} | {opsets('dynamo')} | {missing} | {self.imports} | {reason} |"


def check_onnx(arch: str, exporters=EXPORTERS, opsets=OPSETS) -> OnnxResult:
    """Export the tiny model with each exporter at each opset, list what our frontend lacks, import one export."""
    from ..frontends.errors import FrontendError
    from ..frontends.hf import CausalLMLogits
    from ..frontends.onnx import import_onnx
    from ..ir import evaluate

    result = OnnxResult(arch)
    try:
        model = CausalLMLogits(build_tiny(arch)).eval()
        ids = example_ids(model.model if hasattr(model, "model") else model)
        with torch.no_grad():
            want = model(ids).numpy()
    except Exception as err:  # noqa: BLE001
        result.reason = f"build: {type(err).__name__}: {clean_message(str(err))}"
        return result
    reasons, candidates = [], []
    for exporter in exporters:
        protos = export(model, ids, exporter, opsets)
        result.exported[exporter] = [o for o, p in protos.items() if not isinstance(p, str)]
        failed = sorted({p for p in protos.values() if isinstance(p, str)})
        reasons += [f"{exporter}: {why}" for why in failed[:1]]
        for opset, proto in protos.items():
            if not isinstance(proto, str):
                lacks = lacking(op_types(proto))
                result.missing |= lacks
                if not lacks:
                    candidates.append((exporter, opset, proto))
    preferred = sorted(candidates, key=lambda c: (c[1] != 17, c[1] != DYNAMO_OPSET, c[0] != "torchscript"))
    if preferred:
        exporter, opset, proto = preferred[0]
        try:
            try:
                graph, how = import_onnx(proto), ""
            except FrontendError as err:  # a size of seq the IR cannot name: retry on a static-shape export
                if exporter != "torchscript" or not re.search(r"static shapes|symbolic", str(err)):
                    raise
                static = export(model, ids, exporter, (opset,), dynamic=False)[opset]
                if isinstance(static, str):
                    raise
                graph, how, proto = import_onnx(static), ", static shapes", static
            assert_close(evaluate(graph, [ids.numpy()])[0], want, f"our import of the {exporter} export")
            result.imports = f"yes ({exporter} {opset}{how})"
        except Exception as err:  # noqa: BLE001
            result.imports = "no"
            broken = onnxruntime_error(proto, ids)  # an export onnxruntime cannot run either is the exporter's fault
            why = f"the export is invalid: onnxruntime fails too ({broken})" if broken else \
                f"{type(err).__name__}: {clean_message(str(err))}"
            reasons.insert(0, f"import ({exporter} {opset}): {why}")
    result.reason = "; ".join(reasons)[:300]
    return result


def onnxruntime_error(proto, ids) -> str:
    """Why onnxruntime cannot run `proto` on `ids` (its first line), or "" when it can (or is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return ""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the failure is reported in the row, not logged
    try:
        session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: ids.numpy()})
    except Exception as err:  # noqa: BLE001 - the reason is the product here
        text = clean_message(str(err), limit=None)
        node = re.search(r"running (\w+) node\. Name:'([^']*)'", text)
        detail = text.split(" was false. ")[-1] if " was false. " in text else text.split("Status Message: ")[-1]
        return (f"{node.group(1)} {node.group(2)}: " if node else "") + detail[:160]
    return ""


# --- the README table --------------------------------------------------------------------------------------
START, END = "<!-- onnx-table:start -->", "<!-- onnx-table:end -->"
HEADER = ("| architecture | TorchScript exporter: opsets | dynamo exporter: opsets | ONNX ops our frontend lacks | "
          "our ONNX import matches torch | why an export or import stops |\n|---|---|---|---|---|---|")


def onnx_rows(readme: str) -> dict[str, str]:
    return table_rows(readme, START, END)


def write_table(results: list[OnnxResult], path: Path) -> None:
    text = path.read_text()
    rows = {**onnx_rows(text), **{r.arch: r.row() for r in results}}
    ok = sum(row.split("|")[5].strip().startswith("yes") for row in rows.values())
    counts: dict[str, int] = {}
    for row in rows.values():
        for op in filter(None, (o.strip() for o in row.split("|")[4].split(","))):
            if op != "–":
                counts[op] = counts.get(op, 0) + 1
    recurring = ", ".join(f"{op} ({n})" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"
    table = "\n".join([START, f"{len(rows)} architectures exported to ONNX at opsets {OPSETS[0]}–{OPSETS[-1]}; our "
                       f"ONNX import of one export matched torch for {ok}. Ops our frontend lacks, by architectures: "
                       f"{recurring}. Generated by `python -m actsparse.scripts.onnx_table --write`.", "", HEADER,
                       *(rows[a] for a in sorted(rows)), END])
    replace_marked(path, text, table, START, END, "ONNX coverage (generated)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Export the importing architectures (tiny configs) to ONNX with "
                                     "both exporters at opsets 14-21; list the ONNX ops our frontend lacks.")
    parser.add_argument("archs", nargs="*", help="architectures (default: the README table's importing ones)")
    parser.add_argument("--exporters", default=",".join(EXPORTERS), help="torchscript,dynamo")
    parser.add_argument("--write", action="store_true", help="update the ONNX table in README.md")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # the exporters' progress chatter
    for arch in tqdm(args.archs or importing_architectures(), unit="arch"):
        result = check_onnx(arch, tuple(args.exporters.split(",")))
        tqdm.write(result.row())
        if args.write:  # after each one: a long run interrupted keeps what it found
            write_table([result], readme_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
