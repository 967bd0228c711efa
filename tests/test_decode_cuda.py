"""A KV-cache decoder built for CUDA without a GPU: TVM's ops are scheduled by dlight, the module has the one-token
`step` function, and TVM's CUDA-graph rewrite captures our kernels of the step (what stays outside is listed);
the static `step_graph` (codegen/static_step.py) is captured whole, and the same rewrite built for llvm decodes
as transformers does.

One build (tiny Llama, exact mode) serves every CUDA test here; it sets no PassContext, so it also checks that a
decoder for CUDA is built with `relax.backend.use_cuda_graph` on by default (codegen/build.py). That option only
adds the capture regions, the functions and kernels are those of a build without it."""

import re

import pytest
import torch

from .kernel_cases import require_nvcc

tvm = pytest.importorskip("tvm")
transformers = pytest.importorskip("transformers")

# builtins that would make the host wait for the device (a value read back to size something): none in the step
HOST_SYNCS = ("vm.builtin.tensor_to_shape", "vm.builtin.copy_tensor_from_to", "vm.builtin.to_device")


def tiny_llama():
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96, vocab_size=128,
                                      max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=None,
                                      hidden_act="relu", initializer_range=0.1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def compile_for_cuda(model, cuda_graph: bool | None = None):
    """None: as users build it (the CUDA-graph rewrite on by default); True / False: set by the caller."""
    import contextlib

    import actsparse

    option = {"relax.backend.use_cuda_graph": cuda_graph}
    with tvm.transform.PassContext(config=option) if cuda_graph is not None else contextlib.nullcontext():
        return actsparse.compile(model, target="cuda", mode="exact", max_seq=16)


@pytest.fixture(scope="module")
def decoder():
    require_nvcc()
    lm = compile_for_cuda(tiny_llama())
    return lm, lm.module.executable.as_text()


def functions(text: str) -> dict[str, list[str]]:
    """VM bytecode function name -> the names it calls, in order."""
    from actsparse.codegen.step_launches import vm_functions

    return vm_functions(text)


def test_a_cuda_decoder_build_has_the_one_token_step_function(decoder):
    from actsparse.codegen.cuda_support import cuda_source

    lm, text = decoder
    fns = functions(text)
    assert "step" in fns and "main" in fns
    ours = [c for c in fns["step"] if c.startswith("actsparse_cuda_")]
    assert ours and all("_gpu" in c for c in fns["step"] if c.startswith("index_copy"))  # GPU cache writes
    # dlight scheduled TVM's own ops (softmax, norms, rotary, the attention matmuls): thread-bound kernels
    source = cuda_source(lm.module.executable.mod)
    others = set(re.findall(r"__global__ void __launch_bounds__\(\d+\) ((?!actsparse_)\w+?)(?:_kernel\w*)?\(", source))
    assert len(others) >= 5 and any("softmax" in k for k in others)
    assert any(k.startswith("matmul") for k in others)  # incl. the step's extent-1 one GEMV declines


@pytest.mark.parametrize("a, b, error", [((1, 2, 1, 1), (1, 2, 1, 16), AssertionError),
                                         ((2, 1, 264, 32), (2, 1, 32, 1), AttributeError)])
def test_the_gemv_rule_declines_a_matmul_where_dlights_fails(a, b, error):
    """probabilities [1, 2, 1, 1] @ values [1, 2, 1, 16]: the one-token step's attention over its own token
    (nothing to reduce); [2, 1, 264, 32] @ [2, 1, 32, 1], Zamba's Mamba step: 264 rows that do not divide into its
    tiles, whose count it then reads as a number (`extent.value` of an expression)."""
    from tvm import relax
    from tvm.s_tir import dlight as dl


    bb = relax.BlockBuilder()
    p, v = relax.Var("p", relax.TensorType(a, "float32")), relax.Var("v", relax.TensorType(b, "float32"))
    with bb.function("main", [p, v]):
        bb.emit_func_output(bb.emit(relax.op.matmul(p, v)))
    _declined_then_scheduled(relax.transform.LegalizeOps()(bb.get()), dl.gpu.GEMV, error)


