"""relufy: turn a model's SwiGLU/GeGLU gated MLPs into ReLU-family ones, found by structure, ready for recovery.

    model = actsparse.relufy(model, kind="drelu")     # TurboSparse: down(relu(gate(x)) * relu(up(x)))
    model = actsparse.relufy(model, kind="relu")      # ProSparse:   down(relu(gate(x)) * up(x))

How the blocks are found: the model is imported into the IR (`frontends.torch_export`), `canonicalize` and
`detect-gated-mlp` run, and every `gated_mlp` node is mapped back to torch through its weight names
(`model.layers.0.mlp.gate_proj.weight` -> the `nn.Linear` at `model.layers.0.mlp.gate_proj`) and its location
(the MLP module, `model.layers.0.mlp`). No module class or attribute name is assumed, so any architecture whose
MLP the detector recognizes works (Llama, Qwen2, Mistral, Gemma, Phi-3's fused gate_up, the embedded TinyLlama).

Each MLP module is replaced by a `ReluGatedMLP` holding the model's own `nn.Linear`s (same weights, same state
dict names; a fused gate_up is split by rows into two Linears). Before the swap the module is checked
numerically: on a random input it must equal `ReluGatedMLP`'s computation *with the original activation*. A
module that does more than a plain gated MLP (a residual inside, a scale, a norm, a different activation) is
refused with an error naming it, rather than silently changed.

A relufied model has lost the smooth activation it was trained with; its loss is poor until a recovery
fine-tune (`actsparse.recipes.recover`: ProSparse's progressive L1) and, optionally, FATReLU threshold
shifting (`actsparse.recipes.shift_thresholds`). After relufy, `actsparse.compile(..., mode="exact")` works.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ActsparseError

KINDS = {"drelu": ("relu", "relu"), "relu": ("relu", "identity")}  # kind -> (gate act, up act)
DEFAULT_NAMES = ("gate_proj", "up_proj", "down_proj")


class RelufyError(ActsparseError):
    """A model (or one of its MLPs) cannot be relufied."""


def activate(t: torch.Tensor, kind: str, threshold: float = 0.0) -> torch.Tensor:
    """The activations of `ir/mlp.py`, in torch: silu, gelu, gelu_tanh, relu, fatrelu, identity."""
    if kind == "identity":
        return t
    if kind == "relu":
        return torch.relu(t)
    if kind == "fatrelu":
        return torch.where(t > threshold, t, 0.0)
    if kind == "silu":
        return F.silu(t)
    if kind in ("gelu", "gelu_tanh"):
        return F.gelu(t, approximate="tanh" if kind == "gelu_tanh" else "none")
    raise ValueError(f"unknown activation {kind!r}")


class ReluGatedMLP(nn.Module):
    """`down(act(gate(x)) * up_act(up(x)))` with act = relu or FATReLU (`threshold` > 0), up_act = relu (dReLU)
    or identity (ReLU / ProSparse).

    The Linears keep the attribute names they had in the replaced module (`names`), so state-dict keys do not
    change. `forward(x, return_intermediate=True)` also returns the [.., n_ff] intermediate (the tensor whose
    zeros the compiler exploits); the recovery recipe captures it with a pre-hook on `down`.
    """

    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear, kind: str = "drelu", threshold: float = 0.0,
                 names: tuple[str, str, str] = DEFAULT_NAMES):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        if len(set(names)) != 3:
            raise ValueError(f"names must be three distinct attribute names, got {names}")
        self.kind = kind
        self.threshold = float(threshold)
        self.names = tuple(names)
        for name, module in zip(self.names, (gate, up, down)):
            self.add_module(name, module)

    @property
    def gate(self) -> nn.Linear:
        return self._modules[self.names[0]]

    @property
    def up(self) -> nn.Linear:
        return self._modules[self.names[1]]

    @property
    def down(self) -> nn.Linear:
        return self._modules[self.names[2]]

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not value >= 0.0:
            raise ValueError(f"a FATReLU threshold must be >= 0, got {value}")
        self._threshold = float(value)

    def intermediate(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate(x), self.up(x)
        # threshold 0 exports as relu; t > 0 as where(g > t, g, 0), which canonicalize folds into fatrelu
        a = torch.relu(g) if self._threshold == 0.0 else torch.where(g > self._threshold, g, 0.0)
        return a * (torch.relu(u) if self.kind == "drelu" else u)

    def forward(self, x: torch.Tensor, return_intermediate: bool = False):
        h = self.intermediate(x)
        out = self.down(h)
        return (out, h) if return_intermediate else out

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, threshold={self._threshold:g}"


@dataclass(frozen=True)
class FoundMLP:
    """One detected gated MLP, mapped to torch: module path, its Linears' paths, the original activations."""

    path: str                    # the MLP module, relative to the root the weights are named from
    gate: str                    # Linear paths; `gate_up` (fused) is set instead of gate/up
    up: str
    down: str
    gate_up: str = ""
    gate_first: bool = True
    gate_act: str = "silu"
    up_act: str = "identity"
    threshold: float = 0.0


