"""torch-mlir (torch dialect) -> IR.

    module = export_mlir(model, (input_ids,))                  # or torch_mlir.fx.export_and_import(model, ids)
    graph = import_mlir(module)                                 # or import_mlir("model.mlir")
    graph = import_mlir(module, state_dict=model.state_dict())  # names for an export_and_import module

1. Load: a torch-mlir `Module` is printed with its locations, a path is read; either is parsed by the MLIR Python
   bindings shipped with torch-mlir (`torch_mlir.ir`, torch dialect registered). A file that does not parse
   (truncated, malformed) is one clear error naming the line and column. The public `func.func` (`@main`, or the
   only one) is the graph; a module that holds ops of other dialects (lowered past the torch dialect: linalg,
   tosa, stablehlo, ...) is refused, saying how to export the torch dialect.
2. Weights: every `torch.vtensor.literal(dense_resource<key>)` is a weight, its bytes read from the module's
   `{-# dialect_resources: { builtin: { key: "0x..." } } #-}` section (the bindings cannot read blobs). Names,
   in this order: (a) the key itself when it is not torch-mlir's automatic `torch_tensor_<shape>_<dtype>[_n]` —
   `export_mlir` names every blob by its state-dict FQN, so its modules and files carry their names; (b) with
   `state_dict=`, the state-dict entry holding exactly the same values (equal-valued entries — fresh norm
   weights, tied embeddings — are given out in first-use / state-dict order); (c) otherwise the key (sanitized).
   torch-mlir's FX importer itself keeps no FQNs. A wrapper module holding the whole model (`CausalLMLogits`)
   is dropped from names and paths, as the other frontends do.
3. Every op of the function body is translated in order. `torch.constant.*`, `torch.prim.ListConstruct` and
   size arithmetic (`torch.aten.size.int`, `torch.aten.mul.int`, ...) become Python values (sizes of the
   symbolic dim are sympy expressions); `torch.aten.*` / `torch.prims.*` ops go through the same aten -> IR
   table as the torch.export frontend (`torch_ops.py`, keyed by `aten.<name>.<overload>`), their operands
   split into positional and keyword arguments by the op's torch schema, so an MLIR module and the FX graph it
   came from give the same IR. The few handlers that read FX metadata have MLIR twins here (`MLIR_OPS`).
4. `torch.aten.linear` arrives whole from `export_mlir` (it exports at torch.export's default level);
   torch-mlir's default decompositions (plain `export_and_import`) turn it into `view -> mm(x, permute(W)) ->
   view`, and batched matmuls into `view -> bmm -> view`: both are folded back (`linear`, `matmul`) so gated-MLP
   detection sees what it sees from torch.export.
5. Symbolic dims: with `torch.bind_symbolic_shape` ops (`export_mlir`, or `import_symbolic_shape_expressions=
   True`) each `?` gets its exact expression; the input's first symbol is named `seq` (then `dyn1`, ...). Without
   them every `?` is taken to be `seq` (what a causal LM exported with a dynamic sequence length has); results
   are checked against the shapes the op table infers, so a wrong guess is an error, not a wrong graph.

Locations: an IR node's `loc` is "<module path> (<file>:<line>)" like the torch frontend's. The file:line is the
innermost frame outside torch of the op's MLIR `callsite(...)` location (or the op's line:col in the .mlir file
when it was printed without locations). MLIR keeps no module paths, so they are inferred: an op reading a named
weight is in that weight's module (`...mlp.gate_proj`); another op is placed by its call stack, in the module
whose forward frame it shares with the nearest such op (frames that call the same function from the same line
belong to one invocation). Modules without weights of their own (`act_fn`) are therefore reported as their
parent (`...mlp`). Without Python locations, ops are placed by where their operands come from (a weight's
module, or the common module of their operands' modules), else in `<unknown>`.
"""

from __future__ import annotations

import bisect
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..ir import Graph, Node, TensorType, verify
from ..ir.types import np_dtype
from .errors import FrontendError, UnsupportedOpError
from .onnx_names import sanitize, wrapper_prefix
from .torch_export import TORCH_DTYPES, Importer
from .torch_ops import lookup, positive_axis, slice_of

MLIR_DTYPES = {"f32": "f32", "f16": "f16", "f64": "f64", "si64": "i64", "si32": "i32", "i1": "bool"}
IR_TO_TORCH = {v: k for k, v in TORCH_DTYPES.items()}
AUTO_BLOB = re.compile(r"^torch_tensor_[\d_]*_?torch\.\w+?(_\d+)?$")  # torch-mlir's own blob names
_VTENSOR = re.compile(r"^!torch\.vtensor<\[([^\]]*)\],(\w+)>$")
_FRAME = re.compile(r'"((?:[^"\\]|\\.)*)":(\d+):(\d+)')
_RESOURCE_KEY = re.compile(r'dense_resource<("(?:[^"\\]|\\.)*"|[^>]+)>')
_TORCH_DIRS = (os.path.dirname(torch.__file__) + os.sep, f"{os.sep}site-packages{os.sep}torch{os.sep}")
_SCALAR_TYPES = ("!torch.int", "!torch.float", "!torch.bool", "!torch.number")
WEIGHT_VIEWS = ("torch.aten.permute", "torch.aten.t", "torch.aten.transpose.int", "torch.aten.view",
                "torch.aten.unsqueeze", "torch.aten.expand")  # a decomposition's views of a weight