def _declined_then_scheduled(mod, rule, error):
    """TVM 0.27's dlight `rule` raises `error` on mod's one PrimFunc (if this starts passing, the workaround can go);
    ours declines it, and the rules in order schedule it."""
    from tvm.s_tir import dlight as dl

    from actsparse import targets
    from actsparse.codegen.cuda_pipeline import declining, schedule_rules

    (prim,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    target = targets.get("cuda").tvm_target()
    with target:
        with pytest.raises(error):
            rule().apply(prim, target, False)
        assert declining(rule)().apply(prim, target, False) is None
        scheduled = dl.ApplyDefaultSchedule(*schedule_rules())(mod)
    (prim,) = [f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prim.attrs["tirx.is_scheduled"] and "threadIdx" in prim.script()


def test_a_reduction_dlights_reduction_rule_fails_on_is_declined_and_scheduled_by_the_next_rule():
    """sum(ones([kv - 1])), MPT's count of the cached positions (its ALiBi), fused into one function that reads no
    buffer: dlight's Reduction asserts in `detect_dominant_read`; ours declines, and the next rules schedule it."""
    from tvm import relax, tirx
    from tvm.s_tir import dlight as dl


    kv = tirx.Var("kv", "int64")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((kv,), "int64"))
    with bb.function("main", [x]):
        with bb.dataflow():
            ones = bb.emit(relax.op.ones(relax.ShapeExpr([kv - 1]), "int64"))
            total = bb.emit_output(bb.emit(relax.op.sum(ones)))
        bb.emit_func_output(total)
    fuse = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                     relax.transform.FuseOps(), relax.transform.FuseTIR()])
    _declined_then_scheduled(fuse(bb.get()), dl.gpu.Reduction, AssertionError)