def relufy(model: nn.Module, kind: str = "drelu", example_inputs: tuple | None = None, *, inplace: bool = False,
           check_atol: float = 1e-5) -> nn.Module:
    """Replace every detected gated MLP of `model` by a `ReluGatedMLP` of `kind` ("drelu" or "relu").

    `model`: a torch module whose forward the torch frontend imports — a transformers causal LM (wrapped in
    `frontends.hf.CausalLMLogits` automatically), the embedded `TinyLlama`, or any module given
    `example_inputs`. Returns a relufied deep copy (or `model` itself with `inplace=True`). Blocks that already
    are ReLU-family are switched to `kind` too. Raises `RelufyError` if no gated MLP is found, if a block's
    weights are not `nn.Linear` modules (e.g. batched MoE experts), or if a module's forward is not a plain
    gated MLP (checked numerically against the detected structure).
    """
    if kind not in KINDS:
        raise RelufyError(f"unknown relufy kind {kind!r}; valid kinds: {', '.join(sorted(KINDS))} "
                          "(drelu = TurboSparse relu(gate)*relu(up), relu = ProSparse relu(gate)*up)")
    if not isinstance(model, nn.Module):
        raise RelufyError(f"relufy takes a torch.nn.Module, got a {type(model).__name__}")
    model = model if inplace else copy.deepcopy(model)
    traced, root, inputs = _export_view(model, example_inputs)
    found = find_gated_mlps(traced, inputs, root)
    if not found:
        raise RelufyError(f"no gated MLP found in {type(model).__name__}: relufy rewrites act(x·Wg)*(x·Wu)·Wd "
                          "blocks (SwiGLU, GeGLU, ...) and detection found none")
    # check every block before swapping any, so an error leaves an in-place model untouched
    swaps = [_replacement(root, block, kind, check_atol) for block in found]
    for parent, child, new in swaps:
        setattr(parent, child, new)
    return model


def find_gated_mlps(traced: nn.Module, inputs: tuple, root: nn.Module | None = None) -> list[FoundMLP]:
    """Import `traced`, detect its gated MLPs, and map each to module paths under `root` (default `traced`)."""
    from .frontends.torch_export import import_torch
    from .passes import parse_pipeline, run_pipeline

    root = traced if root is None else root
    was_training = traced.training
    try:
        graph = import_torch(traced.eval(), inputs, dynamic_seq=False)
    finally:
        traced.train(was_training)
    # detection only: the dense pipeline goes on to route MoE experts and fuse each block into its kernel's layout,
    # and relufy maps the plain `gated_mlp` blocks (MoE experts one by one) back to torch modules
    graph = run_pipeline(graph, parse_pipeline("canonicalize,detect-gated-mlp")).graph
    return [_map_block(node, root) for node in graph.nodes if node.op == "gated_mlp"]


def _export_view(model: nn.Module, example_inputs):
    """(module to export, root its weights are named from, example inputs)."""
    from .frontends.hf import CausalLMLogits

    if isinstance(model, CausalLMLogits):
        traced, root = model, model.model
    elif type(model).__module__.startswith("transformers"):
        traced, root = CausalLMLogits(model), model
    else:
        traced, root = model, model.get_submodule(getattr(model, "actsparse_prefix", "") or "")
    if example_inputs is None:
        vocab = getattr(getattr(root, "config", None), "vocab_size", None)
        if not vocab:
            raise RelufyError(f"relufy needs example_inputs to trace a {type(model).__name__} (token-id inputs are "
                              "made automatically only for causal LMs with config.vocab_size)")
        example_inputs = (torch.arange(1, 9).reshape(1, 8) % vocab,)
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    return traced, root, example_inputs


def _linear_path(weight_name: str, root: nn.Module, block_loc: str) -> str:
    if not weight_name.endswith(".weight"):
        raise RelufyError(f"gated MLP at {block_loc or '?'}: weight @{weight_name} is not the weight of an "
                          "nn.Linear (derived, transposed or batched-expert weights cannot be relufied in place)")
    path = weight_name[: -len(".weight")]
    module = _submodule(root, path)
    if not isinstance(module, nn.Linear):
        raise RelufyError(f"gated MLP at {block_loc or '?'}: {path} is a {type(module).__name__}, relufy needs "
                          "nn.Linear projections")
    return path


