"""`module:factory` specs for CLI tests: tiny models built from small configs (random init)."""

import torch

from actsparse.models import TinyConfig, TinyLlama


def tiny(mlp_act: str) -> TinyLlama:
    torch.manual_seed(0)
    return TinyLlama(TinyConfig(d_model=64, n_layers=2, n_heads=2, n_ff=128, max_seq=64, mlp_act=mlp_act)).eval()


def tiny_drelu():
    return tiny("drelu")


def tiny_swiglu_with_inputs():
    return tiny("swiglu"), (torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(1)),)
