"""Hybrids (recurrent states beside or instead of K/V) prefill a whole prompt in one call: the module's one-token
`main` takes the recurrent branch for decoding, and its `prefill` function (frontends/prefill.py) takes the model's
multi-token branch from the states given. Greedy decoding still equals transformers' token for token, and a
prompt costs one call, or one per 64 tokens where the graph bounds a call (gated DeltaNet's chunk loop)."""

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

import actsparse

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

NEW = 5


def _counted_generate(arch: str, prompt: int, tmp_path=None):
    """(decoder, the `function` of every module call of one greedy generation, whether it equals transformers')
    for a tiny `arch` on a random prompt of `prompt` tokens; with `tmp_path`, through a saved and loaded artifact."""
    from actsparse.scripts.arch_table import build_tiny

    model = build_tiny(arch)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(vocab, (1, prompt), generator=torch.Generator().manual_seed(1))
    model.generation_config = transformers.GenerationConfig(
        max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
        pad_token_id=getattr(model.config.get_text_config(), "pad_token_id", None))
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids))
    lm = actsparse.compile(model, mode="dense", max_seq=prompt + NEW + 1)
    measured = lm.spec.prefill_from  # runtime/prefill_rule.py, at compile time: a figure of this machine's load
    assert 2 <= measured <= lm.spec.prefill_tokens + 1
    assert any("go through prefill" in note for note in lm.report.notes)
    if tmp_path is not None:
        lm = actsparse.load(lm.save(tmp_path / "lm.actsparse"))
        assert lm.spec.prefill_from == measured  # decoder.json keeps the rule
    lm.spec = dataclasses.replace(lm.spec, prefill_from=2)  # the calls counted below: every piece through prefill
    calls = []
    run = lm.module.run_device

    def counted(*inputs, **kwargs):
        calls.append(kwargs.get("function", "main"))
        return run(*inputs, **kwargs)

    lm.module.run_device = counted
    return lm, calls, torch.equal(torch.as_tensor(lm.generate(ids, NEW)), expected)


@pytest.mark.slow
def test_a_zamba2_prompt_of_20_tokens_is_one_call_and_decodes_as_transformers(tmp_path):
    """Zamba2 keeps Mamba-2 states (convolution window, SSM state) and an attention layer's K/V: 20 prompt tokens
    are one `prefill` call (not 20 one-token calls), the rest one-token steps, through a saved and loaded artifact.
    Its chunked scan starts from the states it is given, so tokens fed after a prompt go through `prefill` too, to
    the logits the whole prompt gives; a prefill that only starts prompts (`prefill_continues` False) feeds them one
    per call instead, to the same logits."""
    lm, calls, equal = _counted_generate("zamba2", 20, tmp_path)
    assert (lm.decoding, {name[0] for name, _ in lm.spec.caches}) == ("kv-cache", {"k", "v", "c", "r"})
    assert lm.module.inputs[0][1].shape == (1, 1)  # the step: the recurrent branch, one token per call
    assert (lm.spec.prefill_tokens, lm.spec.prefill_continues) == (lm.max_seq, True)
    assert calls == ["prefill"] + ["main"] * (NEW - 1)
    assert equal
    ids = np.arange(8).reshape(1, -1) % lm.spec.vocab_size
    whole = lm.prefill(ids).logits
    for continues, expected in ((True, ["prefill"] * 2), (False, ["prefill"] + ["main"] * 5)):
        lm.spec = dataclasses.replace(lm.spec, prefill_continues=continues)
        del calls[:]
        logits, _ = lm.step(ids[:, 3:], lm.prefill(ids[:, :3]))
        assert calls == expected
        # the model's chunk scan and its one-token update are two fp32 orders of one recurrence: transformers 5.25's
        # fallback scan differs from its own update by ~4e-4 of the logits' scale (frontends/prefill.py `_differs`)
        np.testing.assert_allclose(logits, whole, rtol=0, atol=2e-3 * np.abs(whole).max())


@pytest.mark.slow
def test_a_gated_deltanet_prompt_prefills_in_pieces_of_its_chunk(monkeypatch):
    """Kimi-Linear's delta-rule scan loops over fixed-size chunks in Python (64 tokens; 8 here, which keeps the
    unrolled loop and so the compile small), so its prefill graph takes at most one chunk a call (ir/limits.py reads
    the bound off the graph): a prompt of 20 tokens is ceil(20/8) = 3 calls, 8 + 8 + 4, each continuing from the
    states the last returned, and decoding still equals transformers (which runs the same 8-token chunks)."""
    from transformers.models.kimi_linear import modeling_kimi_linear as kimi

    chunk, prompt = 8, 20
    monkeypatch.setattr(kimi, "chunk_kimi_delta_attention",
                        functools.partial(kimi.chunk_kimi_delta_attention, chunk_size=chunk))
    lm, calls, equal = _counted_generate("kimi_linear", prompt)
    assert (lm.spec.prefill_tokens, lm.spec.prefill_continues) == (chunk, True)
    pieces = math.ceil(prompt / chunk)
    assert calls[:pieces] == ["prefill"] * pieces and calls[pieces:] == ["main"] * (NEW - 1)
    assert equal


