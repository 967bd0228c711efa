"""The `actsparse` command: build -> inspect -> bench on a module:factory spec, and one-line user errors."""

from pathlib import Path

import numpy as np
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


def test_build_in_threshold_mode_with_a_calibration_file(tmp_path, capsys):
    from safetensors.numpy import save_file

    calib = tmp_path / "calib.safetensors"
    save_file({"0": np.random.default_rng(0).integers(0, 256, (6, 12)).astype(np.int64)}, str(calib))
    out = tmp_path / "thr.actsparse"
    argv = ["build", "tests.factories:tiny_swiglu_with_inputs", "-m", "threshold", "--calib", str(calib),
            "--sparsity", "0.6", "--method", "cats", "--quantize", "int4", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("threshold") >= 3 and printed.count("60.0%") == 2 and (out / "manifest.json").is_file()
    assert " q4_0" in (out / "graph.ir").read_text()  # --quantize: the kernels' weights stored int4
    assert main(["inspect", str(out)]) == 0
    assert "60.0%" in capsys.readouterr().out  # the calibrated sparsity of each block, kept in the artifact


def _calibration_file(tmp_path, kind):
    path = tmp_path / "calib.safetensors"
    if kind == "pickle":
        path.write_bytes(b"\x80\x04K\x01.")  # a pickle: must be refused, never loaded
    else:
        from safetensors.numpy import save_file

        save_file({"input_ids": np.zeros((2, 4), np.int64)}, str(path))
    return str(path)


@pytest.mark.parametrize("kind, message", [("pickle", "not a readable .safetensors file"),
                                           ("named", "tensors must be named 0..0")])
def test_bad_calibration_file_is_one_clear_error(kind, message, tmp_path, capsys):
    argv = ["build", "tests.factories:tiny_swiglu_with_inputs", "-m", "threshold", "--sparsity", "0.5",
            "--calib", _calibration_file(tmp_path, kind), "-o", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, message", [
    (["build", "no_such_module:f", "-o", "x"], "cannot load 'no_such_module:f'"),
    (["build", "tests.factories:tiny_drelu", "-t", "tpu", "-o", "x"], "valid targets: x86, cuda, arm"),
    (["build", "tests.factories:tiny_swiglu_with_inputs", "-m", "exact", "-o", "x"], "relufy"),
    (["inspect", "/nonexistent/dir"], "cannot load"),
    (["build", "tests.factories:tiny_swiglu_with_inputs", "-m", "threshold", "--sparsity", "0.5", "--calib",
      "/nonexistent.safetensors", "-o", "x"], "calibration file /nonexistent.safetensors does not exist"),
    (["build", "tests.factories:tiny_swiglu_with_inputs", "-m", "threshold", "-o", "x"],
     "needs a target sparsity (--sparsity 0.5"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    argv = [a if a != "x" else str(tmp_path / "x") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv", [
    ["build", "tests.factories:tiny_drelu", "-m", "threshold", "--sparsity", "0.5", "-o", "x"],
    ["build", "tests.factories:tiny_drelu", "-m", "predictor", "-o", "x"],
    ["inspect", "tests.factories:tiny_drelu", "-m", "threshold", "--sparsity", "0.5"],
    # a .GGUF (any case) with --requantize-gguf passes that flag's check: the missing --calib is what is said
    ["build", "model.GGUF", "-m", "threshold", "--sparsity", "0.5", "--quantize", "int4", "--requantize-gguf",
     "-o", "x"],
])
def test_a_mode_that_calibrates_without_calib_names_the_flag_before_any_compile(argv, capsys, tmp_path,
                                                                                monkeypatch):
    import actsparse.api

    monkeypatch.setattr(actsparse.api, "compile", lambda *a, **k: pytest.fail("compiled without calibration"))
    assert main([a if a != "x" else str(tmp_path / "x") for a in argv]) == 2
    err = capsys.readouterr().err
    assert "needs calibration inputs (" in err and "--calib FILE.safetensors" in err and "-m exact" in err, err
    # a decoder source (the .gguf) is told of calibration text first; a module:factory is not
    assert ("--calib-text FILE" in err) == any(a.lower().endswith(".gguf") for a in argv), err
    assert "Traceback" not in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_build_with_a_memory_budget_writes_the_cold_neurons_and_refuses_too_small_budgets(tmp_path, capsys):
    out = tmp_path / "budget.actsparse"
    # tiny_drelu: MLP weights 2 layers x 3 x 64 x 128 x 4 B = 192 KiB, of which 64 KiB gate rows stay resident
    assert main(["build", "tests.factories:tiny_drelu", "-m", "exact", "--memory-budget", "100k", "-o", str(out),
                 "--seq", "5"]) == 0
    printed = capsys.readouterr().out
    assert "cold" in printed and (out / "cold.bin").stat().st_size > 0
    assert main(["bench", str(out), "--repeats", "2"]) == 0
    capsys.readouterr()
    assert main(["build", "tests.factories:tiny_drelu", "-m", "exact", "--memory-budget", "1k", "-o",
                 str(tmp_path / "no.actsparse")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "feasible budgets" in err and "Traceback" not in err
