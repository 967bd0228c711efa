"""The recovery fine-tune as the SmolLM2 run uses it (only the MLPs train, checkpoints every few steps): the
L1-weighted loss falls and sparsity rises within a few steps on a tiny model, frozen weights stay as they were,
and a checkpoint is safetensors (no pickle) that round-trips into a freshly relufied model exactly."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import actsparse
from actsparse.models import TinyConfig, TinyLlama
from actsparse.models.data import load_corpus, random_batch
from actsparse.recipes import (
    ActivationCapture,
    Stage,
    layer_sparsity,
    lm_loss,
    load_recovered,
    plot_recovery,
    read_metadata,
    recover,
    save_recovered,
)
from actsparse.relufication import RelufyError

torch.set_num_threads(1)
SMALL = TinyConfig(d_model=32, n_layers=2, n_heads=2, n_ff=64, max_seq=64, mlp_act="swiglu")


def _relufied(config: TinyConfig = SMALL, seed: int = 0):
    torch.manual_seed(seed)
    return actsparse.relufy(TinyLlama(config).eval(), "drelu")


def _mlps_only(model) -> dict[str, torch.Tensor]:
    """Freeze everything but the MLPs (as examples/relufy_smollm2.py does); returns copies of the frozen weights."""
    frozen = {}
    for name, p in model.named_parameters():
        p.requires_grad = ".mlp." in name
        if not p.requires_grad:
            frozen[name] = p.detach().clone()
    return frozen


def _weighted_loss(model, batch, lam: float) -> float:
    """Next-token loss + λ · L1 of the MLP intermediates on a held-out batch (what recover minimises)."""
    with torch.no_grad(), ActivationCapture(model, detach=True) as capture:
        return float(lm_loss(model.eval(), batch) + lam * capture.l1())


def _sparsity(model, batches) -> float:
    return float(np.mean(list(layer_sparsity(model, batches).values())))


def test_mlp_only_recovery_lowers_l1_weighted_loss_raises_sparsity_and_checkpoints(tmp_path):
    model = _relufied()
    frozen = _mlps_only(model)
    corpus = load_corpus(200_000)
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "recovered.safetensors"
    seen = []

    def checkpoint(m, history):
        seen.append(len(history.steps))
        save_recovered(m, path, {"steps_done": len(history.steps)})

    held = [random_batch(corpus.val, 16, 32, torch.Generator().manual_seed(1))]
    lam = 2.0
    weighted_before, sparsity_before = _weighted_loss(model, held[0], lam), _sparsity(model, held)
    stages = [Stage(1, lam), Stage(19, lam)]  # λ held from the first step: the L1-weighted loss is one objective
    history = recover(model, lambda step: random_batch(corpus.train, 8, 32, generator), stages, lr=2e-2,
                      progress=False, on_checkpoint=checkpoint, checkpoint_every=8)
    assert _weighted_loss(model, held[0], lam) < weighted_before - 0.2
    assert _sparsity(model, held) > sparsity_before + 0.02
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    assert seen == [8, 16, 20]
    assert not path.with_name(path.name + ".partial").exists()

    # safetensors, not pickle: an 8-byte little-endian header length, then a JSON header naming only MLP tensors
    raw = path.read_bytes()
    header = json.loads(raw[8: 8 + struct.unpack("<Q", raw[:8])[0]])
    names = set(header) - {"__metadata__"}
    assert names and all(".mlp." in n for n in names)
    assert read_metadata(path) == {"steps_done": 20}

    fresh = _relufied()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert not torch.allclose(fresh(ids), model(ids))
        assert load_recovered(fresh, path) == {"steps_done": 20}
        torch.testing.assert_close(fresh(ids), model.eval()(ids), rtol=0, atol=0)

    png = plot_recovery(history, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_recovered_rejects_another_models_checkpoint(tmp_path):
    model = _relufied()
    _mlps_only(model)
    path = save_recovered(model, tmp_path / "a.safetensors")
    wider = _relufied(TinyConfig(d_model=32, n_layers=2, n_heads=2, n_ff=96, max_seq=64, mlp_act="swiglu"))
    with pytest.raises(RelufyError, match="shape"):
        load_recovered(wider, path)
    one_layer = _relufied(TinyConfig(d_model=32, n_layers=1, n_heads=2, n_ff=64, max_seq=64, mlp_act="swiglu"))
    with pytest.raises(RelufyError, match="tensors this model lacks"):
        load_recovered(one_layer, path)
    load_recovered(one_layer, path, allow_unused=True)  # a model cut to its first layers takes those layers
    kept = dict(one_layer.named_parameters())
    for name, p in model.named_parameters():
        if name in kept and p.requires_grad:
            assert torch.equal(kept[name], p)
    with pytest.raises(FileNotFoundError, match="no recovery checkpoint"):
        load_recovered(model, tmp_path / "missing.safetensors")
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(RelufyError, match="nothing to checkpoint"):
        save_recovered(model, tmp_path / "b.safetensors")
