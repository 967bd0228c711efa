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

from .graph import Graph, Node
from .types import TensorType, np_dtype


def print_graph(graph: Graph) -> str:
    names: dict[int, str] = {}
    for node in graph.inputs:
        names[id(node)] = "%" + node.attrs["name"]
    params = ", ".join(f"{names[id(n)]}: {n.type}" for n in graph.inputs)
    lines = [f"graph @{graph.name}({params}) {{"]
    weight_nodes = {n.attrs["name"]: n for n in graph.nodes if n.op == "weight"}
    for name in sorted(weight_nodes):
        layout = weight_nodes[name].attrs.get("layout", "dense")
        lines.append(f"  @{name} : {weight_nodes[name].type}" + (f" {layout}" if layout != "dense" else ""))
        names[id(weight_nodes[name])] = "@" + name
    counter = 0
    for node in graph.nodes:
        if node.op == "weight":
            names[id(node)] = "@" + node.attrs["name"]
            continue
        if node.op == "input":
            continue
        names[id(node)] = f"%{counter}"
        counter += 1
        args = ", ".join(names[id(i)] for i in node.inputs)
        attrs = f" {dict(sorted(node.attrs.items()))!r}" if node.attrs else ""
        loc = f"  # {node.loc}" if node.loc else ""
        lines.append(f"  {names[id(node)]} = {node.op}({args}){attrs} : {node.type}{loc}")
    lines.append("  return " + ", ".join(names[id(o)] for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


_HEADER = re.compile(r"^graph @(\S+)\((.*)\) \{$")
_NODE = re.compile(r"^(%\S+) = ([\w.]+)\(([^)]*)\)(.*)$")


class ParseError(ValueError):
    pass


def parse_graph(text: str, weights: dict[str, np.ndarray] | None = None) -> Graph:
    """Parse the text form. Weights not given are filled with zeros of their declared type."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    header = _HEADER.match(lines[0]) if lines else None
    if not header or lines[-1] != "}":
        raise ParseError("expected 'graph @name(...) {' ... '}'")
    values: dict[str, Node] = {}
    inputs = []
    for param in filter(None, (p.strip() for p in header.group(2).split(", %"))):
        name, _, type_text = param.lstrip("%").partition(": ")
        node = Node("input", (), {"name": name}, TensorType.parse(type_text))
        values["%" + name] = node
        inputs.append(node)
    held = dict(weights or {})
    outputs = None
    for lineno, line in enumerate(lines[1:-1], start=2):
        if line.startswith("@"):
            name, _, type_text = line[1:].partition(" : ")
            type_text, _, layout = type_text.partition(" ")
            ttype = TensorType.parse(type_text)
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
    try:
        attrs = ast.literal_eval(attrs_text.strip()) if attrs_text.strip() else {}
    except (ValueError, SyntaxError) as err:
        raise ParseError(f"line {lineno}: bad attributes {attrs_text.strip()!r}: {err}") from None
    return name, Node(op, inputs, attrs, TensorType.parse(type_text), loc)


def _lookup(values: dict[str, Node], name: str, lineno: int) -> Node:
    try:
        return values[name]
    except KeyError:
        raise ParseError(f"line {lineno}: {name} is used before it is defined") from None
