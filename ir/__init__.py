"""actsparse's graph IR: one immutable node type, an op table, a verifier, text form, and a numpy interpreter."""

from .graph import Graph, Node, rewrite, topo_order, weight_node
from .interpreter import evaluate, weight_value
from .ops import OPS, op_def
from .printer import ParseError, parse_graph, print_graph
from .types import TensorType
from .verify import VerifyError, verify

__all__ = ["Graph", "Node", "OPS", "ParseError", "TensorType", "VerifyError", "evaluate", "op_def",
           "parse_graph", "print_graph", "rewrite", "topo_order", "verify", "weight_node",
           "weight_value"]
