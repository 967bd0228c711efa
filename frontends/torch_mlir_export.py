"""torch.nn.Module -> torch-dialect module, through torch-mlir's FX importer, keeping what the importer wants.

    module = export_mlir(model, (input_ids,))            # then torch_mlir.import_mlir(module)
    export_mlir(model, (input_ids,), path="model.mlir")   # also written as text, with its locations

A convenience: plain `torch_mlir.fx.export_and_import(model, ...)` modules import too, but their weight blobs
carry automatic names (`torch_tensor_<shape>_<dtype>`), so the importer needs the state dict to name them. Here
the program is exported as the torch.export frontend exports it (`torch_export.export_program`: symbolic `seq`,
MoE routing, error hints), resource blobs are named by state-dict FQN, symbolic shapes are bound and the inputs
keep their names. Requires torch-mlir (imported on first use).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .torch_export import export_program
from .torch_importer import op_name
from .torch_mlir_load import main_func, torch_mlir_bindings

WRAPPERS = ("wrap_with_set_grad_enabled", "wrap_with_autocast")


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
    fx, ir, torch_d, FxImporter = torch_mlir_bindings()
    from torch_mlir.extras.fx_importer import create_mlir_tensor_type

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
    func = main_func(module, "<exported module>")
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


__all__ = ["export_mlir"]