WRAPPERS = ("wrap_with_set_grad_enabled", "wrap_with_autocast")
UNKNOWN = "<unknown>"  # the module path of an op that neither a weight nor a call stack places
HINT = ("export the torch dialect with actsparse.frontends.torch_mlir.export_mlir(model, inputs) or "
        "torch_mlir.fx.export_and_import(model, *inputs) (output_type 'raw', the default)")


class MlirImportError(FrontendError):
    """A torch-mlir module could not be read (corrupt or truncated file, not the torch dialect, missing blobs)."""


# --- exporting (a convenience: torch-mlir modules that keep weight names) --------------------------------------
def export_mlir(model: torch.nn.Module, example_inputs, *, dynamic_seq: bool = True, decompose: bool = False,
                path: str | os.PathLike | None = None):
    """`model` as a torch-dialect module of `torch_mlir.ir`, through torch-mlir's FX importer.

    Unlike a plain `torch_mlir.fx.export_and_import(model, ...)` the module keeps what the IR wants: the program
    is exported as the torch.export frontend exports it (same symbolic `seq`, MoE routing, error hints), its
    resource blobs are named by state-dict FQN, symbolic shapes are bound, the inputs keep their names, and
    non-persistent buffers (rotary tables) import without touching the model. `decompose=True` runs torch-mlir's
    default decompositions (as `export_and_import` does); by default ops stay at torch.export's level
    (`aten.linear`, `aten.scaled_dot_product_attention`). With `path`, the module is also written there as text
    with its locations. Requires torch-mlir.
    """
    fx, ir, torch_d, FxImporter = _torch_mlir()
    from torch_mlir.extras.fx_importer import create_mlir_tensor_type

    from .torch_export import export_program

    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    program = export_program(model.eval(), inputs, dynamic_seq)
    _inline_wrappers(program.graph_module)  # here, so their ops keep their stack traces (locations)
    if decompose:
        from torch_mlir.extras.fx_decomp_util import get_decomposition_table

        program = program.run_decompositions(get_decomposition_table())
    else:
        program = program.run_decompositions({})  # functional ops, none decomposed (`aten.linear` stays)
    for name in program.graph_signature.non_persistent_buffers:  # torch-mlir reads every buffer from state_dict
        program.state_dict.setdefault(name, program.constants[name])
    prefix = getattr(model, "actsparse_prefix", "")
    context = ir.Context()
    torch_d.register_dialect(context)
    importer = FxImporter(context=context)
    with context, ir.Location.unknown():
        for fqn, tensor in [*program.state_dict.items(), *program.constants.items()]:
            if not isinstance(tensor, torch.Tensor) or tensor.numel() <= 1:
                continue  # torch-mlir inlines one-element literals as dense splats
            ref = importer._py_attr_tracker.track(tensor)  # where torch-mlir caches literal attributes
            if ref.is_empty and tensor.dtype != torch.bool:  # (bools: torch-mlir's own uint8 literal + cast)
                name = fqn[len(prefix) + 1:] if prefix and fqn.startswith(prefix + ".") else fqn  # tied: the first
                array = np.ascontiguousarray(tensor.detach().cpu().numpy())
                ref.value = ir.DenseResourceElementsAttr.get_from_buffer(array, name, create_mlir_tensor_type(tensor))
    module = fx.export_and_import(program, fx_importer=importer, decomposition_table={},
                                  import_symbolic_shape_expressions=True)
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    func = _main_func(module, "<exported module>")
    with context, ir.Location.unknown():
        func.attributes["arg_attrs"] = ir.ArrayAttr.get(
            [ir.DictAttr.get({"actsparse.name": ir.StringAttr.get(n)}) for n in names])
    if path is not None:
        Path(path).write_text(module.operation.get_asm(enable_debug_info=True))
    return module


def _inline_wrappers(gm: torch.fx.GraphModule) -> None:
    """Inline `wrap_with_set_grad_enabled` / `wrap_with_autocast` bodies (the FX importer has no mapping for
    them; the torch frontend inlines them too). Their nodes keep their metadata, so their MLIR locations name the
    model's source lines rather than the generated code `run_decompositions` would inline them as."""
    from .torch_export import op_name

    for node in list(gm.graph.nodes):
        if node.op != "call_function" or op_name(node.target) not in WRAPPERS:
            continue
        at = next(i for i, a in enumerate(node.args) if isinstance(a, torch.fx.Node) and a.op == "get_attr")
        body = getattr(gm, node.args[at].target)
        _inline_wrappers(body)
        env = dict(zip([n for n in body.graph.nodes if n.op == "placeholder"], node.args[at + 1:]))
        outputs = ()
        with gm.graph.inserting_before(node):
            for n in body.graph.nodes:
                if n.op == "output":
                    outputs = torch.fx.node.map_arg(n.args[0], env.__getitem__)
                elif n.op != "placeholder":
                    env[n] = gm.graph.node_copy(n, env.__getitem__)
        for user in list(node.users):  # getitem(wrapper, i) -> the body's i-th output
            user.replace_all_uses_with(outputs[user.args[1]])
            gm.graph.erase_node(user)
        attr = node.args[at]
        gm.graph.erase_node(node)
        if not attr.users:
            gm.graph.erase_node(attr)
    gm.recompile()


