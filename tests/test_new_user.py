"""Files a new user really has, hostile ones included (session 16's sweep): each bad model file is one clear error
from the loader and from `actsparse build` (exit 2, one line, nothing written), no traceback, no weights decoded
that the file does not hold; a folder without tokenizer files decodes ids without a made-up tokenizer; Phi-3's
empty rotary pass-through survives save and load.

The table `BAD_SOURCES` is data: (case, how the file is spoiled, the error class, a fragment of its message).
Everything here fails before a compile, except the last test (one tiny compile)."""

import contextlib
import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from actsparse.cli import main

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=48,
            vocab_size=64, max_position_embeddings=32, hidden_act="relu")
UP = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A tiny Llama folder (save_pretrained) and a tiny Llama GGUF (tests/test_gguf_quant.py's writer)."""
    from .test_gguf_quant import write_tiny_llama

    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    with contextlib.redirect_stderr(io.StringIO()):  # save_pretrained's progress bar
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(root / "hf")
    write_tiny_llama(root / "tiny.gguf")
    return root


def _folder(src: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(src / "hf", tmp / "model"))


def _safetensors(folder: Path, edit_header=None, tensors=None) -> None:
    """Rewrite model.safetensors: its header edited as JSON (offsets kept), or new tensors."""
    path = folder / "model.safetensors"
    if tensors is not None:
        from safetensors.torch import save_file

        save_file(tensors, path, metadata={"format": "pt"})
        return
    data = path.read_bytes()
    n = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(data[8:8 + n])
    edit_header(header[UP])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _gguf_cut(fraction):
    """The tiny GGUF cut inside its header (4 bytes), KV section (100), tensor infos, or data."""
    def spoil(src, tmp):
        data = (src / "tiny.gguf").read_bytes()
        offset = gguf.GGUFReader(src / "tiny.gguf").data_offset
        cut = {"header": 4, "kv": 100, "infos": offset - 40, "data": offset + 10, "end": len(data) - 5}[fraction]
        (tmp / "cut.gguf").write_bytes(data[:cut])
        return tmp / "cut.gguf"
    return spoil


def _gguf_up_rows(rows):
    """The tiny GGUF with ffn_up's tensor info claiming `rows` rows (the data as written: 96 rows)."""
    def spoil(src, tmp):
        data = bytearray((src / "tiny.gguf").read_bytes())
        name = b"blk.0.ffn_up.weight"
        at = bytes(data).index(name) + len(name)  # then n_dims (u32), dims (u64 each, innermost first)
        struct.pack_into("<Q", data, at + 12, rows)
        (tmp / "lie.gguf").write_bytes(bytes(data))
        return tmp / "lie.gguf"
    return spoil


def _gguf_q8_k(src, tmp):
    w = gguf.GGUFWriter(str(tmp / "q8k.gguf"), "llama")
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 292), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp / "q8k.gguf"


def _edited_folder(edit):
    def spoil(src, tmp):
        folder = _folder(src, tmp)
        edit(folder)
        return folder
    return spoil


def _nan_weight(folder):
    tensors = _tensors(folder)
    tensors[UP][3, 5] = float("nan")
    _safetensors(folder, tensors=tensors)


def _missing_weight(folder):
    tensors = _tensors(folder)
    del tensors[UP]
    _safetensors(folder, tensors=tensors)