def test_the_fallback_rule_schedules_a_symbolic_pad_that_dlights_cannot_fuse():
    """zeros [1, 32, 64 - seq, 128]: the pad of Qwen3-Next's and Kimi-Linear's chunked delta rule to its next chunk
    (seq bound by the frontend's guards). dlight's Fallback fails to fuse that extent; ours binds the symbolic loop
    to blockIdx.y and the 32 x 128 static elements to blockIdx.x x threadIdx.x. The models build: scripts/
    tiny_config.py's qwen3_next and kimi_linear for CUDA (by hand; a minute each, not in the suite)."""
    from tvm import relax, tirx
    from tvm.s_tir import dlight as dl

    from actsparse import targets
    from actsparse.codegen.cuda_pipeline import symbolic_safe_fallback

    seq = tirx.Var("seq", "int64")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, seq, 128), "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.zeros(relax.ShapeExpr([1, 32, 64 - seq, 128]), "float32")))
    mod = relax.transform.LegalizeOps()(bb.get())
    (prim,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    target = targets.get("cuda").tvm_target()
    with target:
        with pytest.raises(tvm.error.InternalError):  # TVM 0.27's rule; if this starts passing, ours can go
            dl.gpu.Fallback().apply(prim, target, False)
        scheduled = symbolic_safe_fallback().apply(prim, target, False).mod["main"]
    text = scheduled.script()
    assert 'T.thread_binding(T.int64(64) - seq, thread="blockIdx.y")' in text.replace("-1 * seq + T.int64(64)",
                                                                                   "T.int64(64) - seq")
    assert 'thread="threadIdx.x"' in text


def test_the_decode_step_is_ready_for_a_cuda_graph(decoder):
    """The design: our kernels read weights at fixed addresses and scratch of fixed size, so TVM's CUDA-graph
    rewrite captures every MLP and projection of the step; no builtin makes the host wait for the device. Left
    outside by TVM (reported, not the kernels' doing): the embedding (reads the call's token), the position's
    rotary and cache writes (read `pos`, write the cache inputs), attention over the kv filled slots (sizes vary
    per step) and the logits projection (its output is the function's result)."""
    _, text = decoder
    fns = functions(text)
    captured = [c for name, calls in fns.items() if name.startswith("step_cuda_graph_capture") for c in calls]
    outside = fns["step"]
    assert "vm.builtin.cuda_graph.run_or_capture" in outside
    assert any(c.startswith("actsparse_cuda_gmlp_exact") for c in captured)
    assert not any(c.startswith("actsparse_cuda_gmlp") for c in outside)
    linears = [c for c in outside if c.startswith("actsparse_cuda_linear")]
    assert len(linears) == 1 and "n128" in linears[0]  # the logits (vocab 128); q, k, v, o projections captured
    assert sum(c.startswith("actsparse_cuda_linear") for c in captured) == 4
    assert not any(c in HOST_SYNCS for name in fns if name.startswith("step") for c in fns[name])


def test_the_static_step_is_one_cuda_graph_and_its_launches_are_counted(decoder):
    """The design (codegen/static_step.py): each bucket's `step_graph` function is one capture region holding every
    launch of the step (embedding, norms, rotary, the cache writes, attention over the bucket's slots, the MLP's 3,
    the logits projection and its write into the runtime's logits buffer); outside it, per step, no launch and no
    allocation (the result leaves through `vm.builtin.reshape`, a view); nothing inside allocates or makes the host
    wait for the device."""
    from actsparse.codegen.step_launches import ALLOC_STORAGE, step_launches

    lm, text = decoder
    fns = functions(text)
    assert sorted(f for f in fns if f.startswith("step_graph") and "capture" not in f) == sorted(BUCKETS_MAX_SEQ_16)
    for function in BUCKETS_MAX_SEQ_16:
        launches = step_launches(lm.module.executable, function)
        print(f"{function}: {len(launches.regions)} capture region, {launches.captured_launches} launches captured, "
              f"{launches.outside_launches} outside, {launches.allocations_outside} allocations per step")
        region = function + "_cuda_graph_capture"
        assert launches.regions == (region,)
        assert fns[function].count("vm.builtin.cuda_graph.run_or_capture") == 1
        assert launches.outside == () and launches.allocations_outside == 0  # the logits too: inside the graph
        assert fns[function][-2:] == ["vm.builtin.reshape", "vm.builtin.null_value"]  # the view returned
        assert ALLOC_STORAGE not in fns[region]
        assert not any(c in HOST_SYNCS for c in fns[function] + fns[region])
        captured = dict(launches.captured)
        mlp = [c for c in captured if c.startswith("actsparse_cuda_gmlp_exact")]
        linears = [c for c, _ in launches.captured if c.startswith("actsparse_cuda_linear")]
        assert len(mlp) == 1 and captured[mlp[0]] == 3  # exact mode: 3 launches per MLP (issue 18)
        assert len(linears) == 5 and "n128" in linears[-1]  # q, k, v, o and the logits projection: all captured
        writes = [c for c, _ in launches.captured if c.startswith("index_copy")]
        cache, logits = "index_copy_1x2x16x16_a2_float32_inplace_gpu256", "index_copy_1x1x128_a0_float32_inplace_gpu256"
        assert writes == [cache, cache, logits]
        assert launches.captured[-1][0] == writes[-1]  # K, V, then the logits written in place, last
        assert any(c.startswith("softmax") for c in captured)  # attention (over the bucket's slots: static) inside
        # tiny Llama: 29 launches in the graph at one layer: 23 per layer + 6 once per step (embedding,
        # rotary tables, final norm, logits and their write; each RMSNorm one launch, its mean(x ** 2) fused:
        # codegen/lowerings.py); a smaller bucket 1 more per layer (V's slots sliced: over all max_seq slots the slice
        # is the cache itself); the launches by call are in the message if it changes
        assert launches.captured_launches == CAPTURED_LAUNCHES_ONE_LAYER[function], launches.captured


CAPTURED_LAUNCHES_ONE_LAYER = {"step_graph": 29, "step_graph_8": 30, "step_graph_4": 30}
BUCKETS_MAX_SEQ_16 = ["step_graph", "step_graph_8", "step_graph_4"]  # slots 16 (max_seq), 8, 4


def test_a_7b_steps_launches_are_the_tiny_builds_extrapolated_per_layer():
    """benchmarks/cuda_step.py: (regions, captured, outside) at 1 and 2 layers -> at 32 layers, once + per layer."""
    from actsparse.benchmarks.cuda_step import extrapolate

    assert extrapolate((1, 32, 0), (1, 57, 0), 32) == (1, 807, 0)
    assert extrapolate((6, 31, 13), (6, 43, 23), 1) == (6, 31, 13)


def test_the_static_step_built_for_llvm_decodes_as_transformers():
    """The static-shape rewrite itself, on CPU: a target with `graph_capture` gets `step_graph` (attention over all
    max_seq slots, masked by position; inputs in the decoder's fixed buffers); its logits match transformers'
    per step and greedy decoding matches token for token, twice over the decoder's one reused cache."""
    import dataclasses

    import numpy as np

    import actsparse
    from actsparse import targets

    model = tiny_llama()
    lm = actsparse.compile(model, target=dataclasses.replace(targets.get("x86"), graph_capture=True), mode="exact",
                           max_seq=16)
    assert lm.graph_step and lm.module.has_function("step_graph")
    assert lm._buckets == [(4, "step_graph_4"), (8, "step_graph_8"), (16, "step_graph")]  # max_seq 16 halved
    called = []
    run_device = lm.module.run_device
    lm.module.run_device = lambda *a, **k: called.append(k.get("function", "main")) or run_device(*a, **k)
    # across bucket boundaries: positions 6..14 (slots 8, then 16) and 2..6 (slots 4, then 8)
    for prompt, new, functions in (([5, 6, 7, 9, 11, 3], 10, ["step_graph_8"] * 2 + ["step_graph"] * 7),
                                   ([1, 2], 6, ["step_graph_4"] * 2 + ["step_graph_8"] * 3)):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            want = model.generate(ids, max_new_tokens=new, do_sample=False)
        called.clear()
        assert lm.generate(ids, max_new_tokens=new).tolist() == want.tolist()
        assert called == ["main", *functions]  # prefill, then one step per new token but the last
    state = lm.prefill(np.array([[4, 8]]))
    for token in (15, 16, 23):
        logits, state = lm.step(token, state)
        with torch.no_grad():
            ref = model(torch.tensor([[4, 8, 15, 16, 23][:state.position]])).logits[0, -1].numpy()
        np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)
    # cuda_step --time's loop (run on a GPU only): step, step_graph in buckets 4/8/16, step_graph over 16 slots only
    from actsparse.benchmarks.cuda_step import decode_variants

    medians, decoded = decode_variants(lm, np.array([[5, 6]]), 8, 1)  # positions 2..8
    with torch.no_grad():
        want = model.generate(torch.tensor([[5, 6]]), max_new_tokens=8, do_sample=False)[0, 2:].tolist()
    assert set(decoded) == set(medians) == {"step", "step_graph (buckets)", "step_graph (max_seq only)"}
    assert all(out == want for out in decoded.values()), decoded
    assert lm.graph_step and len(lm._buckets) == 3  # the decoder left as it was