def test_the_check_finds_a_multi_token_forward_that_ignores_its_states(monkeypatch):
    """The prefill may continue a prompt only where the model's multi-token branch starts from the states it is
    given (checked eagerly against one-token steps, from zero states and from the first token's): a Mamba-2 whose
    multi-token calls see zero states whatever they are given (this test's stand-in for such a model; Mamba's own
    selective scan is one, but its forward does not export at a dynamic length) passes from zero states only."""
    from actsparse.frontends import prefill
    from actsparse.frontends.kv_cache import cache_specs
    from actsparse.scripts.arch_table import build_tiny

    model = build_tiny("mamba2")
    specs, own = cache_specs(model, 8)
    assert prefill._continues_states(model, specs, own, 8) == ("", "")
    real = prefill.KVCachedLM.forward

    def forgetful(self, input_ids, pos, filled, cache):
        if input_ids.shape[1] > 1:
            cache = tuple(torch.zeros_like(c) if s.kind in ("conv", "recurrent") else c
                          for s, c in zip(self.specs, cache, strict=True))
        return real(self, input_ids, pos, filled, cache)

    monkeypatch.setattr(prefill.KVCachedLM, "forward", forgetful)
    fresh, later = prefill._continues_states(model, specs, own, 8)
    assert fresh == "" and "does not continue from the states" in later and "after the first" in later, later


class _StandInDevice:
    """Not the CPU: the decoder passes numpy inputs and copies the logits back."""

    def dlpack_device_type(self):
        return 0


class _StandInTensor:
    """What the decoder reads of a device tensor: a numpy array with a device and a data pointer."""

    device = _StandInDevice()

    def __init__(self, array):
        self.value, self.shape, self.dtype = array, array.shape, array.dtype

    def data_ptr(self):
        return self.value.ctypes.data

    def numpy(self):
        return self.value


class _StandInModule:
    """A hybrid's compiled module for runtime/decoder.py's routing only: a one-token `main` and a `prefill`, one
    recurrent state of one number (the tokens fed so far, returned anew by each call), each call recorded as
    (function, tokens)."""

    runnable = True
    graph = None
    limits = None  # no least length: every prompt length runs
    device = _StandInTensor.device

    def __init__(self):
        self.inputs = [(name, dataclasses.make_dataclass("T", ["shape", "dtype"])(shape, dtype)) for name, shape, dtype
                       in (("input_ids", (1, 1), "i64"), ("pos", (1,), "i64"), ("filled", (1,), "i64"),
                           ("state", (1,), "f32"))]
        self.calls = []

    def has_function(self, name):
        return name == "prefill"

    def device_tensor(self, array):
        return _StandInTensor(array)

    def run_device(self, ids, pos, filled, state, function="main", outputs=None):
        self.calls.append((function, ids.shape[1]))
        found = [_StandInTensor(state.value + ids.shape[1]) for _ in range(2)]
        found[0].value = found[0].value.astype("float64")
        return found if outputs is None else [found[i] for i in outputs]


@pytest.mark.parametrize("prefill_from, prompt, expected", [
    (3, 2, [("main", 1)] * 2),                       # shorter than the crossover: token by token
    (3, 3, [("prefill", 3)]),                        # from it on: one call
    (3, 9, [("prefill", 4)] * 2 + [("main", 1)]),    # pieces of at most 4, the 1-token rest a step
    (3, 10, [("prefill", 4)] * 2 + [("main", 1)] * 2),  # a 2-token rest is below the crossover: steps
    (5, 9, [("main", 1)] * 9),                       # above the most a call takes: never
])
def test_the_decoder_takes_prefill_only_from_the_measured_piece_length(prefill_from, prompt, expected):
    """The rule of runtime/prefill_rule.py, both ways, on a stand-in module (4 tokens a prefill call at most):
    a piece goes through `prefill` where it has at least `spec.prefill_from` tokens, else token by token; every
    token is fed either way (the stand-in's state counts them)."""
    from actsparse.runtime.decoder import Decoder, DecoderSpec

    module = _StandInModule()
    spec = DecoderSpec(16, 8, (("state", (1,)),), prefill_tokens=4, prefill_continues=True, prefill_from=prefill_from)
    state = Decoder(module, spec).prefill(np.zeros((1, prompt), np.int64))
    assert module.calls == expected
    assert (state.position, float(state.logits[0])) == (prompt, prompt)


