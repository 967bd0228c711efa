"""The text form of a graph, one node per line (the parser is `printer.parse_graph`). Reads nodes by their fields
only, so the graph module can print itself without an import cycle."""

from __future__ import annotations


def print_graph(graph) -> str:
    names: dict[int, str] = {}
    for node in graph.inputs:
        names[id(node)] = "%" + node.attrs["name"]
    params = ", ".join(f"{names[id(n)]}: {n.type}{_input_attrs(n)}" for n in graph.inputs)
    lines = [f"graph @{graph.name}({params}) {{"]
    weight_nodes = {n.attrs["name"]: n for n in graph.nodes if n.op == "weight"}
    for name in sorted(weight_nodes):
        layout = weight_nodes[name].attrs.get("layout", "dense")  # quantized storage (ir.quant), after the type
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


def _input_attrs(node) -> str:
    """An input's attributes besides its name (a dim's least size, ir/limits.py), after its type."""
    attrs = {k: v for k, v in sorted(node.attrs.items()) if k != "name"}
    return f" {attrs!r}" if attrs else ""
