"""A decode step's planned buffers made once per loaded model, not once per step (CPU).

TVM's static memory planning (StaticPlanBlockMemory) gives every intermediate of a Relax function a slot in a few
storages, but the VM still allocates those storages and makes a tensor view of them for every call of every kernel
at each invocation: a SmolLM2-135M decode step made 490 `vm.builtin.alloc_tensor` and 13 `alloc_storage` calls,
about 0.5 of its 4.8 ms (benchmarks/decode_profile.py, session 47). A decode step runs thousands of times with the
same static shapes, so `lift_step_workspace` moves them out of it, right after the planning:

    step(inputs..., weights...)            ->  step(inputs..., weights..., storages..., tensors...)
                                               step_workspace() -> (storages..., tensors...)

The storages of static size, and the tensors of static shape and offset made from them, become trailing
parameters of `step` (after the weights, past `num_input`: the VM checks none of them per call), and a new function
`step_workspace` allocates them; the runtime calls it once and passes its result with the weights
(runtime/module.py). A tensor of symbolic shape (attention over the filled slots) stays a per-step view, of a
lifted storage. A storage holding a value the step returns (through a view or not) is not lifted: the next step
would overwrite what the caller holds. As every step writes its intermediates into the same memory, one loaded
model runs one step at a time (a TVM VM is not reentrant either).
"""

from __future__ import annotations

from ..ir.decoding import workspace_function

_VIEWS = ("relax.reshape", "relax.memory.view", "relax.memory.ensure_zero_offset")


def lift_step_workspace(functions: tuple[str, ...]):
    """The module pass (after StaticPlanBlockMemory, before LowerRuntimeBuiltin) lifting the static allocations of
    each Relax function in `functions` into `<name>_workspace` (module docstring)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="LiftStepWorkspace")
    def lift(mod, _ctx):
        for gv in list(mod.functions):
            if gv.name_hint in functions and isinstance(mod[gv], tvm.relax.Function):
                lifted = _lift(mod[gv], gv.name_hint)
                if lifted is not None:
                    mod[gv], workspace = lifted
                    mod[tvm.ir.GlobalVar(workspace_function(gv.name_hint))] = workspace
        return mod

    return lift


def _op_name(value) -> str | None:
    from tvm import relax

    return value.op.name if isinstance(value, relax.Call) and hasattr(value.op, "name") else None


def _static(shape) -> bool:
    from tvm import relax, tirx

    return isinstance(shape, relax.ShapeExpr) and all(isinstance(v, tirx.IntImm) for v in shape.values)


def _escaping(func) -> set:
    """The variables whose memory the function's result may hold: the result's, and what they view."""
    from tvm import relax

    defs = {b.var: b.value for block in func.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)}
    seen, todo = set(), [func.body.body]
    while todo:
        expr = todo.pop()
        if isinstance(expr, relax.Tuple):
            todo.extend(expr.fields)
        elif isinstance(expr, relax.Var) and expr not in seen:
            seen.add(expr)
            value = defs.get(expr)
            if isinstance(value, (relax.Var, relax.Tuple)):
                todo.append(value)
            elif _op_name(value) in _VIEWS or _op_name(value) == "relax.call_pure_packed":
                todo.extend(a for a in value.args if isinstance(a, relax.Var))
            elif isinstance(value, relax.TupleGetItem):
                todo.append(value.tuple_value)
    return seen


def _lift(func, name: str):
    """(the function with its static allocations as trailing parameters, the workspace function making them), or
    None when it has nothing to lift."""
    from tvm import relax, tirx

    bindings = [b for block in func.body.blocks for b in block.bindings]
    storages = {b.var: b for b in bindings if isinstance(b, relax.VarBinding)
                and _op_name(b.value) == "relax.memory.alloc_storage" and _static(b.value.args[0])}
    tensors_of: dict = {}
    for b in bindings:
        if isinstance(b, relax.VarBinding) and _op_name(b.value) == "relax.memory.alloc_tensor" \
                and b.value.args[0] in storages:
            tensors_of.setdefault(b.value.args[0], []).append(b)
    escaping = _escaping(func)
    for storage, allocs in tensors_of.items():
        if any(a.var in escaping for a in allocs):
            storages.pop(storage)
    if not storages:
        return None
    tensors = [b for s in storages for b in tensors_of.get(s, [])
               if isinstance(b.value.args[1], tirx.IntImm) and _static(b.value.args[2])]
    lifted = set(storages) | {b.var for b in tensors}
    kills = ("relax.memory.kill_storage", "relax.memory.kill_tensor")
    kept_blocks = [type(block)([b for b in block.bindings if b.var not in lifted and not (
        _op_name(b.value) in kills and b.value.args[0] in lifted)]) for block in func.body.blocks]
    params = [*func.params, *storages, *(b.var for b in tensors)]
    step = relax.Function(params, relax.SeqExpr(kept_blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs,
                          func.span)

    # the workspace function: the same allocations on fresh variables
    fresh = {v: relax.Var(v.name, v.ty) for v in lifted}
    made = [relax.VarBinding(fresh[s], storages[s].value) for s in storages]
    for b in tensors:
        storage, *rest = b.value.args
        made.append(relax.VarBinding(fresh[b.var], relax.Call(b.value.op, [fresh[storage], *rest], b.value.attrs,
                                                              b.value.ty_args)))
    outputs = [fresh[v] for v in params[len(func.params):]]
    result = relax.Tuple(outputs)
    workspace = relax.Function([], relax.SeqExpr([relax.BindingBlock(made)], result),
                               relax.TupleType([v.ty for v in outputs]), False)
    return step, workspace.with_attr("global_symbol", workspace_function(name))