def test_the_static_step_through_cudas_attention_lowering_decodes_as_transformers(monkeypatch):
    """The attention CUDA builds (the Relax ops `attention` stands for: grouped query heads against their KV head,
    no copy per query head), here built for llvm with `graph_capture` by taking the CPU kernel away: greedy
    decoding across the buckets 4 -> 8 equals transformers token for token."""
    import dataclasses

    import actsparse
    from actsparse import targets
    from actsparse.codegen.kernels import FAMILIES

    monkeypatch.setitem(FAMILIES, "CpuSchedule", {k: v for k, v in FAMILIES["CpuSchedule"].items() if k != "attention"})
    model = tiny_llama()  # 4 query heads, 2 KV heads
    lm = actsparse.compile(model, target=dataclasses.replace(targets.get("x86"), graph_capture=True), mode="exact",
                           max_seq=16)
    assert lm.module.report.pass_stats["fuse-attention"] == {"attention": 1}
    ids = torch.tensor([[1, 2, 9]])
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=7, do_sample=False)
    assert lm.generate(ids, max_new_tokens=7).tolist() == want.tolist()


def test_the_attention_bytes_count_a_cache_argument_as_the_slots_a_bucket_reads():
    """cuda_step --bytes: a tensor with a max_seq dim (the cache, or a view of it) counts only the bucket's slots."""
    from tvm import relax

    from actsparse.benchmarks.cuda_step import _bytes

    assert _bytes(relax.TensorType((1, 8, 2048, 128), "float32"), 128, 2048) == 8 * 128 * 128 * 4
    assert _bytes(relax.TensorType((8, 2048, 128), "float32"), 64, 2048) == 8 * 64 * 128 * 4
    assert _bytes(relax.TensorType((1, 32, 128, 128), "float16"), 128, 2048) == 32 * 128 * 128 * 2


