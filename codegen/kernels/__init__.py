"""TIR kernels for the sparse and dense gated MLPs and for Linear layers, with their schedule parameters.

One kernel family per schedule type: `CpuSchedule` -> `sparse_mlp` / `linear` (x86, arm), `GpuSchedule` ->
`cuda_mlp`. The functions below take the same arguments in both families and pick the family from the
type of `sched` (a table, `FAMILIES`), so the lowering asks for "the exact kernel for this target's
schedule" and never names a target.

Submodules import TVM, so they load lazily: `from actsparse.codegen.kernels import sparse_mlp`.
"""

import importlib

__all__ = ["CpuSchedule", "GpuSchedule", "build_standalone", "common", "cuda_blocks", "cuda_mlp", "linear", "gate_up",
           "sibling_linears", "schedule",
           "sparse_mlp", "gathered_mlp", "scored_mlp", "threshold_mlp", "predictor_kernels", "input_sparse_mlp",
           "cuda_input_mlp", "routed_moe", "cuda_routed", "attention", "kernel", "has_kernel", "KERNELS", "family_of"]

_ATTRS = {"CpuSchedule": "schedule", "GpuSchedule": "schedule", "build_standalone": "common"}
_SUBMODULES = ("common", "cuda_blocks", "cuda_mlp", "linear", "gate_up", "sibling_linears", "quant_blocks", "int8_dots",
               "quant_int8", "rows", "schedule",
               "sparse_mlp", "gathered_mlp", "scored_mlp", "threshold_mlp", "predictor_kernels", "input_sparse_mlp",
               "cuda_input_mlp", "routed_moe", "routed_input", "cuda_routed", "cutoff_mlp", "cuda_cutoff_mlp",
               "attention")

# schedule type -> kernel name -> (module, function)
FAMILIES = {
    "CpuSchedule": {"exact": ("sparse_mlp", "sparse_gated_mlp"),
                    "indexed": ("gathered_mlp", "sparse_gated_mlp_indexed"),
                    "listed": ("gathered_mlp", "sparse_gated_mlp_listed"),
                    "dense": ("sparse_mlp", "dense_gated_mlp"), "linear": ("linear", "linear"),
                    "gate_up": ("gate_up", "gate_up"), "linears": ("sibling_linears", "sibling_linears"),
                    "threshold": ("threshold_mlp", "threshold_gated_mlp"),
                    "sign_score": ("predictor_kernels", "sign_score"),
                    "select": ("predictor_kernels", "select_active"),
                    "scored": ("scored_mlp", "scored_gated_mlp"),
                    "certified": ("scored_mlp", "certified_gated_mlp"),
                    "input": ("input_sparse_mlp", "input_sparse_gated_mlp"),
                    "routed": ("routed_moe", "routed_moe"),
                    "routed-input": ("routed_input", "routed_input_moe"),
                    "cutoff": ("cutoff_mlp", "cutoff_gated_mlp"),
                    "cutoff-dense": ("cutoff_mlp", "cutoff_dense_gated_mlp"),
                    "attention": ("attention", "attention")},
    "GpuSchedule": {"exact": ("cuda_mlp", "sparse_gated_mlp"), "indexed": ("cuda_mlp", "sparse_gated_mlp_indexed"),
                    "dense": ("cuda_mlp", "dense_gated_mlp"), "linear": ("cuda_mlp", "linear"),
                    "threshold": ("cuda_mlp", "threshold_gated_mlp"),
                    "sign_score": ("predictor_kernels", "sign_score_cuda"),
                    "scored": ("cuda_mlp", "scored_gated_mlp"),
                    "cutoff": ("cuda_cutoff_mlp", "cutoff_gated_mlp"),
                    "cutoff-dense": ("cuda_cutoff_mlp", "cutoff_dense_gated_mlp"),
                    "input": ("cuda_input_mlp", "input_sparse_gated_mlp"),
                    "routed-slots": ("cuda_routed", "routed_gated_mlp")},
}
KERNELS = ("exact", "indexed", "listed", "dense", "linear", "gate_up", "linears", "threshold", "sign_score", "select",
           "scored", "certified", "input", "routed", "routed-input", "routed-slots", "cutoff", "cutoff-dense",
           "attention")
FAMILY_NAMES = {"CpuSchedule": "cpu", "GpuSchedule": "cuda"}  # the names sparse variants declare lowerings under


def family_of(sched) -> str:
    """"cpu" or "cuda": the kernel family a schedule selects."""
    try:
        return FAMILY_NAMES[type(sched).__name__]
    except KeyError:
        raise TypeError(f"no kernel family for schedule {type(sched).__name__}; known: {', '.join(FAMILIES)}") \
            from None


def has_kernel(name: str, sched) -> bool:
    """Whether `sched`'s family has kernel `name` (the CPU's one-call gate / up and sibling linears: CUDA keeps the
    linear kernels)."""
    return name in FAMILIES.get(type(sched).__name__, {})


def kernel(name: str, *args, sched, **kwargs):
    """The PrimFunc of kernel `name` (one of KERNELS) for `sched`'s family.

    kernel("exact", d, n_ff, gate_act=..., dtype=..., sched=schedule_for(target)) and so on: the arguments of
    the family's factory (`sparse_mlp.sparse_gated_mlp`, `linear.linear`, ...).
    """
    family = FAMILIES.get(type(sched).__name__)
    if family is None:
        raise TypeError(f"no kernel family for schedule {type(sched).__name__}; known: {', '.join(FAMILIES)}")
    if name not in family:
        raise ValueError(f"unknown kernel {name!r}; valid: {', '.join(family)}")
    module, fn = family[name]
    return getattr(importlib.import_module(f".{module}", __name__), fn)(*args, sched=sched, **kwargs)


def __getattr__(name):
    if name in _ATTRS:
        return getattr(importlib.import_module(f".{_ATTRS[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