def _submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _map_block(node, root: nn.Module) -> FoundMLP:
    from .passes.match import common_module, module_path

    a = node.attrs
    loc = module_path(node.loc or "")
    weights = [w.attrs["name"] for w in node.inputs[1 : 3 if a.get("fused") else 4]]
    paths = [_linear_path(w, root, loc) for w in weights]
    if a.get("fused"):
        linears = {"gate": "", "up": "", "gate_up": paths[0], "down": paths[1], "gate_first": a.get("gate_first", True)}
    else:
        linears = {"gate": paths[0], "up": paths[1], "down": paths[2]}
    parents = [p.rsplit(".", 1)[0] if "." in p else "" for p in paths]
    mlp = loc if _contains(loc, paths) and _submodule(root, loc) is not None else common_module(*parents)
    if not _contains(mlp, paths):
        raise RelufyError(f"gated MLP at {loc or '?'}: its projections {paths} do not share a parent module")
    return FoundMLP(mlp, gate_act=a.get("gate_act", "silu"), up_act=a.get("up_act", "identity"),
                    threshold=float(a.get("threshold", 0.0)), **linears)


def _contains(path: str, children: list[str]) -> bool:
    return all(c.startswith(path + ".") if path else True for c in children) and all(c != path for c in children)


def _relative(child: str, parent: str) -> str:
    return child[len(parent) + 1 :] if parent else child


def _split_fused(fused: nn.Linear, gate_first: bool) -> tuple[nn.Linear, nn.Linear]:
    n = fused.out_features // 2
    halves = []
    for rows in (slice(0, n), slice(n, 2 * n)):
        lin = nn.Linear(fused.in_features, n, bias=fused.bias is not None, device=fused.weight.device,
                        dtype=fused.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(fused.weight[rows])
            if fused.bias is not None:
                lin.bias.copy_(fused.bias[rows])
        lin.weight.requires_grad_(fused.weight.requires_grad)
        halves.append(lin)
    return (halves[0], halves[1]) if gate_first else (halves[1], halves[0])


def _replacement(root: nn.Module, block: FoundMLP, kind: str, atol: float) -> tuple[nn.Module, str, ReluGatedMLP]:
    """(parent module, attribute name, its ReluGatedMLP) for one block, after the plain-gated-MLP check."""
    if not block.path:
        raise RelufyError(f"the whole {type(root).__name__} is one gated MLP: wrap it in a parent module to relufy it")
    old, where = root.get_submodule(block.path), block.path
    down = root.get_submodule(block.down)
    if block.gate_up:
        gate, up = _split_fused(root.get_submodule(block.gate_up), block.gate_first)
        names = ("gate_proj", "up_proj", _relative(block.down, block.path))
    else:
        gate, up = root.get_submodule(block.gate), root.get_submodule(block.up)
        names = tuple(_relative(p, block.path) for p in (block.gate, block.up, block.down))
    if any("." in n or _reserved(n) for n in names) or len(set(names)) != 3:
        names = DEFAULT_NAMES  # nested deeper than the MLP module, or clashing with ReluGatedMLP's own attributes
    _check_plain(old, where, gate, up, down, block, atol)
    new = ReluGatedMLP(gate, up, down, kind, names=names)
    new.train(old.training)
    parent_path, _, child = block.path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), child, new


def _reserved(name: str) -> bool:
    return hasattr(ReluGatedMLP, name) or name in ("kind", "names", "_threshold")


def _check_plain(module: nn.Module, where: str, gate, up, down, block: FoundMLP, atol: float) -> None:
    """module(x) must equal down(act(gate(x)) * up_act(up(x))) with the detected activations, on a random x."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, gate.in_features, generator=generator).to(gate.weight.device, gate.weight.dtype)
    with torch.no_grad():
        expected = down(activate(gate(x), block.gate_act, block.threshold) * activate(up(x), block.up_act))
        try:
            got = module(x)
        except Exception as err:  # noqa: BLE001 - any failure means it is not a plain MLP module
            raise RelufyError(f"{where} ({type(module).__name__}) cannot be called as mlp(x) "
                              f"({type(err).__name__}: {err}): its forward is not a plain gated MLP, so relufy "
                              "cannot replace it") from None
    got = got[0] if isinstance(got, (tuple, list)) else got
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(
            got, expected, rtol=1e-4, atol=atol * max(1.0, float(expected.abs().max()))):
        diff = (got - expected).abs().max().item() if isinstance(got, torch.Tensor) and got.shape == expected.shape \
            else float("nan")
        raise RelufyError(
            f"{where} ({type(module).__name__}): its forward is not a plain gated MLP — on a random input it differs "
            f"from down({block.gate_act}(gate(x)) * {block.up_act}(up(x))) built from its own Linears (max |diff| "
            f"{diff:.3g}), so replacing it would change more than the activation. Refusing to relufy it.")


def relu_mlps(model: nn.Module) -> list[tuple[str, ReluGatedMLP]]:
    """The `ReluGatedMLP` modules of a (relufied) model, in module order, with their paths."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ReluGatedMLP)]
