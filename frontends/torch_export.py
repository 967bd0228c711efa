"""torch.nn.Module -> IR, through `torch.export` (or a program the user exported: `import_exported`).

    graph = import_torch(model, (input_ids,), dynamic_seq=True)

`torch.export.export(model, inputs, strict=False)` at its default level (aten ops before decomposition), so
`aten.linear`, `aten.silu` and `aten.scaled_dot_product_attention` arrive whole: `linear` is what gated-MLP
detection matches on. Dim 1 of every rank-2 integer input (the token ids) is exported as one symbolic dim, named
`seq` in the IR; if that export fails the model is exported again with static shapes. Batched MoE experts are
unrolled for the export (moe.py) and ops the table lacks are decomposed by torch (`decompose_missing`). The
program is then walked into the IR by torch_importer.py (`Importer`: weights, the op table, shape checks, locs).
"""

from __future__ import annotations

import warnings

import torch

from ..errors import ActsparseError
from ..ir import Graph
from .errors import FrontendError, SymbolicShapeError, UnsupportedOpError
from .moe import per_expert_routing
from .torch_importer import Importer, graph_modules, is_symbolic, op_name
from .torch_inplace import aliased
from .torch_ops import lookup

HINTS = ("Python control flow on tensor values cannot be exported (use torch.where); call transformers models "
         "with use_cache=False and an explicit attention_mask (frontends/hf.py: CausalLMLogits does both) and "
         "give small configs a pad_token_id inside the vocabulary")


def import_torch(model: torch.nn.Module, example_inputs: tuple, *, dynamic_seq: bool = True,
                 fallback: bool = True) -> Graph:
    """Export `model` on `example_inputs` and translate it into a verified IR graph.

    With `dynamic_seq`, dim 1 of rank-2 integer inputs is symbolic (`seq`), so the graph runs on any sequence
    length; otherwise (or if torch cannot export it that way, or the model computes a size from it that the IR
    cannot name, such as `seq + 3`) all shapes are those of `example_inputs`, with a warning.
    Raises `UnsupportedOpError` for an op without a mapping, `FrontendError` for other failures (with
    `fallback=False`, also where the symbolic length fails, instead of importing the static shapes).
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    program = export_program(model, example_inputs, dynamic_seq, fallback)
    try:
        return _import(model, program)
    except UnsupportedOpError:
        raise  # the same either way
    except (ActsparseError, TypeError, ValueError) as err:
        if not dynamic_seq or not fallback:
            raise
        # a size computed from seq that the IR cannot name (seq², min(seq, n)), or an op whose rule does not take
        # an affine dim such as seq+3: specialise to the example, as for an export that fails with a symbolic seq
        warnings.warn(f"actsparse: importing with a symbolic sequence length failed ({err}); importing with the "
                      "example's static shapes instead", stacklevel=2)
        return _import(model, export_program(model, example_inputs, False))


def import_exported(program: torch.export.ExportedProgram) -> Graph:
    """A program the user exported already -> IR, at the shapes it was exported with (a dim it marked dynamic stays
    symbolic). Ops the table lacks are decomposed as for `import_torch`; batched MoE experts are not unrolled (that
    needs the module before its export: pass the nn.Module instead)."""
    return _import(program.module(), decompose_missing(program))


def _import(model, program) -> Graph:
    try:
        return Importer(program, getattr(model, "actsparse_prefix", "")).run()
    except SymbolicShapeError:
        raise  # import_torch retries with static shapes
    except FrontendError as err:
        sinks = [n for n, m in model.named_modules() if n and isinstance(getattr(m, "sinks", None), torch.nn.Parameter)]
        # the failure is inside an attention with sinks (its path, less wrapper prefixes, in the message): name them
        if any(".".join(n.split(".")[i:]) in str(err) for n in sinks for i in range(max(1, n.count(".") - 1))):
            raise FrontendError(f"attention sinks are not supported (`{sinks[0]}.sinks`: a learned logit per head "
                                "joined to the attention scores, as gpt-oss has); the IR has no op for them. "
                                f"Where the import stopped: {err}") from err
        raise


def export_program(model, inputs: tuple, dynamic_seq: bool, fallback: bool = True):
    """`model` through `torch.export` on `inputs`, batched MoE experts unrolled; with `dynamic_seq`, dim 1 of
    rank-2 integer inputs is symbolic (static shapes, with a warning, if that export fails). Shared with
    `torch_mlir_export.export_mlir`."""
    with per_expert_routing(model):  # batched MoE experts: one visible gated MLP per expert (see moe.py)
        return decompose_missing(_export_with_fallback(model, inputs, dynamic_seq, fallback))


def decompose_missing(program):
    """Ops the table lacks are decomposed by torch's own core-ATen decompositions (only those ops: the ones we
    map whole, such as linear and sdpa, stay whole), so one table covers the long tail. A program that writes
    in place through a view (`attn[..., i, :i] = row`, a slice assigned in a loop) is functionalized on the way
    (the writes become `slice_scatter` / `select_scatter`), which the IR, having no aliasing, needs; writes that are
    local to a tensor the program made are rewritten so first, without torch's re-trace (view_writes.py)."""
    from .view_writes import functionalize_view_writes

    for gm in graph_modules(program.graph_module):  # local writes through views: rewritten here (no re-trace)
        if gm.graph.eliminate_dead_code():  # as torch's re-trace would: values nothing takes (Gemma 3n's checks of
            gm.recompile()  # its Normal's arguments, `_is_all_true`, read by nothing) are not imported
        functionalize_view_writes(gm)
    nodes = [n for gm in graph_modules(program.graph_module) for n in gm.graph.nodes
             if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and not is_symbolic(n)]
    missing = {n.target for n in nodes if not _handled(n)}
    writes_views = any(n.target._schema.is_mutable and n.args and isinstance(n.args[0], torch.fx.Node)
                       and aliased(n.args[0], n) for n in nodes)
    table = {op: fn for op, fn in torch.export.default_decompositions().items() if op in missing}
    return program.run_decompositions(table) if table or writes_views else program


