"""The walk of one exported program (torch.export's FX graph) into a verified IR graph: `Importer`.

    graph = Importer(program, prefix).run()

1. Parameters, buffers and lifted tensor constants become graph weights named by their state-dict FQN (a
   wrapper module may set `actsparse_prefix` to the name of the submodule it wraps; that prefix is dropped, see
   `hf.CausalLMLogits`). Tensors that alias one another (tied embeddings) share one weight.
2. The FX graph is walked in order and each op is mapped by the table in `torch_ops.py`. Higher-order wrappers
   (`wrap_with_set_grad_enabled`, `wrap_with_autocast`) are inlined; symbolic ints stay torch `SymInt`s until a
   handler needs them as an IR dim (`Importer.dim`).
3. Every result is checked against the shape torch recorded (a mismatch is a frontend bug and says so); a dtype
   difference gets a `cast`, so torch's type promotion is followed exactly. The graph is verified at the end,
   and checked to refuse the lengths torch's export's guards on the symbolic lengths stop holding at
   (torch_length_guards.py).

Each IR node's `loc` is "<module path> (<file>:<line>)": the innermost module from the FX node's
`nn_module_stack` and the last frame of its stack trace outside torch itself. Shared by the torch.export frontend
(torch_export.py) and the torch-mlir one (torch_mlir.py).
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import torch
from torch.export.graph_signature import InputKind

from ..ir import Graph, Node, TensorType, op_def, verify
from ..ir.limits import LEAST
from ..ir.types import is_float, np_dtype
from .errors import FrontendError, SymbolicShapeError, UnsupportedOpError
from .torch_dims import sympy_dim
from .torch_inplace import DATA_DEPENDENT
from .torch_length_guards import check_guards_bounded, read_guards
from .torch_ops import lookup

TORCH_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.float64: "f64", torch.int64: "i64",
                torch.int32: "i32", torch.bool: "bool", torch.uint8: "u8"}
COMPLEX_PARTS = {torch.complex64: "f32", torch.complex128: "f64"}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)


def op_name(target) -> str:
    """`aten.add.Tensor` for aten overloads, `wrap_with_autocast` for higher-order ops, `getitem` for Python."""
    if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return str(target)
    return getattr(target, "__name__", str(target))


class Importer:
    """Walks one exported program; the handlers in `torch_ops` call back into it to build nodes."""

    def __init__(self, program, prefix: str = ""):
        self.program = program
        self.prefix = prefix + "." if prefix else ""
        self.symbols: dict = {}  # sympy symbol -> IR dim name
        self.bounds: dict[str, tuple[int, int]] = {}  # IR dim name -> (least, most) the caller guarantees
        self.facts: dict[str, int] = {}  # division atoms the export fixed (a chunk count: torch_dims.guard_facts)
        self.assumed: dict[str, int] = {}  # dim name -> most its export's equalities hold for (guard_equalities)
        self.least: dict[str, int] = {}  # dim name -> least length the program holds for (torch_length_guards)
        self.masked_rows: dict = {}  # unbacked row count of an x[mask] -> its mask (torch_masked_rows.py)
        self.weights: dict[str, np.ndarray] = {}
        self._weight_names: dict[tuple, str] = {}  # storage identity -> weight name (tied weights share one)
        self._weight_nodes: dict[str, Node] = {}
        self.module, self.source = "", ""  # where the node being translated comes from
        self._envs: list[dict] = []  # FX node -> IR value, one per (nested) graph being walked

    # --- driver -----------------------------------------------------------------------------------------
    def run(self) -> Graph:
        gm = self.program.graph_module
        self._check_supported(gm)
        env, inputs = {}, []
        placeholders = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
        for spec in self.program.graph_signature.input_specs:
            fx_node = placeholders[spec.arg.name]
            self.module, self.source = "", ""
            if spec.kind == InputKind.USER_INPUT:
                self._name_symbols(fx_node.meta["val"])
                read_guards(self, fx_node.meta["val"])
                ttype = self.tensor_type(fx_node.meta["val"])
                least = {d: n for d, n in self.least.items() if d in ttype.shape}  # checked before each call
                env[fx_node] = Node("input", (), {"name": fx_node.name, **({LEAST: least} if least else {})}, ttype)
                inputs.append(env[fx_node])
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                env[fx_node] = self._weight(spec.target)
            else:
                raise FrontendError(f"exported input {spec.arg.name} of kind {spec.kind.name} is not supported")
        outputs = self.walk(gm, env)
        bad = [i for i, o in enumerate(outputs) if not isinstance(o, Node)]
        if bad:
            raise FrontendError(f"model outputs {bad} are not tensors; return only tensors (e.g. the logits)")
        graph = verify(Graph(inputs, outputs, self.weights).with_outputs(outputs))  # drops weights nothing reads
        check_guards_bounded(self, graph)
        return graph

    def walk(self, gm: torch.fx.GraphModule, env: dict) -> list:
        self._envs.append(env)
        try:
            return self._walk(gm, env)
        finally:
            self._envs.pop()

    def rebind(self, fx_node, value) -> None:
        """An in-place op updated `fx_node`: later reads of it see `value`."""
        self._envs[-1][fx_node] = value

    def _walk(self, gm: torch.fx.GraphModule, env: dict) -> list:
        for fx_node in gm.graph.nodes:
            if fx_node.op == "get_attr":
                env[fx_node] = getattr(gm, fx_node.target)
            elif fx_node.op == "call_function":
                val = fx_node.meta.get("val")
                if is_symbolic(fx_node):  # size arithmetic: keep torch's SymInt, read it with `dim`
                    env[fx_node] = val
                    continue
                self._locate(fx_node)
                args, kwargs = torch.fx.node.map_arg((fx_node.args, fx_node.kwargs), env.__getitem__)
                result = lookup(op_name(fx_node.target))(self, fx_node, *args, **kwargs)
                env[fx_node] = self._check(fx_node, val, result)
            elif fx_node.op == "output":
                return [env[a] if isinstance(a, torch.fx.Node) else a for a in fx_node.args[0]]
            elif fx_node.op != "placeholder":
                raise FrontendError(f"FX node kind {fx_node.op} ({fx_node.target}) is not supported")
        raise FrontendError("exported graph has no output")

    def inline(self, gm: torch.fx.GraphModule, operands) -> tuple:
        """Translate a higher-order op's body in place, its placeholders bound to `operands`."""
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        outer = self.module
        outputs = self.walk(gm, dict(zip(placeholders, operands, strict=True)))
        self.module = outer
        return tuple(outputs)

    def _check_supported(self, gm) -> None:
        missing: dict[str, torch.fx.Node] = {}
        for fx_node in _all_nodes(gm):
            if fx_node.op == "call_function" and not is_symbolic(fx_node):
                name = op_name(fx_node.target)
                if lookup(name, None) is None:
                    missing.setdefault(name, fx_node)
        if missing:
            name, fx_node = next(iter(missing.items()))
            self._locate(fx_node)
            others = f"also unsupported: {', '.join(list(missing)[1:])}" if len(missing) > 1 else ""
            if name.startswith(DATA_DEPENDENT):
                others = ("its result size depends on tensor values, which IR shapes cannot express. A mixture of "
                          "experts that gathers each expert's tokens (nonzero / torch.where(mask) + index_add_) "
                          "can run every expert on every token weighted by its routing weight instead, as "
                          "actsparse.frontends.moe does for transformers models" + (f"; {others}" if others else ""))
            raise UnsupportedOpError(name, self.module, self.source, others)

    def _check(self, fx_node, val, result):
        """The handler's result against torch's record: same shape (else a frontend bug), dtype cast if needed."""
        if isinstance(val, torch.Tensor):
            if not isinstance(result, Node):
                raise self.error(f"internal: {op_name(fx_node.target)} gave {type(result).__name__}, not a tensor")
            want = self.tensor_type(val)
            if result.shape != want.shape:
                raise self.error(f"internal: {op_name(fx_node.target)} gave shape {list(result.shape)} but torch "
                                 f"computed {list(want.shape)} (a frontend bug: please report it)")
            return self.cast(result, want.dtype)
        if isinstance(val, (tuple, list)) and isinstance(result, tuple):
            return tuple(self._check(fx_node, v, r) if r is not None else r for v, r in zip(val, result, strict=True))
        return result

    # --- where a node comes from --------------------------------------------------------------------------
    def _locate(self, fx_node) -> None:
        stack = [v for k, v in (fx_node.meta.get("nn_module_stack") or {}).items() if not k.startswith("_empty")]
        if stack:
            path = stack[-1][0]
            self.module = path[len(self.prefix):] if path.startswith(self.prefix) else path
            self.module = "" if self.module == self.prefix[:-1] else self.module
        frames = [(f, line) for f, line in _FRAME.findall(fx_node.meta.get("stack_trace") or "")
                  if not f.startswith(_TORCH_DIR)]
        self.source = f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""

    @property
    def loc(self) -> str:
        if not self.source:
            return self.module
        return f"{self.module or '<root>'} ({os.path.basename(self.source)})"

    def error(self, message: str, kind: type = FrontendError) -> FrontendError:
        where = f"{self.module or '<root>'}" + (f" at {self.source}" if self.source else "")
        return kind(f"{where}: {message}")

    def symbolic_error(self, message: str) -> SymbolicShapeError:
        """A size or slice of the symbolic seq the IR cannot express (import_torch retries with static shapes)."""
        return self.error(message, SymbolicShapeError)

    # --- types, dims, weights -----------------------------------------------------------------------------
    def _name_symbols(self, val) -> None:
        for d in val.shape:
            expr = d.node.expr if isinstance(d, torch.SymInt) else None
            if expr is not None and expr.is_Symbol and expr not in self.symbols:
                self.symbols[expr] = "seq" if not self.symbols else f"dyn{len(self.symbols)}"

    def dim(self, d):
        """An int or symbolic size as an IR dim: an int, or the name of a symbol such as `seq`."""
        if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            return int(d)
        if isinstance(d, torch.SymInt):
            expr = d.node.expr
            if expr.is_Integer:
                return int(expr)
            if expr in self.symbols:
                return self.symbols[expr]
            text = str(expr.subs(self.symbols))
            if any(s not in self.symbols for s in expr.free_symbols):  # an unbacked symbol: x.item(), nonzero()
                raise self.error(f"the size `{text}` depends on tensor values, which IR shapes cannot express; "
                                 "compute it from shapes or constants instead")
            dim = sympy_dim(expr, self.symbols, self.bounds, self.facts)
            if dim is not None:
                return dim
            raise self.symbolic_error(f"the size `{text}` is a symbolic expression, which IR shapes cannot express "
                                      "(they name dims, sums of them and floor divisions by constants); import with "
                                      "dynamic_seq=False to "
                                      "specialise the sequence length")
        raise self.error(f"expected a size, got {d!r}")

    def shape(self, val) -> tuple:
        return tuple(self.dim(d) for d in val.shape)

    def dtype(self, val) -> str:
        try:
            return TORCH_DTYPES[val.dtype]
        except KeyError:
            raise self.error(f"dtype {val.dtype} has no IR equivalent; convert the model (e.g. model.float())") \
                from None

    def tensor_type(self, val) -> TensorType:
        if val.is_complex():  # complex tensors are real pairs on a last axis of 2 (torch.view_as_real's layout)
            return TensorType((*self.shape(val), 2), COMPLEX_PARTS.get(val.dtype) or self.dtype(val))
        return TensorType(self.shape(val), self.dtype(val))

    def out(self, fx_node) -> TensorType:
        """The type torch recorded for this node's (tensor) result."""
        return self.tensor_type(fx_node.meta["val"])

    def _weight(self, target: str) -> Node:
        tensor = self.program.state_dict.get(target)
        tensor = self.program.constants[target] if tensor is None else tensor
        tensor = tensor.detach()
        if tensor.ndim == 0:
            return self.const(tensor.item(), self.dtype(tensor))
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float16):
            raise FrontendError(f"weight {target} is {tensor.dtype}; import float32 or float16 models "
                                "(call model.float() or model.half())")
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        name = self._weight_names.setdefault(key, target[len(self.prefix):] if target.startswith(self.prefix)
                                             else target)
        if name not in self.weights:
            ttype = TensorType(tuple(tensor.shape), self.dtype(tensor))
            self.weights[name] = np.ascontiguousarray(tensor.cpu().numpy())
            self._weight_nodes[name] = Node("weight", (), {"name": name}, ttype)
        return self._weight_nodes[name]

    # --- building nodes -----------------------------------------------------------------------------------
    def emit(self, op: str, inputs, **attrs) -> Node:
        """A node of `op`, its type inferred by the op table (so the graph verifies by construction)."""
        opdef = op_def(op)
        defaults = {k: v for k, v in opdef.attrs.items() if k not in attrs}
        try:
            ttype = opdef.infer([i.type for i in inputs], {**defaults, **attrs})
        except (TypeError, ValueError, IndexError) as err:
            raise self.error(f"internal: {op} on {[str(i.type) for i in inputs]}: {err}") from None
        return Node(op, tuple(inputs), attrs, ttype, self.loc)

    def source_node(self, op: str, ttype: TensorType, **attrs) -> Node:
        return Node(op, (), attrs, ttype, self.loc)

    def const(self, value, dtype: str) -> Node:
        """A 0-d constant; ±inf becomes the dtype's extreme value (the IR text form cannot spell inf). A size
        (`SymInt`, such as a compressed length `seq//4` a model fills an index with) is computed from the dims."""
        if isinstance(value, torch.SymInt) and not isinstance(self.dim(value), int):
            return self.tensor(value, dtype)
        return self.source_node("constant", TensorType((), dtype), value=literal(value, dtype))

    def full(self, shape: tuple, dtype: str, value) -> Node:
        """A tensor filled with `value` (a 0-d constant when the shape is empty; a symbolic size broadcast)."""
        shape = tuple(shape)
        if not shape or isinstance(value, torch.SymInt) and not isinstance(self.dim(value), int):
            scalar = self.const(value, dtype)
            return self.emit("expand", [scalar], shape=shape) if shape else scalar
        return self.source_node("full", TensorType(shape, dtype), shape=shape, value=literal(value, dtype))

    def size_value(self, dim, dtype: str) -> Node:
        """An IR dim (int or symbolic, such as `seq` or `4*seq`) as a 0-d tensor of `dtype`: a symbolic one is
        the count of ones of that length (positions from the sequence length, strides of a flat index)."""
        if isinstance(dim, int):
            return self.const(dim, dtype)
        return self.cast(self.emit("sum", [self.full((dim,), "i64", 1)], axes=(0,)), dtype)

    def cast(self, x: Node, dtype: str) -> Node:
        return x if x.dtype == dtype else self.emit("cast", [x], dtype=dtype)

    def expanded(self, x: Node, shape: tuple) -> Node:
        """x broadcast to `shape` (x itself where it has that shape already)."""
        return x if x.shape == tuple(shape) else self.emit("expand", [x], shape=tuple(shape))

    def arange(self, n, dtype: str = "i64") -> Node:
        """0, 1, .., n-1 (n an IR dim)."""
        return self.source_node("arange", TensorType((n,), dtype), end=n)

    def tiled(self, x: Node, split: tuple, wide: tuple, shape: tuple) -> Node:
        """x reshaped to `split` (size-1 axes where copies go), broadcast to `wide`, reshaped to `shape`: repeat and
        repeat_interleave."""
        return self.emit("reshape", [self.emit("expand", [self.emit("reshape", [x], shape=split)], shape=wide)],
                         shape=shape)

    def tensor(self, value, dtype: str) -> Node:
        """A tensor operand of `dtype`: nodes are cast, Python scalars (and static sizes) become constants."""
        if isinstance(value, Node):
            return self.cast(value, dtype)
        if isinstance(value, torch.SymInt):
            value = self.dim(value)
            if isinstance(value, str):
                return self.size_value(value, dtype)
        if isinstance(value, (bool, int, float)):
            return self.const(value, dtype)
        raise self.error(f"expected a tensor or a number, got {type(value).__name__}")


def literal(value, dtype: str):
    """A Python scalar of the IR dtype's kind, finite for floats (±inf -> ±finfo.max)."""
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)) and not value.node.expr.is_number:
        # int() of a symbolic size is its example value: the graph would be right at the example's length only
        raise FrontendError(f"internal: the symbolic value {value} was about to be taken as a constant")
    if dtype == "bool":
        return bool(value)
    if not is_float(dtype):
        return int(value)
    value = float(value)
    return math.copysign(float(np.finfo(np_dtype(dtype)).max), value) if math.isinf(value) else value


def is_symbolic(fx_node) -> bool:
    """Size arithmetic (`sym_size`, `s0 * 4`, ...): a scalar result, not a tensor op."""
    name = op_name(fx_node.target)
    return isinstance(fx_node.meta.get("val"), _SYMBOLIC) and (
        name.startswith("aten.sym_") or not isinstance(fx_node.target, torch._ops.OpOverload))


def graph_modules(gm: torch.fx.GraphModule):
    yield gm
    for sub in gm.children():
        if isinstance(sub, torch.fx.GraphModule):
            yield from graph_modules(sub)


def _all_nodes(gm: torch.fx.GraphModule):
    for module in graph_modules(gm):
        yield from module.graph.nodes
