"""torch-mlir (torch dialect) -> IR: `import_mlir` and the importer that walks @main.

    module = export_mlir(model, (input_ids,))                  # torch_mlir_export; or torch_mlir.fx.export_and_import
    graph = import_mlir(module)                                 # or import_mlir("model.mlir")
    graph = import_mlir(module, state_dict=model.state_dict())  # names for an export_and_import module

1. Load (`torch_mlir_load.py`): a torch-mlir `Module` or a .mlir file is parsed by the MLIR Python bindings shipped
   with torch-mlir; an unreadable file, a module without one public function (@main) or one lowered past the
   torch dialect is one clear `MlirImportError`.
2. Weights: every `torch.vtensor.literal(dense_resource<key>)` is a weight, its bytes read from the module's
   `dialect_resources` section (`torch_mlir_load.py`), its name the blob key when it is an FQN (`export_mlir`
   names them so), else the `state_dict=` entry with the same values, else the key (`torch_mlir_names.py`).
3. Every op of the function body is translated in order. `torch.constant.*`, `torch.prim.ListConstruct` and
   size arithmetic (`torch.aten.size.int`, `torch.aten.mul.int`, ...) become Python values (sizes of the
   symbolic dim are sympy expressions); `torch.aten.*` / `torch.prims.*` ops go through the same aten -> IR
   table as the torch.export frontend (`torch_ops.py`, keyed by `aten.<name>.<overload>`), their operands
   split into positional and keyword arguments by the op's torch schema, so an MLIR module and the FX graph it
   came from give the same IR. The tables of the ops that differ are in `torch_mlir_ops.py` (`VALUE_OPS`,
   `SCALAR_FNS`, `MLIR_OPS`: the handlers that read FX metadata have MLIR twins there).
4. `torch.aten.linear` arrives whole from `export_mlir` (it exports at torch.export's default level);
   torch-mlir's default decompositions (plain `export_and_import`) turn it into `view -> mm(x, permute(W)) ->
   view`, and batched matmuls into `view -> bmm -> view`: both are folded back (`linear`, `matmul`) so gated-MLP
   detection sees what it sees from torch.export.
5. Symbolic dims: with `torch.bind_symbolic_shape` ops (`export_mlir`, or `import_symbolic_shape_expressions=
   True`) each `?` gets its exact expression; the input's first symbol is named `seq` (then `dyn1`, ...). Without
   them every `?` is taken to be `seq` (what a causal LM exported with a dynamic sequence length has); results
   are checked against the shapes the op table infers, so a wrong guess is an error, not a wrong graph.

Locations: an IR node's `loc` is "<module path> (<file>:<line>)" like the torch frontend's; MLIR keeps no module
paths, so they are inferred from named weights and call stacks (`torch_mlir_names.py`).
"""

from __future__ import annotations

import re

import numpy as np

from ..ir import Graph, Node, TensorType, verify
from .errors import FrontendError, UnsupportedOpError
from .torch_importer import Importer
from .torch_mlir_load import (
    HINT,
    Loaded,
    MlirImportError,
    attr_string,
    dense_array,
    load_module,
    location_frames,
    resource_key,
)
from .torch_mlir_names import UNKNOWN, WeightNames, arg_names, infer_modules, name_weights, source_of, text_position
from .torch_mlir_ops import (
    MLIR_OPS,
    VALUE_OPS,
    MlirOp,
    constant_value,
    evaluate_scalar,
    has_handler,
    is_scalar_op,
    torch_target,
)
from .torch_ops import lookup

MLIR_DTYPES = {"f32": "f32", "f16": "f16", "f64": "f64", "si64": "i64", "si32": "i32", "i1": "bool"}
_VTENSOR = re.compile(r"^!torch\.vtensor<\[([^\]]*)\],(\w+)>$")


def import_mlir(module_or_path, *, state_dict=None, prefix: str | None = None) -> Graph:
    """A torch-dialect module (a `torch_mlir.ir.Module` or a .mlir file) as a verified IR graph.

    `state_dict` (e.g. `model.state_dict()`) names weights whose blobs torch-mlir named automatically; `prefix`
    is a module path to drop from names and locations (None: a wrapper holding the whole model is dropped).
    Raises `MlirImportError` for unreadable or non-torch modules, `UnsupportedOpError` naming the first op
    without a mapping and where it is, `FrontendError` for other failures.
    """
    loaded = load_module(module_or_path)
    return MlirImporter(loaded, state_dict, prefix).run()


