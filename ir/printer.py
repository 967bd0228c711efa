"""Text form of a graph, one node per line, and its parser; `parse_graph(print_graph(g))` rebuilds `g`.

    graph @main(%ids: i64[1,seq]) {
      @embed.weight : f32[256,64]
      %0 = embedding(@embed.weight, %ids) : f32[1,seq,64]  # model.embed
      %1 = constant() {'value': 2.0} : f32[]
      return %0
    }

Attributes are a Python dict literal (read back with `ast.literal_eval`); weights are declared with their
types after the header and referenced inline as `@name`; a trailing `# ...` is the node's source location.
"""

from __future__ import annotations

import ast
import re

import numpy as np

from ..errors import ActsparseError
from .graph import Graph, Node
from .printing import print_graph
from .types import TensorType, np_dtype

__all__ = ["ParseError", "parse_graph", "print_graph"]

_HEADER = re.compile(r"^graph @(\S+)\((.*)\) \{$")
_NODE = re.compile(r"^(%\S+) = ([\w.]+)\(([^)]*)\)(.*)$")


class ParseError(ActsparseError, ValueError):
    pass


# what malformed text makes the pieces below raise; each becomes a ParseError naming the line
_MALFORMED = (TypeError, ValueError, KeyError, IndexError, RecursionError, MemoryError, OverflowError)


def parse_graph(text: str, weights: dict[str, np.ndarray] | None = None) -> Graph:
    """Parse the text form. Weights not given are filled with zeros of their declared type. Any malformed text
    raises ParseError (and nothing else)."""
    if not isinstance(text, str):
        raise ParseError(f"expected the graph's text, got {type(text).__name__}")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    header = _HEADER.match(lines[0]) if lines else None
    if not header or lines[-1] != "}":
        raise ParseError("expected 'graph @name(...) {' ... '}'")
    values: dict[str, Node] = {}
    inputs = []
    held = dict(weights or {})
    outputs = None
    lineno = 1
    try:
        for param in filter(None, (p.strip() for p in header.group(2).split(", %"))):
            name, _, type_text = param.lstrip("%").partition(": ")
            type_text, _, attrs_text = type_text.partition(" ")  # attributes besides the name (`least`)
            node = Node("input", (), {**_attrs(attrs_text, lineno), "name": name}, TensorType.parse(type_text))
            values["%" + name] = node
            inputs.append(node)
        for lineno, line in enumerate(lines[1:-1], start=2):
            if line.startswith("@"):
                name, _, type_text = line[1:].partition(" : ")
                type_text, _, layout = type_text.partition(" ")  # a quantized weight: `f32[n,k] q4_0`
                ttype = TensorType.parse(type_text)
                if not name or any(isinstance(d, str) for d in ttype.shape):
                    raise ParseError(f"line {lineno}: a weight needs a name and a static shape: {line[:80]!r}")
                if layout:  # quantized storage: zero codes of the layout's shape
                    from .quant import layout as quant_layout

                    rows, cols = ttype.shape
                    held.setdefault(name, np.zeros((rows, quant_layout(layout).row_bytes(cols)), np.uint8))
                held.setdefault(name, np.zeros(tuple(ttype.shape), np_dtype(ttype.dtype)))
                attrs = {"name": name, "layout": layout} if layout else {"name": name}
                values["@" + name] = Node("weight", (), attrs, ttype)
            elif line.startswith("return "):
                outputs = [_lookup(values, v.strip(), lineno) for v in line[len("return "):].split(",")]
            else:
                values.update([_parse_node(line, values, lineno)])
    except ParseError:
        raise
    except _MALFORMED as err:
        raise ParseError(f"line {lineno}: {type(err).__name__}: {str(err)[:160]}") from None
    if outputs is None:
        raise ParseError("missing 'return' line")
    return Graph(inputs, outputs, held, header.group(1))


def _parse_node(line: str, values: dict[str, Node], lineno: int) -> tuple[str, Node]:
    body, _, loc = line.partition("  # ")
    body, _, type_text = body.rpartition(" : ")
    match = _NODE.match(body)
    if not match:
        raise ParseError(f"line {lineno}: cannot read {line!r}")
    name, op, args, attrs_text = match.groups()
    inputs = [_lookup(values, a.strip(), lineno) for a in args.split(",") if a.strip()]
    return name, Node(op, inputs, _attrs(attrs_text, lineno), TensorType.parse(type_text), loc)


def _attrs(text: str, lineno: int) -> dict:
    try:
        attrs = ast.literal_eval(text.strip()) if text.strip() else {}
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as err:
        raise ParseError(f"line {lineno}: bad attributes {text.strip()[:80]!r}: {err}") from None
    if not isinstance(attrs, dict) or not all(isinstance(k, str) for k in attrs):
        raise ParseError(f"line {lineno}: attributes must be a dict with str keys, got {text.strip()[:80]!r}")
    return attrs


def _lookup(values: dict[str, Node], name: str, lineno: int) -> Node:
    try:
        return values[name]
    except KeyError:
        raise ParseError(f"line {lineno}: {name} is used before it is defined") from None
