"""Quiet means quiet: with our progress off, a build, a load and a GGUF load print nothing of TVM's or
transformers' own on stderr (runtime/tvm_stderr.py, hf_source.quiet_transformers), and real errors still show."""

import os
from pathlib import Path

import pytest

import actsparse
from actsparse.cli import main
from actsparse.runtime.tvm_stderr import tvm_noise_dropped

ROOT = Path(__file__).resolve().parents[1]
SCOPE_LINE = b"[13:23:50] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving:\n"


def test_tvm_scope_lines_are_dropped_and_every_other_line_still_shows(capfd):
    with tvm_noise_dropped():
        os.write(2, SCOPE_LINE + b"[13:23:50] codegen.cc:12: Error: a real one\n" + SCOPE_LINE.replace(
            b"Saving", b"Loaded"))
    err = capfd.readouterr().err
    assert "Scope" not in err and err == "[13:23:50] codegen.cc:12: Error: a real one\n"


def test_a_scatter_builds_without_tvm_pragma_warnings(capfd, monkeypatch):
    """TVM's topi scatter (what a MoE router's `scatter_` lowers to) makes LLVM warn `Unknown pragma pragma_scope`
    per statement sequence at build time; the build drops those lines, and the module still scatters."""
    import numpy as np
    import torch

    class Scatter(torch.nn.Module):
        def forward(self, x, idx):
            return torch.zeros_like(x).scatter(1, idx, x)

    monkeypatch.setenv("ACTSPARSE_PROGRESS", "0")
    x, idx = torch.randn(2, 6), torch.tensor([[5, 4, 3, 2, 1, 0], [0, 2, 1, 3, 5, 4]])
    module = actsparse.compile(Scatter(), (x, idx), mode="dense")
    assert "pragma" not in capfd.readouterr().err
    np.testing.assert_array_equal(np.asarray(module(x.numpy(), idx.numpy())), Scatter()(x, idx).numpy())


def test_lines_written_before_an_exception_still_show_and_the_exception_leaves_as_it_came(capfd):
    with pytest.raises(RuntimeError, match="linker failed"), tvm_noise_dropped():
        os.write(2, SCOPE_LINE + b"ld: cannot find -lfoo\n")
        raise RuntimeError("linker failed")
    assert capfd.readouterr().err == "ld: cannot find -lfoo\n"
    os.write(2, b"after\n")  # fd 2 is the test's stderr again
    assert capfd.readouterr().err == "after\n"


def test_a_quiet_cli_build_and_load_print_only_our_report(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ACTSPARSE_PROGRESS", "0")
    out = tmp_path / "tiny.actsparse"
    assert main(["build", "tests.factories:tiny_drelu", "-m", "exact", "-o", str(out), "--seq", "5"]) == 0
    built = capfd.readouterr()
    assert built.err == "" and "layers.0.mlp" in built.out and f"wrote {out}" in built.out  # no "Scope Saving:"
    actsparse.load(out)
    loaded = capfd.readouterr()
    assert loaded.err == loaded.out == ""  # no "Scope Loaded:"
    assert main(["build", "tests.factories:no_such_factory", "-o", str(tmp_path / "x")]) == 2  # errors still show
    assert "actsparse build: error: cannot load 'tests.factories:no_such_factory'" in capfd.readouterr().err


def test_loading_a_gguf_draws_no_transformers_bar_and_puts_its_tqdm_back(tmp_path, capfd):
    pytest.importorskip("gguf")
    from transformers import modeling_gguf_pytorch_utils as gguf_loader

    from actsparse.frontends.hf_source import load_causal_lm

    from .test_gguf_quant import write_tiny_llama

    write_tiny_llama(tmp_path / "tiny.gguf")
    own = gguf_loader.tqdm
    capfd.readouterr()
    load_causal_lm(tmp_path / "tiny.gguf")
    assert capfd.readouterr().err == ""  # no "Converting and de-quantizing GGUF tensors..." bar
    assert gguf_loader.tqdm is own  # the user's transformers draws its bar again after our load
