"""A decode step's static buffers are allocated once per loaded model (codegen/step_workspace.py): the pass lifts what
it may and nothing the step returns; a decoder built with it makes few allocations a step, decodes as transformers
does, and hands out logits the next step does not overwrite."""

import numpy as np
import pytest
import torch

import actsparse

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


def test_lifts_static_buffers_but_not_what_the_step_returns():
    from tvm.script import ir as I
    from tvm.script import relax as R

    from actsparse.codegen.step_workspace import lift_step_workspace

    @I.ir_module
    class Module:
        @R.function(pure=False)
        def step(x: R.Tensor((1, 4), "float32")) -> R.Tensor((4,), "float32"):
            s = R.memory.alloc_storage(R.shape([16]), R.prim_value(0), R.str("global"), R.dtype("uint8"))
            t = R.memory.alloc_tensor(s, R.prim_value(0), R.shape([1, 4]), R.dtype("float32"))
            _ = R.call_packed("test.copy", x, t, sinfo_args=R.Tuple())
            s2 = R.memory.alloc_storage(R.shape([16]), R.prim_value(0), R.str("global"), R.dtype("uint8"))
            u = R.memory.alloc_tensor(s2, R.prim_value(0), R.shape([1, 4]), R.dtype("float32"))
            _1 = R.call_packed("test.copy", t, u, sinfo_args=R.Tuple())
            _2 = R.memory.kill_tensor(t)
            v = R.reshape(u, R.shape([4]))  # returned through a view: u's storage stays per step
            return v

    out = lift_step_workspace(("step",))(Module)
    step, workspace = out["step"], out["step_workspace"]
    assert [p.name for p in step.params] == ["x", "s", "t"]  # the lifted storage and tensor after the inputs
    text = step.script()
    assert text.count("alloc_storage") == 1 and text.count("alloc_tensor") == 1  # s2 / u only
    assert "kill_tensor" not in text  # the lifted tensor is no longer killed
    assert workspace.script().count("alloc_storage") == 1 and len(workspace.params) == 0
    # other functions are left as they are
    assert lift_step_workspace(("prefill",))(Module)["step"].same_as(Module["step"])


def _tiny_llama(layers: int = 2):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                   max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_decoder_step_allocates_once_and_decodes_as_transformers():
    from actsparse.benchmarks.decode_profile import record_step

    model = _tiny_llama()
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=10, do_sample=False)
    lm = actsparse.compile(model, mode="dense", max_seq=32)
    assert lm.module.has_function("step_workspace")
    assert lm.generate(ids, max_new_tokens=10).tolist() == want.tolist()

    state = lm.prefill(ids.numpy())
    calls = [symbol for _, symbol, _ in record_step(lm, state, 11)]
    allocs = sum(s in ("vm.builtin.alloc_tensor", "vm.builtin.alloc_storage") for s in calls)
    computed = sum(not s.startswith("vm.builtin.") for s in calls)  # kernels and legalized ops: each an output
    assert computed >= 20 and allocs <= computed // 4, (allocs, computed)  # before: at least one per call

    # the logits a step hands out are its own: the next step does not write them
    outputs, run = [], lm.module.run_device
    lm.module.run_device = lambda *a, **k: outputs.append(run(*a, **k)) or outputs[-1]
    _, state = lm.step(11, lm.prefill(ids.numpy()))
    first = outputs[-1][0].numpy().copy()
    lm.step(12, state)
    assert np.array_equal(outputs[-2][0].numpy(), first)
    assert not np.array_equal(outputs[-1][0].numpy(), first)


def test_what_every_layer_computes_alike_is_computed_once_a_step():
    """The attention mask and the cache positions, built by each layer from the step's inputs, are one computation
    after common-subexpression elimination: a layer adds its own calls only (two norms, two cache writes, rotary, a
    transpose, the residual add: 9 legalized calls a layer for a float32 Llama, 14 before)."""
    from actsparse.benchmarks.decode_profile import record_step

    def legalized_calls(layers: int) -> int:
        lm = actsparse.compile(_tiny_llama(layers), mode="dense", max_seq=32)
        calls = record_step(lm, lm.prefill(np.array([[1, 5, 7, 9]])), 11)
        return sum(not s.startswith(("vm.builtin.", "actsparse_")) for _, s, _ in calls)

    assert (legalized_calls(3) - legalized_calls(1)) / 2 <= 9
