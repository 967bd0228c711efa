"""Cold neurons of a hot/cold split, read on demand (the `cold` entry of ir/sparse_variants.py).

On a CPU target the cold up and down rows live in one file, bundled per neuron ("LLM in a flash"'s row-column
bundling): record j of a store is [up row j | down row j], so one read fetches everything an active neuron needs,
and a run of consecutive active neurons is one `preadv`. In predictor mode ("cold-predictor") the predictor's
scores decide who fires, so the gate row is bundled too: [gate row j | up row j | down row j]. Each store starts at
a 4 KiB boundary:

    cold.bin:  store 0: [up_0 | down_0] [up_1 | down_1] ...   (pad to 4 KiB)   store 1: ...

A `ColdStore` keeps a window of the most recently active neurons resident (an LRU over `window` slots; a hit costs
no read). On a GPU target the cold rows are host memory (an array), read by indexing instead of preadv.

The compiled graph calls a store through a host function (`call_dps_packed("actsparse.cold.<store>", x, g)`,
codegen/lower_cold.py, g = the cold neurons' gate pre-activations from the target's linear kernel over the resident
gate rows; in predictor mode the cold neurons' scores instead); `register` puts the store's function in TVM's
global registry. Per call: g (or score > cutoff) decides which neurons fire, their bundles are fetched once for all
tokens of the call, and y = (act_g(g) ⊙ act_u(x·Upᵀ))·Down over them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ir import Graph, Node
from ..ir.activations import apply
from ..ir.sparse_variants import COLD_MODES
from .devices import on_host

ALIGN = 4096
COLD_FILE = "cold.bin"


@dataclass(frozen=True)
class ColdLayout:
    """Where a store's bundles sit in the cold file."""
    store: str
    offset: int
    rows: int
    d: int
    d_out: int
    dtype: str
    up: str      # the IR's weight names of its up and down rows
    down: str
    gate: str = ""   # predictor mode: the gate rows' name (bundled first); "" when the gate rows stay resident

    @property
    def width(self) -> int:
        return (self.d if self.gate else 0) + self.d + self.d_out

    @property
    def names(self) -> tuple[str, ...]:
        """The weights bundled per neuron, in record order."""
        return (self.gate, self.up, self.down) if self.gate else (self.up, self.down)

    def split(self, bundles: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(gate rows or None, up rows, down rows) of bundles [k, width]."""
        lead = self.d if self.gate else 0
        gate = bundles[:, :lead] if self.gate else None
        return gate, bundles[:, lead:lead + self.d], bundles[:, lead + self.d:]

    @property
    def nbytes(self) -> int:
        return self.rows * self.width * np.dtype(self.dtype).itemsize


def cold_nodes(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if n.op == "sparse_gated_mlp" and n.attrs.get("mode") in COLD_MODES]


def cold_layouts(graph: Graph) -> dict[str, ColdLayout]:
    """Each store's layout, in graph order (the same graph always gives the same file)."""
    layouts, offset = {}, 0
    for node in cold_nodes(graph):
        store = node.attrs["store"]
        if store in layouts:
            continue
        gate, up, down = node.inputs[1:4]
        dtype = str(graph.weights[up.attrs["name"]].dtype)
        layout = ColdLayout(store, offset, up.shape[0], up.shape[1], down.shape[1], dtype, up.attrs["name"],
                            down.attrs["name"], gate.attrs["name"] if len(node.inputs) > 4 else "")
        layouts[store] = layout
        offset += -(-layout.nbytes // ALIGN) * ALIGN
    return layouts


def file_weights(graph: Graph) -> set[str]:
    """Names of the weights that live in the cold file (up and down rows of the cold nodes, and gate rows in
    predictor mode)."""
    return {name for lay in cold_layouts(graph).values() for name in lay.names}


def write_cold_file(path: str | os.PathLike, graph: Graph, rows_per_write: int = 4096) -> dict[str, ColdLayout]:
    """Write the bundles of every store (a few thousand rows at a time: no second copy of the model)."""
    layouts = cold_layouts(graph)
    with open(path, "wb") as f:
        for lay in layouts.values():
            f.seek(lay.offset)
            parts = [graph.weights[name] for name in lay.names]
            for start in range(0, lay.rows, rows_per_write):
                f.write(np.ascontiguousarray(np.concatenate([p[start:start + rows_per_write] for p in parts],
                                                            1)).tobytes())
        f.truncate(max((lay.offset + lay.nbytes for lay in layouts.values()), default=0))
    return layouts


def mapped_weights(path: str | os.PathLike, layouts: dict[str, ColdLayout]) -> dict[str, np.ndarray]:
    """Read-only views of the cold weights in the file (memory-mapped: nothing is read until used)."""
    views = {}
    for lay in layouts.values():
        if lay.rows == 0:
            continue
        bundles = np.memmap(path, dtype=lay.dtype, mode="r", offset=lay.offset, shape=(lay.rows, lay.width))
        for name, part in zip((lay.gate, lay.up, lay.down), lay.split(bundles)):
            if part is not None:
                views[name] = part
    return views


class ColdStore:
    """One layer's cold neurons: bundles from a file (pread) or a host array, with an LRU window of `window` rows."""

    def __init__(self, layout: ColdLayout, node_attrs: dict, path: str | os.PathLike | None = None,
                 bundles: np.ndarray | None = None):
        self.layout = layout
        self.gate_act, self.up_act = node_attrs["gate_act"], node_attrs.get("up_act", "identity")
        self.threshold = float(node_attrs.get("threshold", 0.0))
        self.cutoff = float(node_attrs.get("cutoff", 0.0))   # predictor mode: scores above it are computed
        self.bundles = bundles
        self.fd = os.open(path, os.O_RDONLY) if bundles is None else None
        window = min(int(node_attrs.get("window", 0)), layout.rows)
        self.cache = np.empty((window, layout.width), layout.dtype)
        self.slot_of = np.full(layout.rows, -1, np.int64)
        self.owner = np.full(window, -1, np.int64)
        self.stamp = np.zeros(window, np.int64)
        self.clock = 0
        self.hits = self.misses = self.bytes_read = 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.close()

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if self.bundles is not None:
            return np.asarray(self.bundles[idx])
        lay = self.layout
        out = np.empty((len(idx), lay.width), lay.dtype)
        record = lay.width * out.itemsize
        starts = np.flatnonzero(np.diff(idx, prepend=-2) != 1)   # runs of consecutive neurons: one read each
        for a, b in zip(starts, [*starts[1:], len(idx)]):
            os.preadv(self.fd, [memoryview(out[a:b]).cast("B")], lay.offset + int(idx[a]) * record)
        self.bytes_read += out.nbytes
        return out

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Bundles [len(idx), d + d_out] of neurons `idx` (sorted), from the window where resident."""
        window = len(self.owner)
        if window == 0:
            self.misses += len(idx)
            return self._read(idx)
        self.clock += 1
        slots = self.slot_of[idx]
        hit = slots >= 0
        self.stamp[slots[hit]] = self.clock
        miss = idx[~hit]
        self.hits += int(hit.sum())
        self.misses += len(miss)
        out = np.empty((len(idx), self.layout.width), self.layout.dtype)
        out[hit] = self.cache[slots[hit]]
        if len(miss):
            fresh = self._read(miss)
            out[~hit] = fresh
            place = min(len(miss), window - int(hit.sum()))   # the slots this call's hits do not hold
            if place > 0:
                victims = np.argpartition(self.stamp, place - 1)[:place]
                evicted = self.owner[victims]
                self.slot_of[evicted[evicted >= 0]] = -1
                self.owner[victims] = miss[:place]
                self.slot_of[miss[:place]] = victims
                self.cache[victims] = fresh[:place]
                self.stamp[victims] = self.clock
        return out

    def compute(self, x2d: np.ndarray, g: np.ndarray) -> np.ndarray:
        """y [tokens, d_out] of the cold neurons for x2d [tokens, d] and, per token and cold neuron [tokens, rows],
        their gate pre-activations g (exact semantics) or, when the gate rows are bundled (predictor mode), their
        predictor scores (a neuron is computed where its score exceeds the cutoff)."""
        x2d = np.asarray(x2d, np.float32)
        g = np.asarray(g, np.float32)
        if self.layout.gate:
            picked = g > self.cutoff
        else:
            a = apply(self.gate_act, g, self.threshold)
            picked = a != 0
        idx = np.flatnonzero(picked.any(0))
        if not len(idx):
            return np.zeros((x2d.shape[0], self.layout.d_out), np.float32)
        gate, up, down = self.layout.split(self.rows(idx).astype(np.float32, copy=False))
        if gate is not None:
            a = apply(self.gate_act, x2d @ gate.T, self.threshold) * picked[:, idx]
        else:
            a = a[:, idx]
        return (a * apply(self.up_act, x2d @ up.T)) @ down


def register(store: ColdStore) -> None:
    """Make the store the compiled graph's host function `actsparse.cold.<store>` (CPU or GPU tensors)."""
    import tvm

    def cold_mlp(x, g, out):
        on_cpu = on_host(out.device)
        host = (lambda t: np.from_dlpack(t)) if on_cpu else (lambda t: t.numpy())
        y = store.compute(host(x), host(g))
        if on_cpu:
            np.from_dlpack(out)[...] = y
        else:
            out.copyfrom(y)

    tvm.register_global_func(function_name(store.layout.store), cold_mlp, override=True)


def function_name(store: str) -> str:
    return f"actsparse.cold.{store}"


def drop_from_page_cache(path: str | os.PathLike) -> None:
    """Ask the kernel to forget the file's cached pages (benchmarks: reads then come from the disk)."""
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def place_cold(graph: Graph, on_gpu: bool, directory: str | os.PathLike | None = None):
    """Where a split graph's cold neurons go: (graph with the file's views as its cold weights, placement, the cold
    file or None). CPU: their up/down rows are written to `directory`/cold.bin (a new temp directory by default)
    and the graph keeps read-only memory maps of them; GPU: their up/down rows stay in host memory."""
    import tempfile

    layouts = cold_layouts(graph)
    if not layouts:
        return graph, {}, None
    if on_gpu:   # the gate rows stay in VRAM (the cost model counts them there): the GPU computes g
        names = {n for lay in layouts.values() for n in lay.names}
        return graph, dict.fromkeys(names, "host"), None
    path = Path(directory or tempfile.mkdtemp(prefix="actsparse-cold-")) / COLD_FILE
    write_cold_file(path, graph)
    views = mapped_weights(path, layouts)
    return graph.with_outputs(graph.outputs, views), dict.fromkeys(views, "file"), path


def attach(graph: Graph, cold_file: str | os.PathLike | None, weights: dict[str, np.ndarray]) -> list[ColdStore]:
    """A ColdStore per store of the graph, registered as the graph's host functions."""
    stores = []
    if cold_nodes(graph):
        # TVM's idle workers spin after each parallel kernel; the cold path's numpy work in between then shares
        # the cores with them (measured: 8x slower decoding on 2 cores). Set before the pool starts; a user's wins.
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    nodes = {n.attrs["store"]: n for n in cold_nodes(graph)}
    for layout in cold_layouts(graph).values():
        bundles = None
        if cold_file is None:
            bundles = np.concatenate([weights[name] for name in layout.names], 1)
        store = ColdStore(layout, dict(nodes[layout.store].attrs), cold_file, bundles)
        register(store)
        stores.append(store)
    return stores


def save_cold(graph: Graph | None, cold_file: str | os.PathLike | None, staging: Path) -> dict:
    """Copy the cold file into an artifact being written; returns its manifest field ({"cold": layouts})."""
    import shutil
    from dataclasses import asdict

    if cold_file is None or graph is None:
        return {}
    shutil.copyfile(cold_file, staging / COLD_FILE)
    return {"cold": {store: asdict(lay) for store, lay in cold_layouts(graph).items()}}


def load_cold(artifact, weights: dict[str, np.ndarray]) -> Path | None:
    """An artifact's cold file (verified by a streaming hash, `artifact.streamed`): its weights as memory maps added
    to `weights`; returns the file, or None when the artifact has none."""
    from ..errors import ArtifactError

    entry = artifact.manifest.get("cold")
    if not entry:
        return None
    path = artifact.streamed.get(COLD_FILE)
    try:
        layouts = {store: ColdLayout(**fields) for store, fields in dict(entry).items()}
        end = max(lay.offset + lay.nbytes for lay in layouts.values())
        if path is None or path.stat().st_size < end or any(lay.offset % ALIGN or lay.rows < 0 for lay in
                                                             layouts.values()):
            raise ValueError(f"{COLD_FILE} is missing or smaller than its layout")
        views = mapped_weights(path, layouts)
    except (TypeError, ValueError, OSError) as err:
        raise ArtifactError(f"{artifact.path}: the cold neurons' layout is malformed ({str(err)[:160]}); rebuild the "
                            "artifact") from None
    weights.update(views)
    return path
