"""The cost of each ONNX-table row for tests/test_onnx_table.py, recorded in tests/onnx_row_cost.json.

The test re-derives one row a day (eight TorchScript exports, our import, the IR interpreter against torch): about
10 s for most architectures but minutes for a few (HRM unrolls its reasoning cycles into thousands of ONNX nodes).
Its cost grows with the exported graph and with the trace (an export that fails still traces, eight times), so a
row's cost is recorded as the node count of one TorchScript export at opset 17 (machine-independent; none where
the export fails) and the seconds it took: the least of the runs that recorded it, since a loaded machine only adds
(a guide, not a measurement).

    python tests/onnx_row_cost.py               # every row of the README's ONNX table (minutes)
    python tests/onnx_row_cost.py hrm_text      # some
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path

COSTS = Path(__file__).with_name("onnx_row_cost.json")


def recorded() -> dict[str, dict]:
    return json.loads(COSTS.read_text()) if COSTS.exists() else {}


def row_cost(arch: str) -> dict:
    import onnx
    import torch

    from actsparse.frontends.hf import CausalLMLogits
    from actsparse.scripts.arch_table import build_tiny, example_ids

    start = time.perf_counter()
    try:
        model = CausalLMLogits(build_tiny(arch)).eval()
        ids = example_ids(model.model if hasattr(model, "model") else model)
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(model, (ids,), buffer, dynamo=False, opset_version=17, input_names=["input_ids"],
                              dynamic_axes={"input_ids": {1: "seq"}})
        nodes = len(onnx.load_from_string(buffer.getvalue()).graph.node)
    except Exception:  # noqa: BLE001 - a failing export is cheap to re-derive: its trace is the cost
        nodes = None
    return {"nodes": nodes, "seconds": round(time.perf_counter() - start, 1)}


def main(archs: list[str]) -> int:
    import torch

    from actsparse.scripts.arch_table import readme_path
    from actsparse.scripts.onnx_table import onnx_rows

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    costs = recorded()
    for arch in archs or sorted(onnx_rows(readme_path().read_text())):
        cost, before = row_cost(arch), costs.get(arch)
        if before and before["nodes"] == cost["nodes"]:  # a loaded machine only adds seconds: keep the least seen
            cost["seconds"] = min(cost["seconds"], before["seconds"])
        costs[arch] = cost
        print(arch, costs[arch], flush=True)
        COSTS.write_text(json.dumps(dict(sorted(costs.items())), indent=0) + "\n")  # after each: partial runs keep
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
