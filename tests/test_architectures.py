"""Every causal-LM architecture of transformers, enumerated from its auto mapping (not a list of ours).

The full run — every architecture built tiny, imported, run by the IR interpreter against torch, its MLPs
detected, and optionally built with TVM in auto mode — takes far longer than CI allows (about 196
architectures at 2–20 s each on 2 cores), so it is a script run by hand that writes the README table:

    python -m actsparse.scripts.arch_table --write            # + --no-compile to skip the TVM builds

This test checks, each run, a deterministic slice that rotates by the date: architecture i of the sorted
mapping is checked on days d with i % GROUPS == d % GROUPS (date.toordinal()), so every architecture is checked
once every GROUPS days; the first one of the slice that imports is also built with TVM (auto mode) and must
match torch at rtol 1e-3. Every checked row must equal the README's (the table is current for what the test
ran). ACTSPARSE_ARCHS=llama,opt checks the named ones instead. The configs of all architectures are shrunk every
run (cheap: no model is built).
"""

from __future__ import annotations

import datetime
import math
import os

import pytest

pytest.importorskip("transformers")

from actsparse.scripts.arch_table import (  # noqa: E402
    CHECKPOINT_VALUES,
    LIMITS,
    ArchResult,
    causal_lm_architectures,
    causal_lm_part,
    check_architecture,
    kept_layers,
    readme_path,
    table_rows,
    tiny_config,
)

PER_RUN = 4
ARCHS = causal_lm_architectures()
GROUPS = math.ceil(len(ARCHS) / PER_RUN)


def todays_slice() -> list[str]:
    named = os.environ.get("ACTSPARSE_ARCHS")
    if named:
        return named.split(",")
    day = datetime.date.today().toordinal()
    return [a for i, a in enumerate(ARCHS) if i % GROUPS == day % GROUPS]


def test_the_enumeration_is_transformers_own_mapping():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert ARCHS == sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) and len(ARCHS) > 100
    rows = table_rows(readme_path().read_text())
    assert set(rows) <= set(ARCHS), "the README table names architectures transformers no longer has"


def test_every_config_shrinks():
    big = []
    for arch in ARCHS:
        try:
            config = tiny_config(arch)
        except Exception:  # noqa: BLE001 - a config that cannot be made is a row of the table, not a test failure
            continue
        for sub in [config] + [getattr(config, k) for k in ("text_config",) if hasattr(config, k)]:
            if getattr(sub, "hidden_size", 0) and sub.hidden_size > 64 or getattr(sub, "num_hidden_layers", 0) > 4:
                big.append(arch)
    assert len(big) <= len(ARCHS) // 10, f"configs not shrunk: {big}"


def test_tiny_configs_keep_one_layer_of_each_kind():
    assert kept_layers(["linear_attention"] * 3 + ["full_attention"], 4) == [0, 3]
    assert kept_layers(["full_attention"] * 6, 6) == [0, 1] and kept_layers(None, 1) == [0]
    hybrid = tiny_config("qwen3_next")  # linear attention x3, then full attention: both kinds are tested
    assert hybrid.num_hidden_layers == 2 and set(hybrid.layer_types) == {"linear_attention", "full_attention"}
    jamba = tiny_config("jamba")  # attention every 8th layer from the 4th: kept as one of the two layers
    assert set(jamba.layers_block_type) == {"mamba", "attention"}
    # however a config spells its kinds: a pattern repeated over the layers, a list of the attention layers'
    # indices (renumbered), per-layer names; two of a kind where the architecture needs them (Zamba's tying)
    assert tiny_config("recurrent_gemma").block_types == ["recurrent", "attention"]
    bamba = tiny_config("bamba")
    assert bamba.num_hidden_layers == 2 and bamba.attn_layer_indices == [1]
    assert tiny_config("zamba2").layers_block_type == ["linear_attention", "hybrid"]
    assert tiny_config("zamba").layers_block_type == ["linear_attention"] * 2 + ["hybrid"] * 2
    assert kept_layers(["a", "a", "b", "a", "b"], 5, per_kind=2) == [0, 1, 2, 4]
    # per-layer settings keyed by layer index keep only kept layers (else its config refuses to build)
    assert tiny_config("gemma4_text").num_hidden_layers == 2


def test_shrinker_keeps_the_ratios_models_validate():
    assert set(LIMITS) | set(CHECKPOINT_VALUES) <= set(ARCHS), "an entry names an architecture transformers lacks"
    mamba2 = tiny_config("mamba2")  # Mamba-2's B/C groups divide its heads
    assert mamba2.num_heads % mamba2.n_groups == 0
    zamba2 = tiny_config("zamba2")  # Zamba-2's mamba heads · head dim = expand · width
    assert zamba2.n_mamba_heads * zamba2.mamba_headdim == zamba2.mamba_expand * zamba2.hidden_size
    dots = tiny_config("dots3_note_text")  # its sliding layers' MLA head_dim stays nope + rope (validated on build)
    sliding = dots.per_layer_config["sliding_attention"]
    assert sliding.head_dim == sliding.qk_nope_head_dim + sliding.qk_rope_head_dim and dots.hidden_size <= 64
    from transformers import MusicgenForCausalLM

    decoder = causal_lm_part(tiny_config("musicgen"), MusicgenForCausalLM)  # a composite: its decoder is the LM
    assert type(decoder).__name__ == "MusicgenDecoderConfig" and decoder.hidden_size <= 64
    # stages that sum to the layer count keep their picked layers, each stage at least one, whole (attention, mlp)
    # pairs where the config lists a layer as two entries (Dory: input / recurrent / output stages)
    dory = tiny_config("dory")
    stages = (dory.n_input_layers, dory.n_recurrent_layers, dory.n_output_layers)
    assert sum(stages) == dory.num_hidden_layers == len(dory.layer_types) and min(stages) >= 1
    assert {"sliding_attention", "full_attention"} <= set(dory.layer_types) and "mlp" not in dory.layer_types
    assert kept_layers(list("abab" * 3), 12, unit=2, stages=[(0, 4), (4, 10), (10, 12)]) == [0, 1, 2, 3, 4, 5, 10, 11]


@pytest.mark.parametrize("arch", todays_slice())
def test_architecture_row_is_current(arch):
    rows = table_rows(readme_path().read_text())
    first_importing = next((a for a in todays_slice() if f"| {a} | yes |" in rows.get(a, "")), None)
    result: ArchResult = check_architecture(arch, compile=arch == first_importing)
    if arch == first_importing:
        assert result.compiled, f"{arch}: imports but the TVM build fails or differs: {result.reason}"
    if arch not in rows:
        pytest.skip(f"{arch} is not in the README table yet: run python -m actsparse.scripts.arch_table {arch} "
                    "--write")
    want, got = rows[arch].split("|"), result.row().split("|")
    want[5] = got[5] = ""  # the TVM column: the script may have built it or not
    assert got == want, f"{arch}: README row is stale (or a regression): {result.row()} vs {rows[arch]}"
