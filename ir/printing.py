"""The text form of a graph, one node per line (the parser is `printer.parse_graph`). Reads nodes by their fields
only, so the graph module can print itself without an import cycle."""

from __future__ import annotations


def print_graph(graph) -> str:
    names: dict[int, str] = {}
    for node in graph.inputs:
        names[id(node)] = "%" + node.attrs["name"]
    params = ", ".join(f"{names[id(n)]}: {n.type}" for n in graph.inputs)
    lines = [f"graph @{graph.name}({params}) {{"]
    weight_nodes = {n.attrs["name"]: n for n in graph.nodes if n.op == "weight"}
    for name in sorted(weight_nodes):
        lines.append(f"  @{name} : {weight_nodes[name].type}")
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
