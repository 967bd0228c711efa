"""benchmarks/decode.py's synthetic Mistral-dims decoder (here at tiny dims): ~90% of the MLP neurons are inactive
per token on tokens it was not calibrated on, and its dense GGUF holds every tensor llama.cpp's `llama` needs."""

import numpy as np
import pytest
import torch

from actsparse.benchmarks import decode_models


def test_synthetic_decoder_has_about_ninety_percent_inactive_neurons_per_token():
    model = decode_models.build_mistral(layers=2, vocab=512, max_seq=32, dtype="float32", small=True)
    seen = []
    hooks = [layer.mlp.act_fn.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
             for layer in model.model.layers]
    ids = torch.randint(256, 512, (1, 24), generator=torch.Generator().manual_seed(7))  # not the calibration tokens
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    active = [float((a > 0).float().mean()) for a in seen]
    assert len(active) == 2 and all(0.05 < a < 0.2 for a in active), active
    per_token = (seen[0][0] > 0).float()  # which neurons fire depends on the token
    assert float((per_token[0] != per_token[1]).float().mean()) > 0.05


def test_dense_gguf_has_the_llama_tensors(tmp_path):
    gguf = pytest.importorskip("gguf")
    model = decode_models.build_mistral(layers=2, vocab=512, max_seq=32, dtype="float16", small=True)
    path = tmp_path / "m.gguf"
    decode_models.write_llama_gguf(model, str(path), "float16")
    reader = gguf.GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    assert len(names) == 3 + 9 * 2 and {"token_embd.weight", "blk.1.ffn_down.weight"} <= names
    gate = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate.weight")
    assert gate.tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(np.asarray(gate.data).reshape(model.model.layers[0].mlp.gate_proj.weight.shape),
                                  model.model.layers[0].mlp.gate_proj.weight.detach().numpy())


def test_step_profile_replays_every_kernel_of_a_step_and_counts_their_weight_bytes():
    """benchmarks/decode_profile.py at tiny dims: the recorded step holds one exact MLP kernel per layer, the q/k/v
    call, the o linear and the output projection; the bytes it charges the exact MLP are the gate plus the active
    share of up and down; replaying the step's calls writes the logits the step itself wrote."""
    from dataclasses import replace

    import actsparse
    from actsparse import targets
    from actsparse.benchmarks import decode_profile

    model = decode_models.build_mistral(layers=1, vocab=512, max_seq=24, dtype="float16", small=True).float()
    every_gate_row = replace(targets.get("x86"), exact_gate="dense")   # the exact kernel (not the certified one)
    lm = actsparse.compile(model, target=every_gate_row, mode="exact", max_seq=24, quantize="fp16")
    prompt, feed = np.array([[300, 301, 302]]), np.array([400, 401, 402])
    per_step, total = decode_profile.profile(lm, prompt, feed, active=0.25, repeats=1)
    kinds = {k.split()[0]: v for k, v in per_step.items()}
    mlp = next(v for k, v in kinds.items() if "gmlp_exact" in k)
    d, n_ff = decode_models.SMALL["hidden_size"], decode_models.SMALL["intermediate_size"]
    assert mlp[2] == 1 and mlp[1] == n_ff * d * 2 * (1 + 2 * 0.25)  # fp16: gate + a quarter of up and down
    linears = sum(v[2] for k, v in kinds.items() if "_linear_" in k)
    assert linears == 1 + 1  # o and the output projection
    (qkv,) = [v for k, v in kinds.items() if "_linears_" in k]   # q, k and v: one call (codegen/lower_siblings.py)
    heads, kv_heads = decode_models.SMALL["num_attention_heads"], decode_models.SMALL["num_key_value_heads"]
    assert qkv[2] == 1 and qkv[1] == d * d * (1 + 2 * kv_heads / heads) * 2   # every one of its fp16 weights
    assert total > 0 and all(v[0] >= 0 for v in per_step.values())
    state = lm.prefill(prompt)
    for token in feed[:-1]:
        _, state = lm.step(int(token), state)
    calls = decode_profile.record_step(lm, state, feed[-1])
    expected, _ = lm.step(int(feed[-1]), lm.prefill(np.concatenate([prompt[0], feed[:-1]])[None]))
    logits_buffers = [a for _, s, args in calls if "_linear_" in s for a in args[-1:]][-1:]  # lm_head's output
    for func, _, args in calls:
        func(*args)
    np.testing.assert_allclose(logits_buffers[0].numpy().reshape(-1), expected, rtol=1e-5, atol=1e-6)


