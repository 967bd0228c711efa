"""Save and load the tiny model's committed weights: safetensors (float16) + a JSON sidecar.

Why this format: safetensors holds tensors only (no pickle, nothing executes on load) and float16 halves the
repo footprint; the sidecar JSON holds the config needed to rebuild the module plus the training recipe and
measured metrics, so a reader can check what the weights claim without running anything. Loading upcasts to
float32 because the compiler's reference paths and the tests compare in float32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .tiny import TinyConfig, TinyLlama

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
RETRAIN_HINT = "python -m actsparse.models.train --kind {kind}"


def weight_paths(kind: str, directory: Path | str = WEIGHTS_DIR) -> tuple[Path, Path]:
    """(safetensors path, json path) for a model kind such as "drelu" or "swiglu"."""
    directory = Path(directory)
    return directory / f"tiny_{kind}.safetensors", directory / f"tiny_{kind}.json"


def save_checkpoint(
    model: TinyLlama, kind: str, metadata: dict[str, Any], directory: Path | str = WEIGHTS_DIR
) -> tuple[Path, Path]:
    """Write float16 weights and `{"config": ..., **metadata}` as JSON; returns both paths."""
    from safetensors.torch import save_file

    tensors_path, json_path = weight_paths(kind, directory)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to(torch.float16).contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(tensors_path), metadata={"kind": kind, "format": "pt"})
    sidecar = {"kind": kind, "config": model.config.to_dict(), **metadata}
    json_path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return tensors_path, json_path


def load_metadata(kind: str = "drelu", directory: Path | str = WEIGHTS_DIR) -> dict[str, Any]:
    """The JSON sidecar (config, training args, final metrics) of a committed checkpoint."""
    _, json_path = weight_paths(kind, directory)
    if not json_path.exists():
        raise FileNotFoundError(
            f"no tiny model {kind!r} at {json_path}; train it with `{RETRAIN_HINT.format(kind=kind)}`"
        )
    return json.loads(json_path.read_text())


def load_tiny(kind: str = "drelu", directory: Path | str = WEIGHTS_DIR) -> TinyLlama:
    """The committed tiny model of `kind`, float32, in eval mode."""
    from safetensors.torch import load_file

    metadata = load_metadata(kind, directory)
    tensors_path, _ = weight_paths(kind, directory)
    model = TinyLlama(TinyConfig.from_dict(metadata["config"]))
    state = {name: t.to(torch.float32) for name, t in load_file(str(tensors_path)).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
