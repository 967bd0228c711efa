"""ONNX -> IR.

    graph = import_onnx("model.onnx")            # or an onnx.ModelProto

1. Load and validate: the file is parsed (a truncated or corrupt file is one clear error), the default-domain
   opset must be in 14–21, external-data weights must exist beside the model, then `onnx.checker.check_model`
   and `onnx.shape_inference.infer_shapes` (strict) run before anything is translated (`onnx_load.py`).
2. Every node is translated in order by the table in `onnx_ops.py` (shape and indexing ops: `onnx_shape_ops.py`).
   A value is either *static* (a `Const`, `onnx_values.py`: a numpy array known at import time — initializers,
   Constant nodes, and everything computed only from them and from shapes) or *dynamic* (an IR `Node`). Static
   values are folded with the IR op table's own numpy references, so the Shape -> Gather -> Unsqueeze -> Concat
   chains that exporters emit disappear. Shapes may hold the symbolic sequence length: shape arrays are then
   object arrays of sympy expressions (`seq`, `2*seq`, ...), which the IR accepts as dims only when they are a
   plain name or an int. Tensors whose elements are all equal but whose shape is symbolic (attention masks built
   from `ones_like(ids)`) become the IR's `full`, and stay `full` through elementwise, gather and shape ops.
3. Dim 1 of a graph input with a `dim_param` is named `seq` (`seq_dim_name`); other named dims keep their name.
4. `MatMul(x, W[k, n])` with a constant W becomes `linear(x, @name)` holding Wᵀ [n, k] (the IR's [out, in]
   layout, what gated-MLP detection matches), or the weight W itself when W is `Transpose(@w)`.

Names and locations (`onnx_names.py`): node locations are module paths, from the dynamo exporter's `name_scopes`
metadata (plus the source file:line of its stack trace) or from the TorchScript exporter's node names
(`/model/layers.0/mlp/gate_proj/MatMul` -> `model.layers.0.mlp.gate_proj`). A wrapper module that only holds the
model (e.g. `hf.CausalLMLogits`, attribute `model`) is dropped from paths and weight names, as the torch frontend
does with `actsparse_prefix`; pass `prefix=` to choose explicitly. Initializers keep their names; anonymous ones
(`onnx::MatMul_12`, `val_7`) used as projection weights are named `<module>.weight`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Graph, Node, TensorType, op_def, verify
from ..ir.types import np_dtype
from .errors import FrontendError
from .onnx_load import OnnxImportError, load_model
from .onnx_names import is_anonymous, node_location, sanitize, wrapper_prefix
from .onnx_ops import HANDLERS, attributes
from .onnx_values import ONNX_DTYPES, Const, fold, literal, make_const

CONST_MAX = 16  # static tensors up to this many elements become `constant` nodes, larger ones weights


def import_onnx(model, *, seq_dim_name: str = "seq", prefix: str | None = None) -> Graph:
    """Import an ONNX model (path or `onnx.ModelProto`) into a verified IR graph.

    `prefix` is a module-path prefix to drop from locations and weight names (None: a wrapper holding the
    whole model is detected and dropped). Raises `OnnxImportError` for unreadable or invalid models and
    `UnsupportedOpError` naming the first unsupported node.
    """
    proto, source = load_model(model)
    return OnnxImporter(proto, source, seq_dim_name, prefix).run()


# --- the importer ---------------------------------------------------------------------------------------
class OnnxImporter:
    def __init__(self, proto, source: str, seq_dim_name: str = "seq", prefix: str | None = None):
        import sympy

        self.sympy = sympy
        self.proto, self.source = proto, source
        self.opset = {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"]
        self.seq_dim_name = seq_dim_name
        self.values: dict[str, Node | Const] = {}
        self.symbols: dict[str, Any] = {}  # IR dim name -> sympy Symbol
        self.params: dict[str, str] = {}  # ONNX dim_param -> IR dim name
        self.weights: dict[str, np.ndarray] = {}
        self._materialized: dict = {}  # id(Const) (or (kind, id)) -> (the Const, its IR node)
        self.transposed: dict[int, tuple] = {}  # id(Transpose(c)) of a static 2-d c -> (that result, c)
        self.locations = [node_location(n) for n in proto.graph.node]
        if prefix is None:
            prefix = wrapper_prefix([m for m, _ in self.locations], [t.name for t in proto.graph.initializer])
        self.prefix = prefix + "." if prefix else ""
        self.module = self.loc = ""
        self.onnx_node, self.index = None, -1
        self.inferred = {v.name: v.type for v in (*proto.graph.value_info, *proto.graph.output)}

    # --- driver -----------------------------------------------------------------------------------------
    def run(self) -> Graph:
        from onnx import numpy_helper

        graph = self.proto.graph
        for tensor in graph.initializer:  # (the proto is our own copy from shape inference)
            try:
                array = np.asarray(numpy_helper.to_array(tensor), order="C")
            except (ValueError, TypeError, KeyError) as err:  # data of another size or type than declared
                raise OnnxImportError(f"{self.source}: initializer {tensor.name} is malformed "
                                      f"({type(err).__name__}: {str(err)[:160]})") from None
            self.values[tensor.name] = Const(array, self.onnx_dtype(tensor.data_type, tensor.name), tensor.name)
            tensor.ClearField("raw_data")  # the array holds the bytes now: do not keep two copies
        inputs = [self._input(v) for v in graph.input if v.name not in self.values]
        for index, onnx_node in enumerate(graph.node):
            self.onnx_node, self.index = onnx_node, index
            self.module, source = self.locations[index]
            self.module = self.strip(self.module)
            self.loc = f"{self.module or '<root>'} ({source})" if source else self.module
            args = [self.value(name) if name else None for name in onnx_node.input]
            results = HANDLERS[onnx_node.op_type](self, onnx_node, args, attributes(onnx_node))
            results = results if isinstance(results, (list, tuple)) else [results]
            for name, result in zip(onnx_node.output, results, strict=False):
                if name and result is not None:
                    self._check_inferred(name, result)
                    if isinstance(result, Const) and not result.name:
                        result.name = name
                    self.values[name] = result
        self.onnx_node, self.module, self.loc = None, "", ""
        outputs = [self.node(self.value(o.name)) for o in graph.output]
        out = Graph(inputs, outputs, self.weights)
        return verify(out.with_outputs(out.outputs))

    def value(self, name: str) -> Node | Const:
        try:
            return self.values[name]
        except KeyError:
            raise self.error(f"reads {name!r}, which no supported node produced (an unsupported extra output "
                             "of an earlier node?)") from None

    def _input(self, value_info) -> Node:
        tensor_type = value_info.type.tensor_type
        dims = []
        for axis, d in enumerate(tensor_type.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(self._symbol_name(d.dim_param, axis))
            else:
                raise OnnxImportError(f"{self.source}: input {value_info.name} has an unnamed dynamic dim {axis}; "
                                      "export with named dynamic axes (e.g. dynamic_axes={'input_ids': {1: "
                                      "'seq'}}) or with static shapes")
        node = Node("input", (), {"name": sanitize(value_info.name)},
                    TensorType(tuple(dims), self.onnx_dtype(tensor_type.elem_type, value_info.name)))
        self.values[value_info.name] = node
        return node

    def _symbol_name(self, param: str, axis: int) -> str:
        """ONNX dim_param -> IR dim name: dim 1's is `seq_dim_name`, others keep theirs; one param, one name."""
        if param not in self.params:
            name = self.seq_dim_name if axis == 1 and self.seq_dim_name not in self.symbols else sanitize(param)
            if name in self.symbols:
                name = f"{name}_{len(self.symbols)}"
            self.params[param] = name
            self.symbols[name] = self.sympy.Symbol(name, integer=True, positive=True)
        return self.params[param]

    def _check_inferred(self, name: str, result) -> None:
        """Our result type against ONNX shape inference: rank and every dim both sides know statically."""
        ttype = self.inferred.get(name)
        if ttype is None or not ttype.HasField("tensor_type") or not ttype.tensor_type.HasField("shape"):
            return
        theirs = [d.dim_value if d.HasField("dim_value") else None for d in ttype.tensor_type.shape.dim]
        ours = result.shape
        if len(theirs) != len(ours) or any(isinstance(a, int) and b is not None and a != b
                                           for a, b in zip(ours, theirs, strict=False)):
            raise self.error(f"internal: computed shape {list(ours)} for {name!r} but ONNX shape inference says "
                             f"{['?' if d is None else d for d in theirs]} (a frontend bug: please report it)")

    # --- names, errors ----------------------------------------------------------------------------------
    def strip(self, path: str) -> str:
        if self.prefix and path.startswith(self.prefix):
            return path[len(self.prefix):]
        return "" if self.prefix and path == self.prefix[:-1] else path

    def error(self, message: str) -> FrontendError:
        if self.onnx_node is None:
            return FrontendError(f"{self.source}: {message}")
        n = self.onnx_node
        return FrontendError(f"{self.source}: ONNX node {n.name or '<unnamed>'!r} ({n.op_type}, index "
                             f"{self.index}) in `{self.module or '<root>'}`: {message}")

    def onnx_dtype(self, onnx_type: int, what: str) -> str:
        try:
            return ONNX_DTYPES[onnx_type]
        except KeyError:
            import onnx

            name = onnx.TensorProto.DataType.Name(onnx_type) if onnx_type in onnx.TensorProto.DataType.values() \
                else str(onnx_type)
            raise self.error(f"{what} has element type {name}, which the IR does not support (supported: float, "
                             "float16, double, int64, int32, bool)") from None

    # --- symbolic dims ------------------------------------------------------------------------------------
    def sym(self, d):
        """IR dim -> int or sympy Symbol."""
        return d if isinstance(d, int) else self.symbols[d]

    def dim(self, expr):
        """int / sympy expression -> IR dim (an int or a symbol's name)."""
        if isinstance(expr, (int, np.integer)):
            return int(expr)
        expr = self.sympy.sympify(expr)
        if expr.is_Integer:
            return int(expr)
        if expr.is_Symbol and expr.name in self.symbols:
            return expr.name
        raise self.error(f"the size `{expr}` is an expression of the symbolic dims, which IR shapes cannot hold "
                         "(they only name dims); export the model with static shapes")

    def shape_of(self, v) -> tuple:
        return tuple(v.shape)

    def sym_shape(self, v) -> list:
        return [self.sym(d) for d in self.shape_of(v)]

    def static(self, v, what: str) -> Const:
        if not isinstance(v, Const):
            raise self.error(f"{what} must be known at import time (a constant or computed from shapes), but it "
                             "depends on the model's inputs; export with static shapes")
        return v

    def ints(self, v, what: str) -> list:
        """A static 0/1-d integer tensor -> list of ints / sympy expressions."""
        c = self.static(v, what)
        return [x if not isinstance(x, (np.integer, int)) else int(x) for x in c.array.reshape(-1).tolist()]

    def shape_const(self, dims) -> Const:
        return make_const([self.sympy.sympify(d) if not isinstance(d, int) else d for d in dims], "i64")

    # --- building IR ----------------------------------------------------------------------------------------
    def node(self, v) -> Node:
        """A value as an IR node: static tensors become `constant` (small) or weights (large)."""
        if isinstance(v, Node):
            return v
        cached = self._materialized.get(id(v))
        if cached is not None:
            return cached[1]
        if v.symbolic:
            raise self.error(f"the symbolic size {v.array.tolist()} is used as a tensor value, which the IR cannot "
                             "express; export the model with static shapes")
        if v.array.size <= CONST_MAX:
            node = Node("constant", (), {"value": literal(v.array, v.dtype)}, TensorType(v.shape, v.dtype), self.loc)
        else:
            node = self.weight(self.strip(sanitize(v.name or "const")), v.array, v.dtype)
        self._materialized[id(v)] = (v, node)  # the Const is kept alive so its id stays unique
        return node

    def weight(self, name: str, array: np.ndarray, dtype: str) -> Node:
        """A weight node holding `array` under `name` (a suffix makes it unique if another array has it)."""
        name = sanitize(name)
        base, n = name, 1
        while name in self.weights and not _same(self.weights[name], array):
            name, n = f"{base}_{n}", n + 1
        self.weights[name] = array
        return Node("weight", (), {"name": name}, TensorType(array.shape, dtype))

    def weight_name(self, c: Const, kind: str = "weight") -> str:
        """An initializer's own name, or `<module>.<kind>` for anonymous ones (`onnx::MatMul_7`, `val_3`)."""
        if (not c.name or is_anonymous(c.name)) and self.module:
            return f"{self.module}.{kind}"
        return self.strip(sanitize(c.name or "const"))

    def projection_weight(self, w: Const) -> Node:
        """The [out, in] weight for `x @ w` (w: [in, out]): w's transpose source, or wᵀ under a module name."""
        source = self.transposed.get(id(w))
        if source is not None:
            return self.node_as_weight(source[1])
        cached = self._materialized.get(("T", id(w)))
        if cached is None:
            node = self.weight(self.weight_name(w), np.ascontiguousarray(w.array.T), w.dtype)
            cached = self._materialized[("T", id(w))] = (w, node)
        return cached[1]

    def node_as_weight(self, c: Const, kind: str = "weight") -> Node:
        """`c` as a weight node (never a `constant`), named by `weight_name`."""
        cached = self._materialized.get(("W", id(c)))
        if cached is None:
            cached = self._materialized[("W", id(c))] = (c, self.weight(self.weight_name(c, kind), c.array, c.dtype))
        return cached[1]

    def emit(self, op: str, inputs, ttype: TensorType | None = None, **attrs) -> Node:
        inputs = [self.node(i) for i in inputs]
        if ttype is None:
            ttype = self.infer(op, inputs, attrs)
        return Node(op, tuple(inputs), attrs, ttype, self.loc)

    def infer(self, op: str, inputs, attrs) -> TensorType:
        opdef = op_def(op)
        defaults = {k: v for k, v in opdef.attrs.items() if k not in attrs}
        types = [TensorType(i.shape, i.dtype) for i in inputs]
        try:
            ttype = opdef.infer(types, {**defaults, **attrs})
        except (TypeError, ValueError, IndexError) as err:
            raise self.error(f"{op} on {[str(t) for t in types]}: {err}") from None
        odd = [d for d in ttype.shape if isinstance(d, str) and d not in self.symbols]
        if odd:  # e.g. concat along the sequence gives `seq+seq`
            raise self.error(f"{op} gives the size `{odd[0]}`, an expression of the symbolic dims, which IR shapes "
                             "cannot hold (they only name dims); export the model with static shapes")
        return ttype

    def full(self, value, shape: tuple, dtype: str):
        """A tensor of one repeated value: static if its shape is, else the IR's `full`."""
        if all(isinstance(d, int) for d in shape):
            return Const(np.full(shape, value, dtype=np_dtype(dtype)), dtype)
        return Node("full", (), {"shape": tuple(shape), "value": literal(np.asarray(value), dtype)},
                    TensorType(tuple(shape), dtype), self.loc)

    def op(self, op: str, inputs, **attrs):
        """Apply IR op `op`: folded at import time when every input is static, kept uniform (`full`) when every
        input is, emitted as an IR node otherwise."""
        ttype = self.infer(op, inputs, attrs)
        if all(isinstance(i, Const) for i in inputs) and all(isinstance(d, int) for d in ttype.shape):
            return fold(self, op, inputs, attrs, ttype)
        if op == "mul":  # x * 1 -> x (exact in floating point), as exporters write for a scale of 1
            for x, one in (inputs, inputs[::-1]):
                if isinstance(one, Const) and one.array.size == 1 and self.uniform(one) == (1,) \
                        and isinstance(x, Node) and x.type == ttype:
                    return x
        value = self._uniform_result(op, inputs, attrs)
        if value is not None:
            return self.full(value[0], ttype.shape, ttype.dtype)
        return self.emit(op, inputs, ttype, **attrs)

    def uniform(self, v):
        """(value,) if every element of `v` is the same known value, else None."""
        if isinstance(v, Const):
            u = v.uniform()
            return None if u is None else (u,)
        if v.op == "full":
            return (v.attrs["value"],)
        if v.op == "constant" and np.ndim(v.attrs["value"]) == 0:
            return (v.attrs["value"],)
        return None

    def _uniform_result(self, op: str, inputs, attrs):
        opdef = op_def(op)
        if opdef.elementwise:
            values = [self.uniform(i) for i in inputs]
            if any(v is None for v in values):
                return None
            defaults = {k: v for k, v in opdef.attrs.items() if k not in attrs}
            arrays = [np.asarray(v[0], dtype=np_dtype(i.dtype)) for v, i in zip(values, inputs, strict=False)]
            out = opdef.reference(*arrays, {**defaults, **attrs}, {})
            return (np.asarray(out).astype(np_dtype(self.infer(op, inputs, attrs).dtype)).item(),)
        if op in ("reshape", "expand", "permute", "slice", "index_select"):
            return self.uniform(inputs[0])
        if op == "concat":
            values = {self.uniform(i) for i in inputs}
            return values.pop() if len(values) == 1 and None not in values else None
        return None

    def cast(self, v, dtype: str):
        return v if v.dtype == dtype else self.op("cast", [v], dtype=dtype)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """The same weight: one array, or equal ones (an exporter's transposed copy of a tied weight)."""
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))


__all__ = ["OnnxImportError", "OnnxImporter", "import_onnx"]