def test_step_profile_charges_the_bound_predictors_certified_kernel_its_listed_gate_rows():
    """decode_profile on the bound predictor (tiny dims): one certified MLP kernel per layer (the scores computed
    inside it) and no select, listed or score-linear call; its bytes are the int8 copy and the per-neuron
    coefficients whole, the gate rows of the neurons the step's scores list, and the active share of up and down."""
    import actsparse
    from actsparse.benchmarks import decode_profile

    model = decode_models.build_mistral(layers=1, vocab=512, max_seq=24, dtype="float16", small=True).float()
    lm = actsparse.compile(model, mode="predictor", predictor="bound", max_seq=24, quantize="fp16")
    prompt, feed = np.array([[300, 301, 302]]), np.array([400, 401, 402])
    per_step, _ = decode_profile.profile(lm, prompt, feed, active=0.25, repeats=1)
    kinds = {k.split()[0]: v for k, v in per_step.items()}
    assert not any(k.startswith(("actsparse_select", "actsparse_gmlp_listed", "actsparse_gmlp_scored"))
                   for k in kinds), list(kinds)
    mlp = next(v for k, v in kinds.items() if "gmlp_certified" in k)
    d, n_ff = decode_models.SMALL["hidden_size"], decode_models.SMALL["intermediate_size"]
    whole = n_ff * d * 34 // 32 + n_ff * 4          # the q8_0 copy of W_gate and one float32 coefficient per neuron
    listed = (mlp[1] - whole - n_ff * d * 2 * 2 * 0.25) / (n_ff * d * 2)   # the gate rows' share the bytes imply
    assert mlp[2] == 1 and 0.0 < listed <= 1.0 and abs(listed * n_ff - round(listed * n_ff)) < 1e-6


def test_gate_prefilter_certifies_only_inactive_neurons(capsys):
    """benchmarks/gate_prefilter.py at tiny dims: its bounds certify a share of the inactive neurons and never an
    active one (the script raises if a certified neuron is active)."""
    from actsparse.benchmarks import gate_prefilter

    assert gate_prefilter.main(["--small", "--tokens", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shares = [float(line.split("certifies ")[1].split("%")[0]) for line in lines if "certifies" in line]
    assert len(shares) == 2 and all(20.0 < s <= 100.0 for s in shares), lines


def test_decode_rounds_interleave_the_runners_and_take_ratios_within_a_round():
    """benchmarks/decode.py part (a): every runner once per round, the first one rotating; medians, spreads, a failed
    runner's note, and ratios as medians of the per-round ratios (a slow round hits both sides alike)."""
    from actsparse.benchmarks import decode_runners as decode

    calls, rates = [], iter([4.0, 2.0, 8.0, 4.0, 2.0, 1.0])   # in call order

    def runner(name):
        def run():
            calls.append(name)
            return next(rates) if name != "llama.cpp" else "failed (exit 1)"
        return run

    got = decode.round_robin({"exact": runner("exact"), "dense": runner("dense"), "llama.cpp": runner("llama.cpp")},
                             3, settle=0.0)
    assert calls == ["exact", "dense", "llama.cpp", "dense", "llama.cpp", "exact", "llama.cpp", "exact", "dense"]
    assert got["exact"] == [4.0, 4.0, 2.0] and got["dense"] == [2.0, 8.0, 1.0]
    summary = decode.summarize(got)
    assert summary["exact"] == 4.0 and summary["spread"]["dense"] == [1.0, 2.0, 8.0]
    assert summary["llama.cpp"] == "failed (exit 1)" and "llama.cpp" not in summary["spread"]
    ratios = decode.round_ratios(got, [("exact", "dense"), ("exact", "llama.cpp")])
    assert ratios == {"exact / dense": 2.0}   # per round 2.0, 0.5, 2.0; the failed runner gives no ratio


def test_decode_ab_runs_one_artifact_under_two_trees_and_checks_their_tokens(tmp_path, capsys):
    """benchmarks/decode_ab.py: each tree's child process imports actsparse from that tree (here both link to this
    package) and decodes the same ids; the table names both packages and the greedy tokens agree. A tree without
    the package is refused (exit 2) before anything runs."""
    import os
    from pathlib import Path

    import transformers

    import actsparse
    from actsparse.benchmarks import decode_ab

    torch.manual_seed(0)
    folder = tmp_path / "tiny-llama"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=64, max_position_embeddings=32, pad_token_id=0)).eval().save_pretrained(folder)
    artifact = actsparse.compile(str(folder), mode="dense", max_seq=16).save(tmp_path / "tiny.actsparse")
    trees = []
    for tag in ("before", "after"):
        (tmp_path / tag).mkdir()
        os.symlink(Path(actsparse.__file__).parent, tmp_path / tag / "actsparse")
        trees.append(str(tmp_path / tag))
    assert decode_ab.main([str(artifact), "--trees", ",".join(trees), "--tokens", "3", "--repeats", "2",
                           "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("/actsparse/__init__.py") == 2 and "the same greedy tokens: True" in out, out
    assert decode_ab.main([str(artifact), "--trees", f"{trees[0]},{tmp_path}"]) == 2
