"""Checkpoints of a recovery fine-tune: the trained tensors in safetensors, written atomically.

Why: a long CPU fine-tune may be cut (time limit, shared machine), and what it reached so far should stay a
usable model. Only the parameters that train are stored (a recovery that freezes embeddings and attention saves
the MLPs alone, not a second copy of the base model); `load_recovered` puts them back into a model built the same
way (same base weights, same `relufy`). safetensors holds tensors and string metadata only: nothing executes on
load, unlike pickle. The file is written beside its target and renamed over it, so a cut run never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..relufication import RelufyError


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, by their state-dict names (tied weights once)."""
    return {name: p.detach().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_recovered(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the model's trainable parameters (float32) and `metadata` (JSON in the safetensors header)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = trained_state(model)
    if not state:
        raise RelufyError(f"{type(model).__name__} has no parameter that requires grad: nothing to checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata={"actsparse": json.dumps(metadata or {})})
    os.replace(partial, path)
    return path


def read_metadata(path: str | Path) -> dict:
    """The metadata `save_recovered` stored, without loading the tensors."""
    from safetensors import safe_open

    with safe_open(str(_existing(path)), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("actsparse", "{}"))


def load_recovered(model: nn.Module, path: str | Path, allow_unused: bool = False) -> dict:
    """Copy a checkpoint's tensors into `model` (in place) and return its metadata. Every stored name must be a
    parameter of `model` with the same shape: a checkpoint of another model is one clear error, not a silent
    partial load. `allow_unused`: tensors the model lacks are skipped (a model cut to its first layers takes
    those layers of a whole model's checkpoint); at least one must still match."""
    from safetensors.torch import load_file

    path = _existing(path)
    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = sorted(set(state) - set(params))
    if allow_unused and len(missing) < len(state):
        state = {n: t for n, t in state.items() if n in params}
    elif missing:
        raise RelufyError(f"checkpoint {path} holds {len(missing)} tensors this model lacks (first: {missing[0]}); "
                          "build the model as the recovery did (same base model, same actsparse.relufy kind)")
    wrong = [n for n, t in state.items() if tuple(t.shape) != tuple(params[n].shape)]
    if wrong:
        raise RelufyError(f"checkpoint {path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the model's is "
                          f"{tuple(params[wrong[0]].shape)}; it was saved from another model")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    return read_metadata(path)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recovery checkpoint at {path}; run the recovery (e.g. "
                                "`python examples/relufy_smollm2.py`) or pass the path it wrote")
    return path