class MlirImporter(Importer):
    """Walks the body of @main; the aten handlers of `torch_ops` build nodes through the inherited builders."""

    def __init__(self, loaded: Loaded, state_dict=None, prefix: str | None = None):
        import sympy

        self.sympy = sympy
        self.loaded = loaded
        self.func = loaded.func
        self.ops = [op.operation for op in self.func.regions[0].blocks[0].operations]
        self.op_frames = [location_frames(op.location) for op in self.ops]  # (file, line, col), innermost first
        self.state_dict = state_dict
        self.symbols: dict = {}  # sympy Symbol (its MLIR name, e.g. s27) -> IR dim name
        self.weights: dict[str, np.ndarray] = {}
        self._weight_nodes: dict[str, Node] = {}
        self._blob_arrays: dict[str, np.ndarray] = {}
        self.weight_names = WeightNames({}, set(), "")
        self.modules: list[str | None] = []  # the module path of every op (None: unknown)
        self.module = self.source = ""
        self.values: dict = {}  # MLIR Value -> IR node / Python value
        self.bindings: dict = {}  # MLIR Value -> tuple of sympy dims
        self.prefix = ""
        self._prefix_arg = prefix
        self.current: MlirOp | None = None

    # --- driver -----------------------------------------------------------------------------------------
    def run(self) -> Graph:
        self._scan_symbols()
        self.weight_names = name_weights(self.ops, self._blob_array, self.state_dict, self._prefix_arg)
        self.prefix = self.weight_names.prefix
        self.modules = infer_modules(self.ops, self.op_frames, self.weight_names.names, self.weight_names.known)
        self._check_supported()
        inputs = self._inputs()
        outputs = None
        for index, op in enumerate(self.ops):
            name = op.name
            self.current = MlirOp(op, name, index, torch_target(name))
            self._locate(index)
            if name == "func.return":
                outputs = [self.values[v] for v in op.operands]
                break
            results = self._translate(self.current)
            if op.results:
                results = results if len(op.results) > 1 else (results,)
                for value, result in zip(op.results, results, strict=True):
                    self.values[value] = result
        self.current, self.module, self.source = None, "", ""
        if outputs is None:
            raise MlirImportError(f"{self.loaded.source}: @main has no func.return (truncated file?)")
        bad = [i for i, o in enumerate(outputs) if not isinstance(o, Node)]
        if bad:
            raise FrontendError(f"{self.loaded.source}: model outputs {bad} are not tensors; return only tensors")
        graph = Graph(inputs, outputs, self.weights)
        return verify(graph.with_outputs(graph.outputs))

    def _translate(self, op: MlirOp):
        name = op.name
        if name in VALUE_OPS:
            return VALUE_OPS[name](self, op)
        if name.startswith("torch.constant."):
            return constant_value(op.op)
        if is_scalar_op(op.op):
            return evaluate_scalar(self, op)
        handler = MLIR_OPS.get(op.aten) or lookup(op.aten)
        args, kwargs = self._arguments(op)
        result = handler(self, op, *args, **kwargs)
        return self._check_results(op, result)

    def _check_supported(self) -> None:
        missing: dict[str, int] = {}
        for index, op in enumerate(self.ops):
            if not has_handler(op):
                missing.setdefault(op.name, index)
        if not missing:
            return
        name, index = next(iter(missing.items()))
        self._locate(index)
        others = f"also unsupported: {', '.join(list(missing)[1:])}" if len(missing) > 1 else ""
        position = text_position(self.loaded, self.ops, self.op_frames[index], index)
        detail = "; ".join(d for d in (f"MLIR op at {position}" if position != self.source else "", others) if d)
        raise UnsupportedOpError(name, self.module, self.source, detail)

    # --- symbols, types -------------------------------------------------------------------------------------
    def _scan_symbols(self) -> None:
        """Collect `torch.bind_symbolic_shape`s; the inputs' symbols are named `seq`, `dyn1`, ..."""
        symbol_of = {}
        for op in self.ops:
            if op.name == "torch.symbolic_int":
                symbol_of[op.results[0]] = self.sympy.Symbol(attr_string(op.attributes["symbol_name"]),
                                                             integer=True)
        binds = [op for op in self.ops if op.name == "torch.bind_symbolic_shape"]
        args = list(self.func.regions[0].blocks[0].arguments)
        binds.sort(key=lambda op: 0 if op.operands[0] in args else 1)  # input symbols are named first
        for op in binds:
            value, *syms = op.operands
            symbols = [symbol_of.get(s) for s in syms]
            if any(s is None for s in symbols):
                continue
            for s in symbols:
                if s not in self.symbols:
                    self.symbols[s] = "seq" if not self.symbols else f"dyn{len(self.symbols)}"
            self.bindings[value] = self._affine(str(op.attributes["shape_expressions"]), symbols)

    def _affine(self, text: str, symbols: list):
        """`affine_map<()[s0] -> (1, s0 * 2)>` -> (1, 2*s27) over the bound symbols."""
        found = re.search(r"\[([^\]]*)\]\s*->\s*\((.*)\)>?\s*$", text)
        names = [n.strip() for n in found.group(1).split(",") if n.strip()]
        local = dict(zip(names, symbols, strict=True))
        exprs = found.group(2).replace("floordiv", "//").replace(" mod ", " % ")
        return tuple(self.sympy.sympify(e, locals=local) for e in _split_top(exprs))

    def dim(self, d):
        """An int, an IR dim name or a sympy size as an IR dim."""
        if isinstance(d, str):
            return d
        if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            return int(d)
        if isinstance(d, self.sympy.Basic):
            if d.is_Integer:
                return int(d)
            if d.is_Symbol:
                return self.symbols.get(d, d.name)
            text = str(d.subs({s: self.sympy.Symbol(n) for s, n in self.symbols.items()}))
            raise self.error(f"the size `{text}` is a symbolic expression, which IR shapes cannot express (they "
                             "only name dims); export with static shapes (export_mlir(..., dynamic_seq=False))")
        raise self.error(f"expected a size, got {d!r}")

    def type_of(self, value) -> TensorType:
        """The IR type of an MLIR tensor value: `?` from its symbolic binding, else the sequence length."""
        text = str(value.type)
        found = _VTENSOR.match(text)
        if found is None:
            kind = "an unranked tensor" if text.startswith("!torch.vtensor<*") else text
            raise self.error(f"a value of type {kind} cannot be imported (the IR needs ranked value tensors); "
                             f"{HINT}")
        dims, elem = found.groups()
        dtype = MLIR_DTYPES.get(elem)
        if dtype is None:
            raise self.error(f"element type {elem} has no IR equivalent (supported: {', '.join(MLIR_DTYPES)}); "
                             "convert the model first (e.g. model.float())")
        shape = [d.strip() for d in dims.split(",")] if dims.strip() else []
        bound = self.bindings.get(value)
        out = []
        for axis, d in enumerate(shape):
            if d != "?":
                out.append(int(d))
            elif bound is not None:
                out.append(self.dim(bound[axis]))
            else:
                out.append(next(iter(self.symbols.values()), "seq"))
        return TensorType(tuple(out), dtype)

    def out(self, node) -> TensorType:
        return self.type_of(node.op.results[0])

    def tensor(self, value, dtype: str) -> Node:
        if isinstance(value, self.sympy.Basic) and value.is_Integer:
            value = int(value)
        if isinstance(value, (str, self.sympy.Basic)):
            raise self.error(f"the symbolic size `{value}` is used as a tensor value, which the IR cannot express; "
                             "export with static shapes")
        return super().tensor(value, dtype)

    # --- inputs, weights ------------------------------------------------------------------------------------
    def _inputs(self) -> list[Node]:
        args = list(self.func.regions[0].blocks[0].arguments)
        names = arg_names(self.func, len(args))
        inputs = []
        for i, arg in enumerate(args):
            if arg not in self.bindings:  # no symbolic binding: the `?` dims are the sequence length
                dims = [d.strip() for d in (_VTENSOR.match(str(arg.type)) or [None, ""])[1].split(",")]
                if "?" in dims and not self.symbols:
                    self.symbols[self.sympy.Symbol("seq", integer=True)] = "seq"
            self.module, self.source = "", ""
            node = Node("input", (), {"name": names[i]}, self.type_of(arg))
            self.values[arg] = node
            inputs.append(node)
        return inputs

    def _blob_array(self, key: str) -> np.ndarray:
        """The array of resource blob `key`, typed by the first literal holding it (read once)."""
        if key not in self._blob_arrays:
            op = next(o for o in self.ops if o.name == "torch.vtensor.literal"
                      and resource_key(o.attributes["value"]) == key)
            self._blob_arrays[key] = self.loaded.blob(key, self.type_of(op.results[0]))
        return self._blob_arrays[key]

    def literal(self, op: MlirOp):
        attr = op.op.attributes["value"]
        key = resource_key(attr)
        ttype = self.type_of(op.op.results[0])
        if key is None:  # an inline dense<...> literal: a scalar constant, or a small tensor
            array = dense_array(attr, ttype)
            if array.ndim == 0:
                return self.const(array.item(), ttype.dtype)
            name = f"literal_{op.index}"
            self.weights[name] = array
            return Node("weight", (), {"name": name}, ttype)
        name = self.weight_names.names[key]
        if name not in self._weight_nodes:
            array = self._blob_array(key)
            if ttype.dtype not in ("f32", "i64", "i32", "bool"):
                raise self.error(f"weight {name} is {ttype.dtype}; import float32 models (call model.float())")
            self.weights[name] = array
            self._weight_nodes[name] = Node("weight", (), {"name": name}, ttype)
        return self._weight_nodes[name]

    # --- locations ---------------------------------------------------------------------------------------
    def _locate(self, index: int) -> None:
        module = self.modules[index]
        self.module = module if module is not None else UNKNOWN
        self.source = source_of(self.op_frames[index], self.loaded.path)

    def error(self, message: str) -> FrontendError:
        op = f"{self.current.name}: " if self.current is not None else ""
        where = f"{self.module or '<root>'}" + (f" at {self.source}" if self.source else "")
        return FrontendError(f"{self.loaded.source}: {where}: {op}{message}")

    # --- operands -------------------------------------------------------------------------------------------
    def value(self, v):
        """An operand as handlers take it: IR nodes, Python scalars, lists; sizes as ints or IR dim names."""
        try:
            value = self.values[v]
        except KeyError:
            raise self.error("reads a value defined after it or outside @main (not a single-block function?)") \
                from None
        return self._plain(value)

    def _plain(self, value):
        if isinstance(value, self.sympy.Basic):
            if value.is_Integer:
                return int(value)
            if value.is_Symbol:
                return self.symbols.get(value, value.name)
            return value
        if isinstance(value, list):
            return [self._plain(v) for v in value]
        return value

    def _arguments(self, op: MlirOp):
        """Positional and keyword arguments by the torch schema (keyword-only ones as kwargs, as FX has them)."""
        values = [self.value(v) for v in op.op.operands]
        if op.target is None:
            return values, {}
        args, kwargs = [], {}
        for spec, value in zip(op.target._schema.arguments, values):
            if spec.kwarg_only:
                kwargs[spec.name] = value
            else:
                args.append(value)
        return args, kwargs

    def _check_results(self, op: MlirOp, result):
        """The handler's result against the MLIR result types: same shape (else a bug), dtype cast if needed."""
        results = list(op.op.results)
        if not results:
            return None
        if len(results) > 1 or str(results[0].type).startswith("!torch.list"):
            result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
            if len(results) == 1:
                return result  # a list of tensors, unpacked by torch.prim.ListUnpack
            return tuple(self._check_one(v, r) if r is not None else None
                         for v, r in zip(results, result, strict=False))
        return self._check_one(results[0], result)

    def _check_one(self, value, result):
        text = str(value.type)
        if not text.startswith("!torch.vtensor"):
            return result
        if not isinstance(result, Node):
            raise self.error(f"internal: gave {type(result).__name__}, not a tensor")
        want = self.type_of(value)
        if result.shape != want.shape:
            guess = "" if value in self.bindings else (" (the module has no symbolic shape bindings, so every `?` "
                                                       "was taken to be the sequence length; export with "
                                                       "import_symbolic_shape_expressions=True or export_mlir)")
            raise self.error(f"internal: gave shape {list(result.shape)} but MLIR says {text}{guess}")
        return self.cast(result, want.dtype)


def _split_top(text: str) -> list[str]:
    """`1, s0 * (2), 3` -> its comma-separated parts, commas inside parentheses kept."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


__all__ = ["MlirImportError", "MlirImporter", "import_mlir"]
