"""The `actsparse` command: build -> inspect -> bench on a module:factory spec, and one-line user errors."""

from pathlib import Path

import pytest

from actsparse.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_build_inspect_bench(tmp_path, capsys):
    out = tmp_path / "tiny.actsparse"
    assert main(["build", "tests.factories:tiny_drelu", "-m", "exact", "-o", str(out), "--seq", "5"]) == 0
    assert (out / "manifest.json").is_file() and (out / "model.so").is_file()
    printed = capsys.readouterr().out
    assert printed.count("drelu") >= 2 and "wrote" in printed
    assert main(["inspect", str(out), "--plot", str(tmp_path / "s.png")]) == 0
    assert "layers.1.mlp" in capsys.readouterr().out and (tmp_path / "s.png").stat().st_size > 1000
    assert main(["bench", str(out), "--repeats", "2"]) == 0
    assert "speed-up" in capsys.readouterr().out


def test_inspect_a_spec_reports_swiglu_left_dense(capsys):
    assert main(["inspect", "tests.factories:tiny_swiglu_with_inputs"]) == 0
    out = capsys.readouterr().out
    assert out.count("swiglu") >= 2 and "dense" in out


@pytest.mark.parametrize("argv, message", [
    (["build", "no_such_module:f", "-o", "x"], "cannot load 'no_such_module:f'"),
    (["build", "tests.factories:tiny_drelu", "-t", "tpu", "-o", "x"], "valid targets: x86, cuda, arm"),
    (["build", "tests.factories:tiny_swiglu_with_inputs", "-m", "exact", "-o", "x"], "relufy"),
    (["inspect", "/nonexistent/dir"], "cannot load"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    argv = [a if a != "x" else str(tmp_path / "x") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