def test_the_crossover_is_where_one_prefill_call_beats_the_steps():
    """`crossover`: a prefill whose cost is flat (a padded chunk) at 10 ms against 1 ms steps wins from 11 tokens;
    one cheaper than two steps wins from 2; one that never catches up within the most a call takes (or costs a
    step or more per extra token) never does (the most + 1); artifacts without the field keep 2 (as built)."""
    from actsparse.runtime.decoder import DecoderSpec
    from actsparse.runtime.prefill_rule import crossover

    assert crossover((2, 0.010), (64, 0.010), 0.001, 64) == 11
    assert crossover((2, 0.0015), (64, 0.020), 0.001, 64) == 2
    assert crossover((2, 0.100), (64, 0.100), 0.001, 64) == 65
    assert crossover((2, 0.003), (64, 0.070), 0.001, 64) == 65
    old = DecoderSpec(8, 4, ()).to_dict()
    del old["prefill_from"]
    assert DecoderSpec.from_dict(old).prefill_from == 2


class _ChunkPadded(torch.nn.Module):
    """A prefill call's signature (ids, pos, filled, cache) around Mamba-2's chunk padding: the length padded to a
    multiple of 256 and reshaped into chunks, whose guard (`seq + pad == 256`) torch cannot prove over a range; with
    `narrow`, a branch on the length that holds only up to 8 tokens; with `loop`, a Python loop over the tokens
    (MiniMax's lightning attention over its blocks), which fixes the length to the example's."""

    def __init__(self, narrow: bool = False, loop: bool = False):
        super().__init__()
        self.narrow, self.loop = narrow, loop

    def forward(self, ids, pos, filled, cache):
        x = ids.float()
        if self.narrow and ids.shape[1] > 8:
            x = x * 2
        if self.loop:
            return sum(x[:, i] * (i + 1) for i in range(ids.shape[1])).sum() + filled.sum() + cache[0].sum()
        pad = (256 - ids.shape[1] % 256) % 256
        chunks = torch.nn.functional.pad(x, (0, pad)).reshape(1, -1, 256).sum(-1)
        return chunks.sum() + filled.sum() + cache[0].sum()


def test_a_prefill_whose_guards_torch_cannot_prove_exports_once(monkeypatch):
    """The prefill's `seq` goes to torch.export as a bounded hint first (decoder_export._export_dynamic): Mamba-2's
    chunk padding exports in one trace with the asked range, where a named range fails after a whole trace and was
    exported again (16 s of a tiny Falcon-H1's compile); a hint whose guards narrow the range is taken narrowed; a
    length the code fixes ends the tries at the first (MiniMax: 9 failed exports of 2 s each before)."""
    from actsparse.frontends import decoder_export

    calls = []
    real = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append(k["dynamic_shapes"]) or real(*a, **k))
    args = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(3, dtype=torch.long),
            (torch.zeros(4),))
    program = decoder_export._export_dynamic(_ChunkPadded(), args, 16, one_token=False, min_seq=2)
    assert len(calls) == 1
    seq = next(s for s, name in decoder_export._dim_symbols(program).items() if name == "seq")
    assert (program.range_constraints[seq].lower, program.range_constraints[seq].upper) == (2, 16)
    del calls[:]
    program = decoder_export._export_dynamic(_ChunkPadded(narrow=True), args, 16, one_token=False, min_seq=2)
    assert len(calls) == 1  # the hint narrowed to 8 is taken: named dims would fail on it, both DYNAMIC narrow alike
    seq = next(s for s, name in decoder_export._dim_symbols(program).items() if name == "seq")
    assert (program.range_constraints[seq].lower, program.range_constraints[seq].upper) == (2, 8)
    del calls[:]
    fresh = tuple(a.clone() for a in args[:3]) + (tuple(c.clone() for c in args[3]),)  # unmarked by the exports above
    with pytest.raises(torch._dynamo.exc.UserError, match="specialized it to be a constant"):
        decoder_export._export_dynamic(_ChunkPadded(loop=True), fresh, 16, one_token=False, min_seq=2)
    assert len(calls) == 1  # the code fixes the length: no other form of the dims would export


def test_a_hybrid_in_threshold_mode_calibrates_token_by_token_and_says_its_prompts_go_so():
    """A recurrent hybrid (Bamba: Mamba-2 states beside attention) takes one token per call: threshold mode's
    calibration prompts run through its step token by token with the states carried (ir/decoding.TokenSteps), and
    with calibration no whole-prompt prefill is built, which the report says. Its dense compile prefills."""
    from actsparse.scripts.arch_table import build_tiny, example_ids

    model = build_tiny("bamba")
    ids = example_ids(model)
    calibration = [example_ids(model, 20) for _ in range(3)]
    lm = actsparse.compile(model, mode="threshold", sparsity=0.5, max_seq=32, calibration=calibration)
    assert lm.module.inputs[0][1].shape == (1, 1) and lm.spec.prefill_tokens == 0
    assert any(note.startswith("prompts go through the one-token step") for note in lm.report.notes)
    blocks = [b for b in lm.report.blocks if b.mode == "input"]
    assert blocks and all(0.4 <= b.effective_calibrated <= 0.6 for b in blocks)
    assert lm.generate(ids, 4).shape == (1, ids.shape[1] + 4)
