"""Recovery recipes for relufied models (`actsparse.relufy`): ProSparse's progressive L1 fine-tune and FATReLU
threshold shifting, with progress display and per-layer sparsity plots.

    from actsparse.recipes import Stage, recover, shift_thresholds, layer_sparsity, plot_layer_sparsity
    history = recover(model, batches, stages=[Stage(200, 0.02), Stage(200, 0.1)], lr=1e-3)
    shifted = shift_thresholds(model, heldout_batches, max_ppl_increase=0.01)
    plot_layer_sparsity(layer_sparsity(model, heldout_batches), "sparsity.png")
"""

from .checkpoint import load_recovered, read_metadata, save_recovered
from .fatrelu import ThresholdShift, shift_thresholds
from .plot import plot_layer_sparsity, plot_recovery
from .prosparse import (
    ActivationCapture,
    RecoveryHistory,
    Stage,
    l1_factor,
    l1_schedule,
    layer_sparsity,
    lm_loss,
    recover,
)

__all__ = ["ActivationCapture", "RecoveryHistory", "Stage", "ThresholdShift", "l1_factor", "l1_schedule",
           "layer_sparsity", "lm_loss", "load_recovered", "plot_layer_sparsity", "plot_recovery", "read_metadata",
           "recover", "save_recovered", "shift_thresholds"]
