"""Decoding architectures whose forward fights the KV-cache export, each found by a sweep of transformers' causal
LMs (tiny configs of scripts/arch_table.py): OPT derives positions from the attention mask (exported with an
all-ones mask over the filled slots), BLOOM computes a length for a branch it does not take (dead code dropped
before import), DeepSeek-V3's MLA attention uses ops the table lacks (torch's decompositions, as the full-sequence
import does). Greedy decoding equals transformers' `generate` token for token."""

import pytest
import torch

import actsparse

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


@pytest.mark.parametrize("arch, mode", [("opt", "exact"), ("bloom", "dense"), ("deepseek_v3", "dense")])
def test_greedy_decoding_equals_transformers(arch, mode):
    from actsparse.scripts.arch_table import build_tiny, example_ids

    model = build_tiny(arch)
    ids = example_ids(model)
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                                  do_sample=False)
    lm = actsparse.compile(model, mode=mode, max_seq=16)
    if mode == "exact":  # OPT's fc1 -> relu -> fc2 made exactly sparse
        assert sum(lm.report.pass_stats.get("sparsify-exact", {}).values()) >= 1
    assert torch.equal(lm.generate(ids, 6), expected)