def _torch_mlir():
    try:
        from torch_mlir import fx, ir
        from torch_mlir.dialects import torch as torch_d
        from torch_mlir.extras.fx_importer import FxImporter
    except ImportError as err:
        raise MlirImportError(f"the torch-mlir frontend needs the torch-mlir package (pip install "
                              f"'actsparse[mlir]'): {err}") from None
    return fx, ir, torch_d, FxImporter


# --- importing ----------------------------------------------------------------------------------------------
def import_mlir(module_or_path, *, state_dict=None, prefix: str | None = None) -> Graph:
    """A torch-dialect module (a `torch_mlir.ir.Module` or a .mlir file) as a verified IR graph.

    `state_dict` (e.g. `model.state_dict()`) names weights whose blobs torch-mlir named automatically; `prefix`
    is a module path to drop from names and locations (None: a wrapper holding the whole model is dropped).
    Raises `MlirImportError` for unreadable or non-torch modules, `UnsupportedOpError` naming the first op
    without a mapping and where it is, `FrontendError` for other failures.
    """
    loaded = _load(module_or_path)
    return MlirImporter(loaded, state_dict, prefix).run()


@dataclass
class Loaded:
    func: Any  # the func.func operation
    text: str  # the module's text (resources included)
    source: str  # the file, or a description of the object, for messages
    path: str = ""  # the file the locations without Python frames point into
    context: Any = None
    module: Any = None


def _load(module_or_path) -> Loaded:
    _, ir, torch_d, _ = _torch_mlir()
    context = ir.Context()
    torch_d.register_dialect(context)
    context.allow_unregistered_dialects = True  # so a lowered module parses, and is refused by name below
    if isinstance(module_or_path, (str, os.PathLike)):
        path = Path(module_or_path)
        source = str(path)
        if not path.is_file():
            raise MlirImportError(f"{source}: no such MLIR file")
        data = path.read_bytes()
        if data.startswith(b"ML\xefR"):  # MLIR bytecode: parse it (elsewhere: blob names are per context), then
            scratch = ir.Context()       # work on its text form
            torch_d.register_dialect(scratch)
            scratch.allow_unregistered_dialects = True
            text = _parse(ir.Module.parse, data, scratch, source).operation.get_asm(enable_debug_info=True)
            module = _parse(ir.Module.parse, text, context, source)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise MlirImportError(f"{source}: not a readable MLIR module (neither text nor MLIR bytecode)") \
                    from None
            if "{-#" in text and not text.rstrip().endswith("#-}"):  # (MLIR's parser crashes on this one)
                line = text.count("\n", 0, text.rfind("{-#")) + 1
                raise MlirImportError(f"{source}: not a readable MLIR module (truncated or malformed?): its "
                                      f"resource section (from line {line}, holding the weights) does not end "
                                      "with `#-}`")
            module = _parse(lambda _, ctx: ir.Module.parseFile(str(path), ctx), text, context, source)
    elif hasattr(module_or_path, "operation") and type(module_or_path).__module__.startswith("torch_mlir"):
        source, path = "torch-mlir module", None
        text = module_or_path.operation.get_asm(enable_debug_info=True)
        module = _parse(ir.Module.parse, text, context, source)
    else:
        raise MlirImportError(f"expected a path to a .mlir file or a torch_mlir.ir.Module, got "
                              f"{type(module_or_path).__name__}")
    func = _main_func(module, source)
    _check_dialect(func, source)
    return Loaded(func, text, source, str(path) if path is not None else "", context, module)


def _parse(parse, text, context, source: str):
    from torch_mlir import ir

    try:
        return parse(text, context)
    except ir.MLIRError as err:
        diags = err.error_diagnostics
        where = ""
        if diags:
            found = _FRAME.search(str(diags[0].location))
            where = f" at line {found.group(2)}, column {found.group(3)}" if found else ""
        message = diags[0].message if diags else str(err).strip().splitlines()[-1]
        raise MlirImportError(f"{source}: not a readable MLIR module (truncated or malformed?){where}: "
                              f"{message}") from None


def _main_func(module, source: str):
    funcs = [op for op in module.body.operations if op.operation.name == "func.func"]
    public = [f for f in funcs if "sym_visibility" not in f.attributes]
    named = [f for f in funcs if str(f.attributes["sym_name"]) == '"main"']
    chosen = named or (public if len(public) == 1 else [])
    if not chosen:
        found = ", ".join(str(f.attributes["sym_name"]) for f in funcs) or "none"
        raise MlirImportError(f"{source}: expected one public func.func (@main) holding the model, found {found}; "
                              f"{HINT}")
    return chosen[0].operation


def _check_dialect(func, source: str) -> None:
    ops = [op.operation.name for op in func.regions[0].blocks[0].operations]
    foreign = sorted({n for n in ops if not n.startswith(("torch.", "func.return"))})
    argument_types = [str(a.type) for a in func.regions[0].blocks[0].arguments]
    if foreign or any(not t.startswith("!torch.") for t in argument_types):
        dialects = sorted({n.split(".")[0] for n in foreign}) or ["builtin tensors"]
        examples = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "") or ", ".join(argument_types[:2])
        raise MlirImportError(f"{source}: not a torch-dialect module: @main holds {', '.join(dialects)} ops "
                              f"({examples}), i.e. it was lowered past the torch dialect; {HINT}")