BAD_SOURCES = [
    *[(f"gguf_truncated_in_{part}", _gguf_cut(part), "GGUFError", "truncated")
      for part in ("header", "kv", "infos", "data", "end")],
    ("gguf_shape_disagrees_with_config", _gguf_up_rows(48), "SourceError", "is stored as [48, 64] but its config"),
    ("gguf_type_nothing_reads", _gguf_q8_k, "GGUFQuantError", "Q8_K are not supported"),
    ("safetensors_offsets_past_end", _edited_folder(lambda f: _safetensors(
        f, lambda t: t.update(data_offsets=[t["data_offsets"][0], t["data_offsets"][1] + 10**6]))),
     "SourceError", "truncated or corrupt"),
    ("safetensors_dtype_lies", _edited_folder(lambda f: _safetensors(f, lambda t: t.update(dtype="F16"))),
     "SourceError", "truncated or corrupt"),
    ("safetensors_truncated", _edited_folder(lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:5000])), "SourceError", "truncated or corrupt"),
    ("config_not_json", _edited_folder(lambda f: (f / "config.json").write_text("{ not json")), "SourceError",
     "not valid JSON"),
    ("config_without_model_type", _edited_folder(lambda f: _config(f, lambda c: c.pop("model_type"))),
     "SourceError", "`model_type` in config.json"),
    ("config_of_other_dims", _edited_folder(lambda f: _config(f, lambda c: c.update(intermediate_size=40))),
     "SourceError", "but its config asks for"),
    ("folder_without_weights", _edited_folder(lambda f: (f / "model.safetensors").unlink()), "SourceError",
     "has no weights"),
    ("weight_missing", _edited_folder(_missing_weight), "SourceError", f"lacks 1 weight(s) its config needs ({UP}"),
    ("weight_nan", _edited_folder(_nan_weight), "SourceError", f"weight {UP} holds 1 NaN or infinite"),
]


@pytest.mark.parametrize("spoil,kind,fragment", [c[1:] for c in BAD_SOURCES], ids=[c[0] for c in BAD_SOURCES])
def test_a_bad_model_file_is_one_clear_error_and_writes_nothing(sources, tmp_path, spoil, kind, fragment):
    from actsparse.frontends.hf_source import load_causal_lm

    path = spoil(sources, tmp_path)
    with pytest.raises(Exception) as caught:
        load_causal_lm(path)
    assert type(caught.value).__name__ == kind and fragment in str(caught.value), caught.value
    out, err = tmp_path / "out.actsparse", io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["build", str(path), "-m", "dense", "-o", str(out)]) == 2
    lines = [line for line in err.getvalue().splitlines() if "error" in line]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err.getvalue(), err.getvalue()
    assert not out.exists()


def test_a_folder_without_tokenizer_files_has_no_tokenizer(tmp_path):
    """transformers builds a tokenizer from config.json alone: Qwen2's encodes any text to no ids, Gemma2's holds 5
    special tokens and encodes any text to <unk>; the decoder must say it has no tokenizer rather than decode
    an empty or <unk> prompt. The same folder with tokenizer files keeps its tokenizer."""
    from actsparse.frontends.hf_source import load_causal_lm

    from .test_decode_sources import char_tokenizer

    torch.manual_seed(0)
    configs = {"qwen2": transformers.Qwen2Config(**{**TINY, "hidden_act": "silu"}),
               "gemma2": transformers.Gemma2Config(**{**TINY, "hidden_activation": "relu"}, head_dim=16)}
    for name, config in configs.items():
        with contextlib.redirect_stderr(io.StringIO()):
            transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
        model, tokenizer = load_causal_lm(tmp_path / name)
        assert tokenizer is None and model.config.model_type == name
    char_tokenizer().save_pretrained(tmp_path / "qwen2")
    assert load_causal_lm(tmp_path / "qwen2")[1]("ab")["input_ids"] == [66, 67]


def test_an_empty_operand_of_concat_survives_save_and_load(tmp_path):
    """Phi-3's rotary concatenates an empty pass-through slice; Relax folded it into an empty constant that a
    saved executable could not load back ("Invalid DLTensor file format")."""
    import actsparse

    class RotaryTail(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x * 2.0, x[..., 8:]], dim=-1)  # x has 8 features: the second part is empty

    x = torch.randn(1, 3, 8)
    cm = actsparse.compile(RotaryTail(), (x,), mode="dense")
    loaded = actsparse.load(cm.save(tmp_path / "tail.actsparse"))
    np.testing.assert_allclose(np.asarray(loaded(x.numpy())), (x * 2.0).numpy(), rtol=1e-4)


@pytest.mark.parametrize("max_seq,fragment", [(0, "positive"), (-4, "positive"), ("16", "whole number"),
                                              (2.5, "whole number"), (10**12, "more than this machine's")])