def _handled(node) -> bool:
    """Whether the table imports `node`: it has a handler, and one that covers only some forms of its op
    (`handles`: einsum's, pad's) covers this one."""
    handler = lookup(op_name(node.target), None)
    return handler is not None and getattr(handler, "handles", lambda _: True)(node)


def _export_with_fallback(model, inputs: tuple, dynamic_seq: bool, fallback: bool = True):
    spec = _dynamic_shapes(inputs) if dynamic_seq else None
    if dynamic_seq and spec is None:
        warnings.warn("actsparse: no rank-2 integer input with at least 2 positions to make symbolic; importing "
                      "with the example's static shapes (for other sizes export it with dynamic_shapes and compile the "
                      "ExportedProgram)", stacklevel=3)
    if spec is not None:
        try:
            return torch.export.export(model, inputs, strict=False, dynamic_shapes=spec)
        except Exception as err:  # noqa: BLE001 - any export failure falls back to static shapes
            if not fallback:
                raise FrontendError(f"exporting with a symbolic sequence length failed ({_first_line(err)})") from err
            warnings.warn(f"actsparse: exporting with a symbolic sequence length failed ({_first_line(err)}); "
                          "importing with the example's static shapes instead", stacklevel=3)
    # fresh tensors: an export with a dynamic dim marks its example tensors, and a later static export of the
    # same tensors then fails with "Constraints violated"
    fresh = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)
    try:
        return torch.export.export(model, fresh, strict=False)
    except Exception as err:
        raise FrontendError(f"torch.export could not export {type(model).__name__}: {_first_line(err)}. "
                            f"Hints: {HINTS}.") from err


def _dynamic_shapes(inputs: tuple):
    """{1: seq} for every rank-2 integer tensor (token ids, attention masks), all sharing one dim."""
    seq = torch.export.Dim.DYNAMIC
    spec = tuple({1: seq} if isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[1] >= 2
                 and not x.is_floating_point() and x.dtype != torch.bool else None for x in inputs)
    return spec if any(s is not None for s in spec) else None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
