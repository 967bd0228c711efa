"""The byte arrangement of an artifact's quantized weights: recorded per weight in the manifest, checked on load.

A quantized weight's blob is read by the kernels the artifact was compiled with, but also by everything that works
on the graph again (the numpy interpreter, the report, a recompile): those follow today's `ir.quant.LAYOUTS`. When
a layout's arrangement changes (q8_0: GGUF's 34-byte blocks -> split rows, session 22), a blob written before would
be read with the wrong offsets, silently. So the manifest records `layout_versions` {weight name: version}
(`ir.quant.LAYOUT_VERSIONS`), and a load refuses a weight whose version is not today's, naming the way out.
Why refuse rather than convert: the artifact's library was compiled for the old arrangement, so converting the blob
would make the library read it wrongly instead; a rebuild gives both anew. An artifact without the field was written
before it existed: its weights hold `ir.quant.UNRECORDED_VERSIONS` (q8_0 blocks; q4_0 / q4_1 split rows).
"""

from __future__ import annotations

from ..errors import ArtifactError
from ..ir import Graph
from ..ir.quant import LAYOUT_VERSIONS, UNRECORDED_VERSIONS

VERSION_NAMES = {1: "GGUF's blocks", 2: "split rows"}


def quantized_weights(graph: Graph) -> dict[str, str]:
    """{weight name: layout} of the graph's quantized weights."""
    return {n.attrs["name"]: n.attrs["layout"] for n in graph.nodes
            if n.op == "weight" and n.attrs.get("layout", "dense") in LAYOUT_VERSIONS}


def layout_versions(graph: Graph) -> dict[str, int]:
    """The manifest's `layout_versions`: every quantized weight's arrangement, as this build writes it."""
    return {name: LAYOUT_VERSIONS[lay] for name, lay in quantized_weights(graph).items()}


def check_layout_versions(path, graph: Graph, recorded) -> None:
    """Refuse (ArtifactError) a quantized weight stored in another arrangement than today's `ir.quant` reads."""
    if recorded is not None and not isinstance(recorded, dict):
        raise ArtifactError(f"{path}: the manifest's layout_versions is not a mapping; rebuild the artifact")
    for name, lay in quantized_weights(graph).items():
        found = UNRECORDED_VERSIONS[lay] if recorded is None else recorded.get(name)
        if found != LAYOUT_VERSIONS[lay]:
            held = VERSION_NAMES.get(found, "no recorded arrangement" if found is None else f"arrangement {found!r}")
            raise ArtifactError(
                f"{path}: weight {name} is {lay} stored as {held[:40]}, but this actsparse reads {lay} as "
                f"{VERSION_NAMES[LAYOUT_VERSIONS[lay]]} (ir.quant); rebuild the artifact from its model with this "
                "version (actsparse build, or compile(...).save)")
