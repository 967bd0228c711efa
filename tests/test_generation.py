"""Generation settings (runtime/generation.py): each logits processor and warper of the table equals transformers'
own class on the same logits and ids; greedy `generate` of a compiled folder whose generation_config sets
repetition_penalty, no_repeat_ngram_size, min_new_tokens and bad_words_ids equals transformers' generate token for
token, before and after save/load; sampling draws only what its warpers keep, repeatably for a seed; bad settings
are one clear error (CLI: exit 2). One tiny compile for the module."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import actsparse
from actsparse.runtime import logits_processors as lp
from actsparse.runtime.generation import (
    BY_NAME,
    NOT_APPLIED,
    SETTINGS,
    GenerationSettingError,
    TokenChooser,
    check_settings,
    from_generation_config,
    resolve,
)

transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as tp  # noqa: E402 - after the skip

V = 32
EOS = 2
IDS = [3, 5, 3, 7, 9, 3]  # repeats: "3 5" and "3 7" are bigrams, the ids end with 3


def _ctx(ids=IDS, prompt_length=4, max_length=None, begin_index=None):
    return lp.Context(np.asarray(ids, np.int64), prompt_length, max_length or len(ids) + 5, (EOS,),
                      len(ids) if begin_index is None else begin_index)


# (setting, value, transformers' processor, context): each changes the logits of IDS
CASES = [
    ("sequence_bias", [[[5], 2.0], [[3, 9], -1.5], [[1, 2], 4.0]],
     tp.SequenceBiasLogitsProcessor([[[5], 2.0], [[3, 9], -1.5], [[1, 2], 4.0]]), _ctx()),
    ("repetition_penalty", 1.3, tp.RepetitionPenaltyLogitsProcessor(1.3), _ctx()),
    ("no_repeat_ngram_size", 2, tp.NoRepeatNGramLogitsProcessor(2), _ctx()),
    ("bad_words_ids", [[5], [3, 9], [1, 4, 6], [EOS]], tp.NoBadWordsLogitsProcessor([[5], [3, 9], [1, 4, 6], [EOS]],
                                                                                     EOS), _ctx()),
    ("min_length", 10, tp.MinLengthLogitsProcessor(10, EOS), _ctx()),
    ("min_new_tokens", 3, tp.MinNewTokensLengthLogitsProcessor(4, 3, EOS), _ctx()),
    ("forced_bos_token_id", 7, tp.ForcedBOSTokenLogitsProcessor(7), _ctx(ids=[4], prompt_length=1)),
    ("forced_eos_token_id", [2, 6], tp.ForcedEOSTokenLogitsProcessor(len(IDS) + 1, [2, 6]),
     _ctx(max_length=len(IDS) + 1)),
    ("suppress_tokens", [1, 8, 40], tp.SuppressTokensLogitsProcessor([1, 8, 40]), _ctx()),
    ("begin_suppress_tokens", [4, 11], tp.SuppressTokensAtBeginLogitsProcessor([4, 11], len(IDS)), _ctx()),
    ("temperature", 0.7, tp.TemperatureLogitsWarper(0.7), _ctx()),
    ("top_k", 5, tp.TopKLogitsWarper(5), _ctx()),
    ("top_p", 0.8, tp.TopPLogitsWarper(0.8), _ctx()),
    ("min_p", 0.1, tp.MinPLogitsWarper(0.1), _ctx()),
    ("typical_p", 0.6, tp.TypicalLogitsWarper(0.6), _ctx()),
    ("epsilon_cutoff", 0.03, tp.EpsilonLogitsWarper(0.03), _ctx()),
    ("eta_cutoff", 0.05, tp.EtaLogitsWarper(0.05), _ctx()),
    ("renormalize_logits", True, tp.LogitNormalization(), _ctx()),
]


@pytest.mark.parametrize("name, value, theirs, ctx", CASES, ids=[c[0] for c in CASES])
def test_each_processor_equals_transformers(name, value, theirs, ctx):
    logits = np.random.default_rng(len(name)).normal(0, 3, V).astype(np.float32)
    expected = theirs(torch.from_numpy(ctx.ids)[None], torch.from_numpy(logits.copy())[None])[0].numpy()
    ours = BY_NAME[name].apply(logits.copy(), ctx, BY_NAME[name].check(value))
    assert not np.array_equal(expected, logits)  # the case exercises the processor
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)  # -inf (and NaN) where transformers puts them


def test_invalid_values_are_removed_as_transformers_does():
    logits = np.array([1.0, np.nan, np.inf, -np.inf, -2.0], np.float32)
    expected = tp.InfNanRemoveLogitsProcessor()(torch.zeros(1, 2, dtype=torch.long), torch.from_numpy(logits)[None])
    np.testing.assert_array_equal(BY_NAME["remove_invalid_values"].apply(logits, _ctx(), True), expected[0].numpy())


def test_the_table_knows_every_setting_transformers_applies():
    """Every name of the table and of NOT_APPLIED is a GenerationConfig setting (a typo would be silently unset), and
    the table's defaults are transformers' own."""
    config = transformers.GenerationConfig()
    defaults = config._get_default_generation_params()
    for name in [s.name for s in SETTINGS if s.name != "seed"] + list(NOT_APPLIED):
        assert hasattr(config, name), name
    for s in SETTINGS:
        assert s.default == defaults.get(s.name), s.name


def test_every_setting_transformers_processors_read_is_applied_or_named():
    """Each generation_config field transformers' _get_logits_processor reads is in the table or in NOT_APPLIED (a
    newer transformers with one more processor fails here instead of being silently ignored)."""
    import inspect
    import re

    source = inspect.getsource(transformers.GenerationMixin._get_logits_processor)
    read = set(re.findall(r"generation_config\.(\w+)", source))
    # what a processor is given, not a processor of its own: the stop ids, the length, beam counts, the cache
    context = {"_eos_token_tensor", "max_length", "num_return_sequences", "use_cache"}
    assert read - context - set(BY_NAME) - set(NOT_APPLIED) == set()


@pytest.mark.parametrize("settings, fragment", [
    ({"temperature": -1.0}, "temperature: expected a float > 0"), ({"top_p": 1.5}, r"top_p: expected a float in \(0"),
    ({"top_p": 0}, "top_p"), ({"top_k": 2.5}, "top_k"), ({"min_p": 2}, "min_p"),
    ({"do_sample": "yes"}, "True or False"),
    ({"topk": 3}, "no such generation setting; the settings are sequence_bias, "),
    ({"num_beam_groups": 2}, "does not apply it"),
    ({"suppress_tokens": [3, V]}, f"token id {V}, outside the vocabulary"),
    ({"num_beams": 0}, "num_beams: expected a whole number >= 1"),
    ({"early_stopping": "soon"}, 'True, False or "never"'),
    ({"bad_words_ids": [[]]}, "non-empty lists")])
def test_a_bad_setting_is_one_clear_error(settings, fragment):
    with pytest.raises(GenerationSettingError, match=fragment):
        check_settings(settings, V)


def test_sampling_draws_only_what_top_k_keeps_and_repeats_for_a_seed():
    logits = np.random.default_rng(0).normal(0, 1, V).astype(np.float32)
    top3 = set(np.argsort(logits)[-3:].tolist())

    def draws(seed, **settings):
        choose = TokenChooser(resolve({}, {"do_sample": True, "seed": seed, **settings}, V), 4, 8, (EOS,))
        return [choose(logits, IDS) for _ in range(200)]

    drawn = draws(1, top_k=3)
    assert set(drawn) == top3  # all three drawn, nothing else
    assert draws(1, top_k=3) == drawn and draws(2, top_k=3) != drawn
    assert set(draws(3, top_k=1)) == {int(np.argmax(logits))}
    assert len(set(draws(4, top_k=0))) > 3  # top_k=0: off


# -- through compile() of a folder, and after save/load --------------------------------------------------------------
PROMPT = torch.tensor([[3, 1, 4, 1, 5, 9, 6, 6]])
NEW = 10


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama folder whose generation_config sets what Qwen-style configs do (repetition_penalty) and more;
    its eos id is the first token plain greedy decoding picks, so min_new_tokens has to hold it back."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      intermediate_size=48, vocab_size=V * 2, max_position_embeddings=32,
                                      hidden_act="relu")
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        plain = model.generate(PROMPT, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)[0, PROMPT.shape[1]:]
    eos = int(plain[0])
    model.generation_config = transformers.GenerationConfig(
        eos_token_id=eos, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=4,
        bad_words_ids=[[int(plain[1])], [3, 1]], do_sample=False)
    path = tmp_path_factory.mktemp("gen") / "model"
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(path)
    return path, plain


@pytest.fixture(scope="module")
def compiled(folder):
    return actsparse.compile(str(folder[0]), mode="dense", max_seq=24)


def _transformers_generate(path, **settings):
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model.generate(PROMPT, max_new_tokens=NEW, **settings)


def test_greedy_generate_applies_the_folders_settings_as_transformers(folder, compiled, tmp_path):
    path, plain = folder
    expected = _transformers_generate(path, do_sample=False)
    assert expected[0, PROMPT.shape[1]:].tolist() != plain.tolist()  # the settings change the tokens
    assert compiled.spec.generation == {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 4,
                                        "bad_words_ids": [[int(plain[1])], [3, 1]]}
    assert compiled.report.notes == []  # every setting applied: nothing to say
    assert torch.equal(compiled.generate(PROMPT, NEW), expected)
    loaded = actsparse.load(compiled.save(tmp_path / "lm.actsparse"))
    assert loaded.spec.generation == compiled.spec.generation
    assert torch.equal(loaded.generate(PROMPT, NEW), expected)
    # a call's settings over the folder's, as transformers' generate(..., name=value)
    overrides = dict(repetition_penalty=1.0, no_repeat_ngram_size=0)
    assert torch.equal(loaded.generate(PROMPT, NEW, **overrides), _transformers_generate(path, do_sample=False,
                                                                                         **overrides))


def test_sampling_through_a_compiled_decoder(compiled):
    greedy = compiled.generate(PROMPT, NEW)
    assert torch.equal(compiled.generate(PROMPT, NEW, do_sample=True, top_k=1, seed=5), greedy)
    first = compiled.generate(PROMPT, NEW, do_sample=True, temperature=2.0, top_k=0, seed=7)
    assert torch.equal(compiled.generate(PROMPT, NEW, do_sample=True, temperature=2.0, top_k=0, seed=7), first)
    with pytest.raises(GenerationSettingError, match="temperature"):
        compiled.generate(PROMPT, 2, do_sample=True, temperature=0.0)


def test_settings_in_an_edited_decoder_json_are_refused(compiled, tmp_path):
    from actsparse.errors import ArtifactError

    from .bad_inputs import raises, write_and_rehash

    built = compiled.save(tmp_path / "lm.actsparse")
    spec = json.loads((built / "decoder.json").read_text())
    for name, generation in {"token": {"suppress_tokens": [10**6]}, "name": {"beams": 4}}.items():
        edited = Path(shutil.copytree(built, tmp_path / name))
        write_and_rehash(edited, "decoder.json", json.dumps({**spec, "generation": generation}).encode())
        raises(ArtifactError, "does not match the compiled module", actsparse.load, edited)


def test_cli_generation_flags_are_checked_before_anything_runs(folder):
    from .bad_inputs import cli

    for flags, fragment in [(["--top-p", "1.5"], "top_p"), (["--temperature", "-1"], "temperature"),
                            (["--top-k", "x"], "invalid int value"), (["--suppress-tokens", "3", "x"], "invalid int"),
                            (["--sequence-bias", "ab"], "expected TEXT=BIAS"), (["--num-beams", "0"], "num_beams"),
                            (["--early-stopping", "soon"], 'True, False or "never"')]:
        assert fragment in cli("generate", str(folder[0]), "--prompt", "a", *flags)


def test_cli_generate_takes_the_settings(compiled, tmp_path, capsys):
    """`actsparse generate` with settings over the artifact's: sampling with top_k=1 prints the greedy text, and
    --no-repeat-ngram-size 0 the text of generate_text(..., no_repeat_ngram_size=0)."""
    from actsparse.cli import main

    from .test_decode_sources import char_tokenizer

    compiled.tokenizer = char_tokenizer()  # ids 1..95 for printable ASCII; "ABC" is inside the tiny vocabulary
    built = str(compiled.save(tmp_path / "lm.actsparse"))

    def text(*flags):
        assert main(["generate", built, "--prompt", "ABC", "-n", "6", *flags]) == 0
        return capsys.readouterr().out.splitlines()[0]

    greedy = text()
    assert greedy == "ABC" + compiled.generate_text("ABC", 6)[0]
    assert text("--do-sample", "--top-k", "1", "--seed", "3") == greedy
    assert text("--no-repeat-ngram-size", "0") == "ABC" + compiled.generate_text("ABC", 6, no_repeat_ngram_size=0)[0]
    # list-valued flags: ids, text tokenized with the artifact's tokenizer, beams
    first = greedy[3]
    banned = text("--bad-words", first, "XY")
    assert banned[3] != first and banned == "ABC" + compiled.generate_text(
        "ABC", 6, bad_words_ids=[compiled.tokenizer(first)["input_ids"], compiled.tokenizer("XY")["input_ids"]])[0]
    assert text("--sequence-bias", f"{first}=-50") == "ABC" + compiled.generate_text(
        "ABC", 6, sequence_bias=[[compiled.tokenizer(first)["input_ids"], -50.0]])[0]
    suppressed = compiled.tokenizer(first + greedy[4])["input_ids"]
    assert text("--suppress-tokens", *map(str, suppressed)) == "ABC" + compiled.generate_text(
        "ABC", 6, suppress_tokens=suppressed)[0]
    assert text("--num-beams", "3", "--early-stopping", "never") == "ABC" + compiled.generate_text(
        "ABC", 6, num_beams=3, early_stopping="never")[0]
    assert main(["generate", built, "--prompt", "ABC", "--max-length", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()  # a 3-token prompt: 2 new tokens, and why
    assert lines[1] == "-- length: the generation settings' max_length=5" and lines[2].startswith("-- 2 new tokens")


def test_chat_and_streamed_text(compiled, tmp_path, capsys):
    """`chat` puts the messages through the tokenizer's chat template and generates the reply; `on_text` streams
    the text piece by piece (the pieces join to it); `actsparse generate --chat --system` prints that reply; a
    tokenizer without a template, or --system without --chat, is one error."""
    from actsparse.cli import main
    from actsparse.errors import DecodeInputError

    from .test_decode_sources import char_tokenizer

    compiled.tokenizer = char_tokenizer()  # printable ASCII: the template's markers are inside the tiny vocabulary
    with pytest.raises(DecodeInputError, match="no chat template"):
        compiled.chat("ABC", 4)
    compiled.tokenizer.chat_template = ("{% for m in messages %}{{ m['role'][0] | upper }}:{{ m['content'] }}/"
                                        "{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    pieces = []
    reply, tokens, _ = compiled.chat("ABC", 6, on_text=pieces.append)
    assert reply == compiled.generate_text("U:ABC/A:", 6)[0] and tokens == 6
    assert "".join(pieces) == reply and len(pieces) > 1  # streamed, not printed at the end
    messages = [{"role": "system", "content": "HI"}, {"role": "user", "content": "ABC"}]
    assert compiled.chat_ids(messages).tolist() == [compiled.tokenizer("S:HI/U:ABC/A:")["input_ids"]]
    built = str(compiled.save(tmp_path / "chat.actsparse"))  # the template travels with the tokenizer's files
    assert main(["generate", built, "--chat", "--system", "HI", "--prompt", "ABC", "-n", "6"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == compiled.chat(messages, 6)[0]
    assert main(["generate", built, "--system", "Hi", "--prompt", "ABC"]) == 2
    assert "--system is a chat message" in capsys.readouterr().err


def test_a_chat_keeps_its_cache_between_turns(compiled, tmp_path, capsys, monkeypatch):
    """`start_chat().send` renders the whole history through the template and replies as a fresh `chat(messages)`
    does, feeding only what the cache lacks; a history edited behind its back rolls the cache back to the common
    prefix (still the fresh reply); `actsparse chat` reads turns from stdin (/reset starts over)."""
    from actsparse.cli import main

    from .test_decode_sources import char_tokenizer

    compiled.tokenizer = char_tokenizer()  # a short template: three turns fit the fixture's 24 slots
    compiled.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}/{% endfor %}"
    chat = compiled.start_chat(system="H", max_new_tokens=3)
    first = chat.send("A")
    assert first == compiled.chat(chat.messages[:2], 3)[0] and chat.last.reused == 0
    second = chat.send("D")
    assert second == compiled.chat(chat.messages[:4], 3)[0]
    assert len("H/A/") <= chat.last.reused < chat.last.prompt_tokens  # the first turn came from the cache
    chat.messages[1]["content"] = "X"  # an earlier turn changed: the cache goes back to "H/"
    third = chat.send("F")
    assert third == compiled.chat(chat.messages[:6], 3)[0] and chat.last.reused == len("H/")

    built = str(compiled.save(tmp_path / "chat.actsparse"))
    monkeypatch.setattr("sys.stdin", io.StringIO("A\n\nD\n/reset\nA\n/exit\nnot read\n"))
    assert main(["chat", built, "--system", "H", "-n", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    replies, stats = out[0::2], out[1::2]
    assert replies == [first, second, first] and len(stats) == 3
    assert " 0 of the" in stats[0] and " 0 of the" not in stats[1] and " 0 of the" in stats[2]


def test_the_folders_unapplied_settings_and_sampling_are_named():
    generation = transformers.GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, guidance_scale=1.5,
                                               repetition_penalty=1.05, max_new_tokens=20)
    settings, notes = from_generation_config(generation, V)
    assert settings == {"repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "max_new_tokens": 20}
    assert len(notes) == 2 and "guidance_scale=1.5" in notes[0]
    assert "stays greedy" in notes[1] and "temperature=0.7, top_k=50, top_p=0.8" in notes[1]
    generation.suppress_tokens = [V]
    with pytest.raises(GenerationSettingError, match="generation_config: generation setting suppress_tokens names"):
        from_generation_config(generation, V)


# -- the default length and beam search, through the compiled folder -----------------------------------------------
def test_the_models_length_is_generates_default(folder, compiled):
    """No max_new_tokens: the settings' max_new_tokens, else max_length minus the prompt, as transformers' generate
    (whose own default is max_length=20); cut to the KV cache's room; else actsparse's 32."""
    import dataclasses

    from actsparse.runtime.decoder import Decoder

    model = transformers.AutoModelForCausalLM.from_pretrained(folder[0]).eval()
    for length, fields in [(5, {"max_new_tokens": 5}), (12 - PROMPT.shape[1], {"max_length": 12})]:
        lm = Decoder(compiled.module, dataclasses.replace(compiled.spec, generation={**compiled.spec.generation,
                                                                                     **fields}))
        model.generation_config.update(**{"max_new_tokens": None, "max_length": 20, **fields})
        with torch.no_grad():
            expected = model.generate(PROMPT, do_sample=False)
        assert expected.shape[1] == PROMPT.shape[1] + length  # no eos before: the length is the one asked
        assert torch.equal(lm.generate(PROMPT), expected)
        assert lm.new_tokens(PROMPT.shape[1])[1] == f"the generation settings' {next(iter(fields.items()))[0]}=" \
                                                    f"{next(iter(fields.values()))}"
    assert compiled.new_tokens(8, max_length=100) == (17, "the generation settings' max_length=100, cut to the 17 "
                                                          "the KV cache has room for")
    assert compiled.new_tokens(8)[0] == 32 and compiled.new_tokens(8, 3)[0] == 3


BEAMS = [dict(num_beams=4), dict(num_beams=3, early_stopping=True, length_penalty=0.5),
         dict(num_beams=4, early_stopping="never", length_penalty=2.0, num_return_sequences=3),
         dict(num_beams=2, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)]


def test_beam_search_equals_transformers_with_the_folders_processors(folder, compiled):
    """Beam search applies the folder's processors (repetition penalty, n-grams, min_new_tokens, bad words) to
    each beam's log-probabilities as transformers' _beam_search does: the same sequences, best first."""
    path, _ = folder
    greedy = compiled.generate(PROMPT, NEW)
    results = []
    for settings in BEAMS:
        expected = _transformers_generate(path, do_sample=False, **settings)
        got = compiled.generate(PROMPT, NEW, **settings)
        assert torch.equal(got, expected), f"{settings}: {got.tolist()} != {expected.tolist()}"
        results.append(got[0].tolist())
    assert any(r != greedy[0].tolist() for r in results)  # beams find what greedy does not
    assert len({tuple(r) for r in results}) > 1  # the settings change the result


@pytest.mark.parametrize("settings, fragment", [
    (dict(num_beams=2, num_return_sequences=3), "<= num_beams"),
    (dict(num_return_sequences=2), "more sequences than num_beams=1")])
def test_beam_settings_transformers_refuses_are_one_error(compiled, settings, fragment):
    with pytest.raises(GenerationSettingError, match=fragment):
        compiled.generate(PROMPT, 3, **settings)