def _blobs(text: str) -> dict[str, tuple[int, int]]:
    """key -> (start, end) of its hex digits in `text`, from the `dialect_resources` section."""
    start = text.rfind("{-#")
    if start < 0:
        return {}
    found = {}
    for m in re.finditer(r'("(?:[^"\\]|\\.)*"|[\w.$\-]+)\s*:\s*"0x([0-9A-Fa-f]*)"', text[start:]):
        key = m.group(1)
        found[key[1:-1] if key.startswith('"') else key] = (start + m.start(2), start + m.end(2))
    return found


def _frames(location) -> list[tuple[str, int, int]]:
    """(file, line, column) of an MLIR location, innermost first (callsite(callee at caller))."""
    return [(f, int(line), int(col)) for f, line, col in _FRAME.findall(str(location))]


def _is_python(frame) -> bool:
    return not frame[0].endswith(".mlir") and frame[0] not in ("-", "<stdin>")


def _common(paths: list[str]) -> str:
    """The deepest module path containing all of `paths`."""
    common = []
    for parts in zip(*(p.split(".") for p in paths)):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _ancestor(path: str, levels: int) -> str:
    """`model.layers.0.mlp` up one level -> `model.layers.0`, up two -> `model` (a list index is no level)."""
    parts = path.split(".") if path else []
    for _ in range(levels):
        if not parts:
            break
        last = parts.pop()
        if last.isdigit() and parts:
            parts.pop()
    return ".".join(parts)


@dataclass(eq=False)
class MlirOp:
    """One MLIR op as the aten handlers see it (where they take an FX node)."""

    op: Any
    name: str  # torch.aten.add.Tensor
    index: int
    target: Any = None  # torch.ops.aten.add.Tensor, when there is one

    @property
    def aten(self) -> str:
        """`aten.add.Tensor` / `aten.linear` / `prims.convert_element_type`: the torch op's name."""
        return self.name.split(".", 1)[1]


def _torch_target(name: str):
    parts = name.split(".")
    if len(parts) < 3 or parts[1] not in ("aten", "prims"):
        return None
    packet = getattr(getattr(torch.ops, parts[1]), parts[2], None)
    if packet is None:
        return None
    return getattr(packet, parts[3] if len(parts) > 3 else "default", None)


