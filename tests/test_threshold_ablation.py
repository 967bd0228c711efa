"""benchmarks/threshold_ablation.py: the parts it installs and the sparsity it reports (issue 15 item 5)."""

from __future__ import annotations

import numpy as np
import pytest

from actsparse.benchmarks.threshold_ablation import held_sparsity, part
from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.sparsity_methods import calibrate_blocks, measured_effective


@pytest.mark.parametrize("name", ["wina-greedy", "rotated-wina-greedy"])
def test_parts_sparsify_one_matrix_and_the_sparsities_add_up_to_the_effective_one(name):
    rng = np.random.default_rng(0)
    d, n = 16, 32
    block = BlockWeights(*(rng.standard_normal(s).astype(np.float32) / 4 for s in ((n, d), (n, d), (d, n))),
                         "gelu_tanh")
    rows = rng.standard_normal((256, d)).astype(np.float32) * np.linspace(0.1, 2, d, dtype=np.float32)
    held = rng.standard_normal((64, d)).astype(np.float32) * np.linspace(0.1, 2, d, dtype=np.float32)
    plan = calibrate_blocks([block], [rows], name, 0.4, progress=False)[0]
    px, ph = held_sparsity(block, plan, held)
    assert px > 0.1 and ph > 0.1
    share_x, share_h = block.byte_shares()
    assert share_x * px + share_h * ph - plan.rotation_share == pytest.approx(measured_effective(block, plan, held))
    x_only, h_only = held_sparsity(block, part(plan, "x"), held), held_sparsity(block, part(plan, "h"), held)
    assert x_only[0] == pytest.approx(px) and x_only[1] < 0.05   # h kept (but for exact zeros)
    assert h_only[0] == 0.0 and h_only[1] > 0.1