def test_the_static_step_rewrite_fixes_the_slots_and_declines_replaced_states():
    """static_step on tiny Llama's decoding graph: one token, kv = max_seq, the logits only; a graph whose cache
    output is not written in place (a state the call replaces) keeps only `step`."""
    from actsparse.codegen.static_step import static_step, static_steps
    from actsparse.frontends.decoder_export import import_decoder
    from actsparse.ir import Graph

    graph, _, _ = import_decoder(tiny_llama(), 16)
    step, bound = static_step(graph)
    assert bound == {"kv": 16, "seq": 1} and step.inputs[:-1] == graph.inputs
    (write,) = step.outputs  # the logits, written into the runtime's buffer (the step's last input)
    assert write.op == "index_copy" and write.inputs[0] is step.inputs[-1] and write.inputs[2] is graph.outputs[0]
    assert step.inputs[-1].attrs["name"] == "logits" and step.inputs[-1].shape == (1, 1, 128)
    assert {name: b["kv"] for name, (_, b) in static_steps(graph).items()} == {"step_graph": 16, "step_graph_8": 8,
                                                                                "step_graph_4": 4}
    replaced = Graph(graph.inputs, (*graph.outputs[:2], graph.outputs[2].inputs[2]), graph.weights, graph.name)
    assert static_step(replaced) is None


def calls_with_args(text: str, function: str) -> list[tuple[str, list[str], str]]:
    """(callee, argument registers, destination) of each call in one VM function, in order."""
    body = re.search(rf"^@{function}:\n(.*?)(?:\n\n|\Z)", text, re.S | re.M).group(1)
    return [(m.group(1), [a.strip() for a in m.group(2).split(",")], m.group(3))
            for m in re.finditer(r"call\s+([\w.]+)\s+in: (.*?)\s+dst: (%\w+)", body)]


def test_the_step_allocates_nothing_inside_its_cuda_graphs(decoder):
    """The design: the MLP kernels' scratch (h, flags, split-K parts) are call_tir outputs that Relax allocates, so
    inside every captured region of the step the only allocations are tensors placed in storage that the graphs'
    one-time allocation function made (no alloc_storage, no workspace pool: the host code has no
    TVMBackendAllocWorkspace at all), and no builtin reads a value back to the host."""
    lm, text = decoder
    fns = functions(text)
    regions = [name for name in fns if name.startswith("step_cuda_graph_capture")]
    assert regions and set(fns["cuda_graph_alloc"]) <= {"vm.builtin.alloc_storage", "vm.builtin.make_tuple",
                                                          "vm.builtin.null_value"}
    for name in regions:
        assert "vm.builtin.alloc_storage" not in fns[name], name
        assert not any(c in HOST_SYNCS for c in fns[name]), name
    (name, mlp), = [(r, c) for r in regions for c in calls_with_args(text, r) if c[0].startswith("actsparse_cuda_gmlp")]
    placed = {dst for callee, _, dst in calls_with_args(text, name) if callee == "vm.builtin.alloc_tensor"}
    assert len(mlp[1]) == 8 and set(mlp[1][-4:]) <= placed  # out, h, flag, part: placed inside the region
    host = lm.module.executable.mod.imports[0].inspect_source("ll")
    assert f"@{mlp[0]}" in host and "TVMBackendAllocWorkspace" not in host


def test_the_gpu_cache_write_kernels_copy_the_rows_under_simt_emulation():
    """index_copy for a GPU (a thread per element): out = cache with rows idx replaced by src, at sizes that leave
    the last block partly idle (2 * 5 * 300 elements, 256 threads)."""
    import numpy as np

    from actsparse.codegen.lower_state import index_copy_rows

    from .kernel_cases import Call, run_batch, simt_kernels

    prim = index_copy_rows((2, 5, 300), 1, "float32", False, 256)
    rng = np.random.default_rng(0)
    calls = []
    for idx in ([3], [4, 0]):
        x = rng.standard_normal((2, 5, 300)).astype(np.float32)
        src = rng.standard_normal((2, len(idx), 300)).astype(np.float32)
        ref = x.copy()
        ref[:, idx, :] = src
        calls.append(Call([x, np.array(idx, np.int64), src, np.full_like(x, np.nan)], ref, np.abs(ref), "float32"))
    (outs,) = run_batch(simt_kernels([prim]), [(prim, calls)])
    for call, out in zip(calls, outs):
        np.testing.assert_array_equal(out, call.ref)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["plain", "cuda-graph"])
def test_greedy_decoding_on_the_gpu_equals_transformers(cuda_graph):
    """On a GPU: prefill by `main`, then one `step` call per token (captured in CUDA graphs where asked)."""
    model = tiny_llama()
    lm = compile_for_cuda(model, cuda_graph)
    assert lm.module.has_function("step") and lm.graph_step  # steps through the static step_graph
    prompt = torch.tensor([[5, 6, 7, 9, 11, 3]])
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert lm.generate(prompt, max_new_tokens=10).tolist() == want.tolist()