class MlirImporter(Importer):
    """Walks the body of @main; the aten handlers of `torch_ops` build nodes through the inherited builders."""

    def __init__(self, loaded: Loaded, state_dict=None, prefix: str | None = None):
        import sympy

        self.sympy = sympy
        self.loaded = loaded
        self.func = loaded.func
        self.ops = [op.operation for op in self.func.regions[0].blocks[0].operations]
        self.state_dict = state_dict
        self.symbols: dict = {}  # sympy Symbol (its MLIR name, e.g. s27) -> IR dim name
        self.weights: dict[str, np.ndarray] = {}
        self._weight_nodes: dict[str, Node] = {}
        self.module = self.source = ""
        self.values: dict = {}  # MLIR Value -> IR node / Python value
        self.bindings: dict = {}  # MLIR Value -> tuple of sympy dims
        self.prefix = ""
        self._prefix_arg = prefix
        self.current: MlirOp | None = None

    # --- driver -----------------------------------------------------------------------------------------
    def run(self) -> Graph:
        self._scan_symbols()
        names = self._name_weights()
        self.modules = self._infer_modules(names)
        self._check_supported()
        inputs = self._inputs()
        outputs = None
        for index, op in enumerate(self.ops):
            name = op.name
            self.current = MlirOp(op, name, index, _torch_target(name))
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
            return _constant(op.op)
        if self._is_scalar_op(op.op):
            return self._scalar(op)
        handler = MLIR_OPS.get(op.aten) or lookup(op.aten)
        args, kwargs = self._arguments(op)
        result = handler(self, op, *args, **kwargs)
        return self._check_results(op, result)

    def _check_supported(self) -> None:
        missing: dict[str, int] = {}
        for index, op in enumerate(self.ops):
            if not self._handled(op):
                missing.setdefault(op.name, index)
        if not missing:
            return
        name, index = next(iter(missing.items()))
        self._locate(index)
        others = f"also unsupported: {', '.join(list(missing)[1:])}" if len(missing) > 1 else ""
        position = self._text_position(index)
        detail = "; ".join(d for d in (f"MLIR op at {position}" if position != self.source else "", others) if d)
        raise UnsupportedOpError(name, self.module, self.source, detail)

    def _handled(self, op) -> bool:
        name = op.name
        if name in VALUE_OPS or name.startswith("torch.constant.") or name == "func.return":
            return True
        if self._is_scalar_op(op):
            return name.split(".")[2] in SCALAR_FNS
        if not name.startswith(("torch.aten.", "torch.prims.")):
            return False
        aten = name.split(".", 1)[1]
        if aten.split(".")[1].endswith("_") and not aten.split(".")[1].startswith("_"):
            return False  # in-place: a value-semantic module never needs one
        return aten in MLIR_OPS or lookup(aten, None) is not None

    def _text_position(self, index: int) -> str:
        """Where op `index` is in the module's text: `file:line:col` (the n-th op of its name in the body)."""
        op = self.ops[index]
        frames = _frames(op.location)
        if frames and not _is_python(frames[0]):
            file, line, col = frames[0]
            return f"{self.loaded.path or file}:{line}:{col}"
        nth = sum(1 for o in self.ops[:index] if o.name == op.name)
        body = self.loaded.text[: self.loaded.text.rfind("{-#")] if "{-#" in self.loaded.text else self.loaded.text
        pattern = re.compile(rf"(?<![\w.]){re.escape(op.name)}(?![\w.])")
        for i, m in enumerate(pattern.finditer(body)):
            if i == nth:
                line = body.count("\n", 0, m.start()) + 1
                col = m.start() - body.rfind("\n", 0, m.start())
                loc = f", loc({', '.join(f'{os.path.basename(f)}:{ln}:{c}' for f, ln, c in frames[:3])})" \
                    if frames else ""
                return f"{self.loaded.path or self.loaded.source}:{line}:{col}{loc}"
        return self.loaded.path or self.loaded.source

    # --- symbols, types -------------------------------------------------------------------------------------
    def _scan_symbols(self) -> None:
        """Collect `torch.bind_symbolic_shape`s; the inputs' symbols are named `seq`, `dyn1`, ..."""
        symbol_of = {}
        for op in self.ops:
            if op.name == "torch.symbolic_int":
                symbol_of[op.results[0]] = self.sympy.Symbol(_string(op.attributes["symbol_name"]), integer=True)
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
        names = _arg_names(self.func, len(args))
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

    def _name_weights(self) -> dict:
        """Blob key -> weight name (FQN when known), for every resource literal; also prepares the prefix."""
        self._blob_spans = _blobs(self.loaded.text)
        self._arrays: dict[str, np.ndarray] = {}
        keys = []
        for op in self.ops:
            if op.name == "torch.vtensor.literal":
                key = _resource_key(op.attributes["value"])
                if key is not None and key not in keys:
                    keys.append(key)
        matcher = _StateDictMatcher(self.state_dict) if self.state_dict is not None else None
        names, known = {}, []
        for key in keys:
            if not AUTO_BLOB.match(key):
                names[key] = key
                known.append(key)
            elif matcher is not None:
                array = self._blob_array(key)
                fqn = matcher.match(array)
                names[key] = fqn or sanitize(key)
                if fqn:
                    known.append(fqn)
            else:
                names[key] = sanitize(key)
        prefix = self._prefix_arg if self._prefix_arg is not None else wrapper_prefix([], known)
        self.prefix = prefix + "." if prefix else ""
        self._known = {self.strip(names[k]) for k in keys if names[k] in known}
        return {k: self.strip(v) for k, v in names.items()}

    def strip(self, path: str) -> str:
        if self.prefix and path.startswith(self.prefix):
            return path[len(self.prefix):]
        return "" if self.prefix and path == self.prefix[:-1] else path

    def _blob_array(self, key: str) -> np.ndarray:
        if key in self._arrays:
            return self._arrays[key]
        op = next(o for o in self.ops if o.name == "torch.vtensor.literal"
                  and _resource_key(o.attributes["value"]) == key)
        span = self._blob_spans.get(key)
        ttype = self.type_of(op.results[0])
        if span is None:
            raise MlirImportError(f"{self.loaded.source}: the weight blob {key!r} is missing from the module's "
                                  "dialect_resources section (truncated file?)")
        data = bytes.fromhex(self.loaded.text[span[0] + 8: span[1]])  # the first 4 bytes hold the alignment
        dtype = np.dtype(np_dtype(ttype.dtype))
        expected = int(np.prod(ttype.shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise MlirImportError(f"{self.loaded.source}: the weight blob {key!r} holds {len(data)} bytes but its "
                                  f"type {ttype} needs {expected} (truncated or corrupt file?)")
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(ttype.shape)
        self._arrays[key] = array
        return array

    def literal(self, op: MlirOp):
        attr = op.op.attributes["value"]
        key = _resource_key(attr)
        ttype = self.type_of(op.op.results[0])
        if key is None:  # an inline dense<...> literal: a scalar constant, or a small tensor
            array = _dense_array(attr, ttype)
            if array.ndim == 0:
                return self.const(array.item(), ttype.dtype)
            name = f"literal_{op.index}"
            self.weights[name] = array
            return Node("weight", (), {"name": name}, ttype)
        name = self._names[key]
        if name not in self._weight_nodes:
            array = self._blob_array(key)
            if ttype.dtype not in ("f32", "i64", "i32", "bool"):
                raise self.error(f"weight {name} is {ttype.dtype}; import float32 models (call model.float())")
            self.weights[name] = array
            self._weight_nodes[name] = Node("weight", (), {"name": name}, ttype)
        return self._weight_nodes[name]

    # --- locations ---------------------------------------------------------------------------------------
    def _infer_modules(self, names: dict) -> list[str | None]:
        """The module path of every op (None: unknown), from named weights and call stacks (module docstring)."""
        self._names = names
        literal_name = {}
        for op in self.ops:
            if op.name == "torch.vtensor.literal":
                key = _resource_key(op.attributes["value"])
                if key is not None and names[key] in self._known:
                    literal_name[op.results[0]] = names[key]
            elif op.name in WEIGHT_VIEWS and op.operands[0] in literal_name:  # permute(W): still W for users
                literal_name[op.results[0]] = literal_name[op.operands[0]]
        self._op_frames = frames = [_frames(op.location) for op in self.ops]
        modules: list[str | None] = [None] * len(self.ops)
        table: dict[tuple, list] = {}  # (caller chain, file of the frame) -> [(op index, module), ...]
        for index, op in enumerate(self.ops):
            read = [literal_name[v] for v in op.operands if v in literal_name]
            if not read:
                continue
            module = read[0].rsplit(".", 1)[0] if "." in read[0] else ""
            modules[index] = module
            stack = [(f, line) for f, line, _ in frames[index]]
            if not stack or not _is_python(frames[index][0]):
                continue
            for k in range(len(stack)):
                table.setdefault((tuple(stack[k + 1:]), stack[k][0]), []).append((index, _ancestor(module, k)))
        for index, stack in enumerate(frames):
            if modules[index] is not None or not stack or not _is_python(stack[0]):
                continue
            stack = [(f, line) for f, line, _ in stack]
            for j in range(len(stack)):
                entries = table.get((tuple(stack[j + 1:]), stack[j][0]))
                if entries:
                    at = bisect.bisect_left(entries, (index,))  # the nearest such op, before or after
                    near = entries[max(at - 1, 0): at + 1]
                    modules[index] = min(near, key=lambda e: abs(e[0] - index))[1]
                    break
        producer = {r: i for i, op in enumerate(self.ops) for r in op.results}
        for index, op in enumerate(self.ops):  # the rest (no Python frames): where their operands come from
            if modules[index] is None:
                found = [modules[producer[v]] for v in op.operands if v in producer and str(v.type).startswith(
                    "!torch.vtensor") and modules[producer[v]] is not None]
                modules[index] = _common(found) if found else None
        return modules

    def _locate(self, index: int) -> None:
        frames = self._op_frames[index]
        module = self.modules[index]
        self.module = module if module is not None else UNKNOWN
        python = [f for f in frames if _is_python(f) and not f[0].startswith(("<", _TORCH_DIRS[0]))
                  and _TORCH_DIRS[1] not in f[0]]  # (`<eval_with_key>`: generated code, no source line)
        if python:
            self.source = f"{python[0][0]}:{python[0][1]}"
        elif frames and not _is_python(frames[0]):
            self.source = f"{self.loaded.path or frames[0][0]}:{frames[0][1]}:{frames[0][2]}"
        else:
            self.source = ""

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

    # --- scalars ------------------------------------------------------------------------------------------
    @staticmethod
    def _is_scalar_op(op) -> bool:
        return bool(op.results) and all(str(r.type) in _SCALAR_TYPES for r in op.results) and \
            all(str(v.type) in _SCALAR_TYPES for v in op.operands) and op.name.startswith(("torch.aten.",
                                                                                            "torch.prim."))

    def _scalar(self, op: MlirOp):
        """Size arithmetic and scalar casts (`torch.aten.mul.int`, `torch.aten.Int.bool`, ...), with sympy."""
        base = op.name.split(".")[2]
        fn = SCALAR_FNS.get(base)
        if fn is None:
            raise self.error(f"the scalar op {op.name} is not supported")
        operands = [self.values[v] for v in op.op.operands]
        result = fn(*operands)
        if isinstance(result, self.sympy.logic.boolalg.BooleanAtom):
            return bool(result)
        if isinstance(result, self.sympy.Rel):
            raise self.error(f"the condition `{result}` depends on the symbolic sequence length; export with "
                             "static shapes")
        return result


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _string(attr) -> str:
    text = str(attr)
    return text[1:-1] if text.startswith('"') else text


def _arg_names(func, count: int) -> list[str]:
    names = [f"arg{i}" for i in range(count)]
    if "arg_attrs" in func.attributes:
        for i, found in enumerate(re.finditer(r"\{([^{}]*)\}", str(func.attributes["arg_attrs"]))):
            named = re.search(r'actsparse\.name\s*=\s*"([^"]+)"', found.group(1))
            if named and i < count:
                names[i] = sanitize(named.group(1))
    return names


def _resource_key(attr) -> str | None:
    found = _RESOURCE_KEY.match(str(attr))
    if found is None:
        return None
    key = found.group(1)
    return key[1:-1] if key.startswith('"') else key


def _dense_array(attr, ttype: TensorType) -> np.ndarray:
    from torch_mlir import ir

    dtype = np.dtype(np_dtype(ttype.dtype))
    dense = ir.DenseElementsAttr(attr)
    if dense.is_splat:
        splat = dense.get_splat_value()
        value = ir.BoolAttr(splat).value if ttype.dtype == "bool" else (
            ir.FloatAttr(splat).value if ttype.dtype.startswith("f") else ir.IntegerAttr(splat).value)
        return np.full(ttype.shape, value, dtype=dtype)
    kind = ir.DenseFPElementsAttr if ttype.dtype.startswith("f") else ir.DenseIntElementsAttr
    return np.array([v for v in kind(attr)], dtype=dtype).reshape(ttype.shape)


def _constant(op):
    from torch_mlir import ir

    kind = op.name.rsplit(".", 1)[1]
    if kind == "none":
        return None
    attr = op.attributes["value"]
    if kind == "int":
        return ir.IntegerAttr(attr).value
    if kind == "float":
        return ir.FloatAttr(attr).value
    if kind == "bool":
        return ir.BoolAttr(attr).value
    if kind == "number":
        return ir.FloatAttr(attr).value if "f64" in str(attr) else ir.IntegerAttr(attr).value
    return _string(attr)  # str, device


class _StateDictMatcher:
    """Weight names for automatically named blobs: the state-dict entry with the same values (first unclaimed)."""

    def __init__(self, state_dict):
        self.groups: dict[tuple, list[tuple[str, np.ndarray]]] = {}
        self.claimed: set[str] = set()
        for name, tensor in state_dict.items():
            if not isinstance(tensor, torch.Tensor) or tensor.dtype not in TORCH_DTYPES:
                continue
            array = tensor.detach().cpu().numpy()
            self.groups.setdefault((array.shape, array.dtype.str), []).append((name, array))

    def match(self, array: np.ndarray) -> str | None:
        candidates = [name for name, a in self.groups.get((array.shape, array.dtype.str), [])
                      if np.array_equal(a, array)]
        for name in candidates:
            if name not in self.claimed:
                self.claimed.add(name)
                return name
        return candidates[0] if candidates else None


# --- value ops: the ones that make Python values, not tensors ----------------------------------------------
def _list(cx, op):
    return [cx.values[v] for v in op.op.operands]


def _unpack(cx, op):
    parts = cx.values[op.op.operands[0]]
    return tuple(parts) if len(op.op.results) > 1 else parts[0]


def _size(cx, op):  # torch.aten.size.int(t, dim) -> the dim, as an int or a sympy symbol
    x, axis = cx.values[op.op.operands[0]], cx.values[op.op.operands[1]]
    d = x.shape[positive_axis(axis, x.type.rank)]
    if isinstance(d, int):
        return d
    symbol = next((s for s, n in cx.symbols.items() if n == d), None)
    return symbol if symbol is not None else cx.sympy.Symbol(d, integer=True)


def _numel(cx, op):
    x = cx.values[op.op.operands[0]]
    total = 1
    for d in x.shape:
        total = total * (d if isinstance(d, int) else next(s for s, n in cx.symbols.items() if n == d))
    return total


def _nothing(cx, op):
    return None


def _num_to_tensor(cx, op):  # torch.prim.NumToTensor.Scalar(n) -> a 0-d constant
    return cx.tensor(cx.value(op.op.operands[0]), cx.out(op).dtype)


VALUE_OPS = {
    "torch.prim.ListConstruct": _list, "torch.prim.ListUnpack": _unpack,
    "torch.prim.TupleConstruct": lambda cx, op: tuple(_list(cx, op)), "torch.prim.TupleUnpack": _unpack,
    "torch.prim.TupleIndex": lambda cx, op: cx.values[op.op.operands[0]][cx.value(op.op.operands[1])],
    "torch.aten.size.int": _size, "torch.aten.numel": _numel,
    "torch.symbolic_int": lambda cx, op: next(iter(s for s in cx.symbols if s.name == _string(
        op.op.attributes["symbol_name"])), None),
    "torch.bind_symbolic_shape": _nothing, "torch.runtime.assert": _nothing,
    "torch.vtensor.literal": lambda cx, op: cx.literal(op),
    "torch.prim.NumToTensor.Scalar": _num_to_tensor,
}


def _truediv(a, b):
    return a / b


SCALAR_FNS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": _truediv, "floordiv": operator.floordiv,
    "remainder": operator.mod, "fmod": operator.mod, "neg": operator.neg, "eq": operator.eq, "ne": operator.ne,
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "Int": int, "Float": float, "Bool": bool, "ScalarImplicit": lambda x: x, "max": max, "min": min,
    "__and__": operator.and_, "__or__": operator.or_, "__not__": operator.not_,
}


# --- tensor ops whose torch.export handlers read FX metadata, and torch-mlir's decomposed forms --------------
def _torch_dtype(dtype: str):
    return IR_TO_TORCH[dtype]


def _compare(op_name):
    def handle(cx, node, a, b):  # a <op> b, both in torch's promoted dtype (tensors outweigh scalars)
        probes = []
        for v in (a, b):
            if isinstance(v, Node):
                probes.append(torch.empty([1] * v.type.rank, dtype=_torch_dtype(v.dtype)))
            else:
                probes.append(v if isinstance(v, (bool, int, float)) else 0)
        dtype = TORCH_DTYPES[torch.result_type(*probes)]
        return cx.emit(op_name, [cx.tensor(a, dtype), cx.tensor(b, dtype)])
    return handle


def _split(cx, node, x, size_or_sizes, dim=0):  # split / split_with_sizes / chunk -> slices, sizes per MLIR
    axis, start, parts = positive_axis(dim, x.type.rank), 0, []
    user = next((u.owner for u in node.op.results[0].uses), None)
    if user is None or user.name != "torch.prim.ListUnpack":
        raise cx.error("a split whose parts are not unpacked (torch.prim.ListUnpack) is not supported")
    for value in user.results:
        size = cx.type_of(value).shape[axis]
        if isinstance(size, str):
            raise cx.error(f"splitting the symbolic dim `{size}` cannot be expressed; export with static shapes")
        parts.append(slice_of(cx, x, axis, start, start + size))
        start += size
    return parts


def _unbind(cx, node, x, dim=0):
    axis = positive_axis(dim, x.type.rank)
    shape = tuple(d for i, d in enumerate(x.shape) if i != axis)
    return [cx.emit("reshape", [slice_of(cx, x, axis, i, i + 1)], shape=shape) for i in range(x.shape[axis])]


def _all(cx, node, x, dim=None, keepdim=False):  # all(x, dims) -> eq(max(cast(not x, f32), dims), 0)
    dims = [dim] if isinstance(dim, int) else list(dim or range(x.type.rank))
    none_false = cx.emit("max", [cx.cast(cx.emit("logical_not", [cx.cast(x, "bool")]), "f32")],
                         axes=tuple(positive_axis(d, x.type.rank) for d in dims), keepdim=bool(keepdim))
    return cx.emit("eq", [none_false, cx.const(0.0, "f32")])


def _empty(cx, node, *args, **kwargs):  # empty / empty_strided / empty_like: any content will do -> zeros
    ttype = cx.out(node)
    return cx.full(ttype.shape, ttype.dtype, False if ttype.dtype == "bool" else 0)


def _convert(cx, node, x, dtype, *args):  # prims.convert_element_type -> cast
    return cx.cast(x, cx.out(node).dtype)


def _weight_t(n: Node) -> Node | None:
    """W when `n` is permute(@W, (1, 0)): the [in, out] view of a linear weight that decompositions make."""
    if n.op == "permute" and tuple(n.attrs["axes"]) == (1, 0) and n.inputs[0].op == "weight":
        return n.inputs[0]
    return None


def _mm(cx, node, a, b):  # mm(x, permute(@W)) -> linear(x, @W); other matrix products -> matmul
    w = _weight_t(b)
    if w is not None:
        return cx.emit("linear", [a, w])
    return lookup("aten.mm")(cx, node, a, b)


def _addmm(cx, node, bias, a, b, beta=1, alpha=1):  # addmm(b, x, permute(@W)) -> linear(x, @W, b)
    w = _weight_t(b)
    if w is not None and beta == 1 and alpha == 1 and bias.type.rank == 1:
        return cx.emit("linear", [a, w, bias])
    return lookup("aten.addmm")(cx, node, bias, a, b, beta, alpha)


def _view(cx, node, x, *args, **kwargs):
    # view(linear(view(x, [-1, d]), W), [..., n]) -> linear(x, W);
    # view(matmul(view(a), view(b)), [*batch, m, n]) -> matmul(a, b)  (torch-mlir's decomposed linear / matmul)
    shape = cx.out(node).shape
    folded = _unflatten_linear(x, shape) or _unflatten_matmul(x, shape)
    if folded is not None:  # located where the product is (the view's own line may have no module)
        return cx.emit(folded[0], folded[1]).replace(loc=x.loc)
    return lookup("aten.view")(cx, node, x, *args, **kwargs)


def _unflatten_linear(y: Node, shape: tuple):
    if y.op != "linear" or y.inputs[0].op != "reshape":
        return None
    x = y.inputs[0].inputs[0]
    if x.type.rank > 2 and y.inputs[0].shape[-1] == x.shape[-1] and shape == (*x.shape[:-1], y.shape[-1]):
        return "linear", [x, *y.inputs[1:]]
    return None


def _unflatten_matmul(y: Node, shape: tuple):
    if y.op != "matmul" or any(i.op != "reshape" for i in y.inputs):
        return None
    a, b = (i.inputs[0] for i in y.inputs)
    a, b = (_unexpanded(t) for t in (a, b))
    if a.type.rank < 3 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        return None
    if shape != (*a.shape[:-2], a.shape[-2], b.shape[-1]) or y.inputs[0].shape[-2:] != a.shape[-2:] \
            or y.inputs[1].shape[-2:] != b.shape[-2:]:
        return None
    return "matmul", [a, b]


def _unexpanded(n: Node) -> Node:
    return n.inputs[0] if n.op == "expand" and n.inputs[0].shape == n.shape else n


MLIR_OPS = {
    **{f"aten.{op}.{kind}": _compare(op) for op in ["gt", "ge", "lt", "le", "eq", "ne"]
       for kind in ("Tensor", "Scalar")},
    "aten.split.Tensor": _split, "aten.split_with_sizes": _split, "aten.chunk": _split,
    "aten.unbind.int": _unbind,
    "aten.all.dim": _all, "aten.all.dims": _all, "aten.all": _all,
    "aten.empty.memory_format": _empty, "aten.empty_strided": _empty, "aten.empty_like": _empty,
    "prims.convert_element_type": _convert,
    "aten.mm": _mm, "aten.addmm": _addmm,
    "aten.view": _view, "aten._unsafe_view": _view, "aten.reshape": _view,
}

__all__ = ["MlirImportError", "export_mlir", "import_mlir"]