def test_a_max_seq_out_of_range_is_one_clear_error(sources, max_seq, fragment):
    """0 was taken as 'not given' (the default cache), 10**12 would allocate its cache before anything failed.
    (Past the 32 positions of its config a rotary Llama may go, as in transformers; GPT-2's table: below.)"""
    import actsparse
    from actsparse.errors import ActsparseError

    with pytest.raises(ActsparseError, match=fragment):
        actsparse.compile(str(sources / "hf"), mode="dense", max_seq=max_seq)


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    """The tiny folder (no tokenizer files) compiled to a decoder artifact with 8 KV-cache slots."""
    import actsparse

    return actsparse.compile(str(sources / "hf"), mode="dense", max_seq=8).save(
        tmp_path_factory.mktemp("built") / "lm.actsparse")


def test_without_a_tokenizer_ids_decode_and_text_is_one_clear_error(sources, built, capsys):
    import actsparse
    from actsparse.errors import DecodeInputError

    from .test_decode_sources import char_tokenizer

    lm = actsparse.load(built)
    reference = transformers.AutoModelForCausalLM.from_pretrained(sources / "hf").eval()
    ids = torch.tensor([[3, 1, 4]])
    with torch.no_grad():
        assert torch.equal(lm.generate(ids, 4), reference.generate(ids, max_new_tokens=4, do_sample=False))
    with pytest.raises(DecodeInputError, match="no tokenizer\\b.*tokenizer.json"):
        lm.generate_text("abc", 4)
    assert main(["generate", str(built), "--prompt", "abc", "-n", "2"]) == 2
    err = capsys.readouterr().err  # the library's load may log a line of its own before ours
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "no tokenizer" in lines[0] and "Traceback" not in err, err
    lm.tokenizer = char_tokenizer()
    with pytest.raises(DecodeInputError, match="encodes to no tokens"):  # was: 'expected token ids of shape [1, n]'
        lm.generate_text("", 4)


def test_a_decoder_json_edited_after_build_is_refused(built, tmp_path):
    """Hashes cover an edit, not an edit whose manifest was rehashed: decoder.json must still agree with the module
    it describes (a max_seq past the cache's slots would write past its end)."""
    import actsparse
    from actsparse.errors import ArtifactError

    from .bad_inputs import raises, write_and_rehash

    spec = json.loads((built / "decoder.json").read_text())
    assert actsparse.load(built).max_seq == 8
    edits = {"max_seq": ({"max_seq": 10**9}, "max_seq 1000000000, the KV cache has 8 slots"),
             "vocab": ({"vocab_size": 10**6}, "vocab_size 1000000, the logits have 64"),
             "cache": ({"caches": [{**c, "shape": [1, 1, 4, 16]} for c in spec["caches"]]}, "cache k0 [1, 1, 4, 16]")}
    for name, (change, fragment) in edits.items():
        edited = Path(shutil.copytree(built, tmp_path / name))
        write_and_rehash(edited, "decoder.json", json.dumps({**spec, **change}).encode())
        raises(ArtifactError, fragment, actsparse.load, edited)


def test_max_seq_past_an_absolute_position_table_is_one_clear_error(tmp_path):
    import actsparse
    from actsparse.errors import ActsparseError

    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=16, vocab_size=64)
    with contextlib.redirect_stderr(io.StringIO()):
        transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ActsparseError, match="exceeds the 16 positions of GPT2LMHeadModel's position table"):
        actsparse.compile(str(tmp_path / "gpt2"), mode="dense", max_seq=17)


def test_generation_settings_of_a_folder_are_applied_and_the_rest_named(sources):
    """transformers' generate(do_sample=False) applies generation_config's repetition_penalty (Qwen2.5-Instruct
    ships 1.05): compile takes it into the decoder (runtime/generation.py applies it); a setting actsparse does not
    apply (classifier-free guidance) is named in the report instead of leaving a silent mismatch."""
    from actsparse.runtime.generation import from_generation_config

    model = transformers.AutoModelForCausalLM.from_pretrained(sources / "hf")
    assert from_generation_config(model.generation_config, 64) == ({}, [])
    model.generation_config.repetition_penalty = 1.05
    assert from_generation_config(model.generation_config, 64) == ({"repetition_penalty": 1.05}, [])
    model.generation_config.guidance_scale = 1.5
    settings, notes = from_generation_config(model.generation_config, 64)
    assert settings == {"repetition_penalty": 1.05} and len(notes) == 1
    assert "guidance_scale=1.5" in notes[0] and "actsparse's does not" in notes[0]
