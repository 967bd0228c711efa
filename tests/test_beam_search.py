"""Beam search (runtime/beam_search.py) on a second cache layout, a sliding-window Mistral (window 4 < the positions
decoded): `generate(num_beams=k)` equals transformers' token for token; beams copy a cache only where a second child
takes a parent; k caches that do not fit are one clear error. (The tiny Llama folder with processors:
tests/test_generation.py.) One tiny compile for the module."""

import pytest
import torch

import actsparse
from actsparse.errors import DecodeInputError
from actsparse.runtime import beam_search
from actsparse.runtime.generation import GenerationSettingError

transformers = pytest.importorskip("transformers")

PROMPT = torch.tensor([[5, 6, 7, 9, 11, 3]])
NEW = 12
EOS = 61  # a token the beams reach: with it, hypotheses finish before the length and the settings part ways


@pytest.fixture(scope="module")
def mistral():
    config = transformers.MistralConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=96, vocab_size=128,
                                        max_position_embeddings=64, pad_token_id=0, bos_token_id=None,
                                        eos_token_id=EOS, initializer_range=0.1, hidden_act="relu", sliding_window=4)
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config).eval()
    model.generation_config = transformers.GenerationConfig(eos_token_id=EOS, pad_token_id=0, do_sample=False)
    return model, actsparse.compile(model, mode="dense", max_seq=24)


def test_beam_search_equals_transformers_on_a_sliding_window(mistral, monkeypatch):
    model, lm = mistral
    copies = []
    copy = beam_search.copy_state
    monkeypatch.setattr(beam_search, "copy_state", lambda *a: copies.append(1) or copy(*a))
    results = []
    for settings in [dict(num_beams=4), dict(num_beams=4, early_stopping="never", length_penalty=-1.0)]:
        with torch.no_grad():
            expected = model.generate(PROMPT, max_new_tokens=NEW, **settings)
        got = lm.generate(PROMPT, NEW, **settings)
        assert torch.equal(got, expected), f"{settings}: {got.tolist()} != {expected.tolist()}"
        results.append(got[0].tolist())
        if len(results) == 1:  # it ran all NEW - 1 steps: the first copies the prompt's cache 3 times, then only
            assert len(got[0]) == PROMPT.shape[1] + NEW  # a parent's second child copies (not every beam, every step)
            assert 3 <= len(copies) < 3 * (NEW - 1)
    assert results[0] != results[1] and len(results[1]) < PROMPT.shape[1] + NEW  # finished on eos, the settings count
    assert results[0] != lm.generate(PROMPT, NEW)[0].tolist()  # beams find what greedy does not


def test_beams_that_do_not_fit_are_one_clear_error(mistral, monkeypatch):
    _, lm = mistral
    monkeypatch.setattr(beam_search, "free_memory", lambda state: 2 * beam_search.cache_bytes(lm))
    with pytest.raises(DecodeInputError, match=r"num_beams=4 needs 4 KV caches of .* MiB free; give fewer beams"):
        lm.generate(PROMPT, 4, num_beams=4)
    assert lm.generate(PROMPT, 4, num_beams=3).shape == (1, PROMPT.shape[1] + 4)


def test_returned_sequences_are_padded_as_transformers_pads_them(mistral):
    """A hypothesis that ended on eos is padded to the longest: with the pad id where it is set and not 0 (here the
    call's 7), else the first eos id (the model's pad id is 0: transformers' `pad or eos[0]`)."""
    model, lm = mistral
    settings = dict(num_beams=4, num_return_sequences=4, early_stopping="never", length_penalty=-1.0)
    for extra, fill in [({}, EOS), ({"pad_token_id": 7}, 7)]:
        with torch.no_grad():
            expected = model.generate(PROMPT, max_new_tokens=NEW, **settings, **extra)
        got = lm.generate(PROMPT, NEW, **settings, **extra)
        assert torch.equal(got, expected), f"{extra}: {got.tolist()} != {expected.tolist()}"
        ended = [row for row in got.tolist() if EOS in row[PROMPT.shape[1]:]]
        assert ended and ended[0][-2:] == [fill, fill]  # padded after its eos


def test_beam_sampling_draws_from_the_warped_beams(mistral):
    """do_sample=True with beams: each step draws max(2, 1 + eos ids) * k continuations without replacement from all
    beams' warped scores. Where the warpers leave exactly that many (top_k = 4 of one live beam at the first step),
    the draw takes them all and equals transformers'; otherwise every drawn token is one the warpers kept, a seed
    reproduces a draw, and seeds differ; warpers that leave too few are one error (torch's multinomial fails)."""
    model, lm = mistral
    one = dict(num_beams=2, do_sample=True, top_k=4, temperature=2.0, num_return_sequences=2)
    with torch.no_grad():
        expected = model.generate(PROMPT, max_new_tokens=1, **one)
    assert torch.equal(lm.generate(PROMPT, 1, seed=3, **one), expected)

    settings = dict(num_beams=2, do_sample=True, top_k=6, temperature=2.0)
    with torch.no_grad():
        allowed = set(torch.topk(model(PROMPT).logits[0, -1], 6).indices.tolist())
    drawn = [tuple(lm.generate(PROMPT, 3, seed=seed, **settings)[0, PROMPT.shape[1]:].tolist()) for seed in range(12)]
    assert {d[0] for d in drawn} <= allowed
    assert len(set(drawn)) > 1
    assert tuple(lm.generate(PROMPT, 3, seed=5, **settings)[0, PROMPT.shape[1]:].tolist()) == drawn[5]
    with pytest.raises(GenerationSettingError, match="leave 2 with any probability: raise top_k"):
        lm.generate(PROMPT, 2, num_beams=2, do_sample=True, top_k=2)
