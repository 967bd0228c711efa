"""The GPU check script (`benchmarks/gpu_check.py`) is ready for a GPU machine: its dry run writes the plan and the
machine section here, its test files are every file with GPU tests, and bad arguments get one clear error."""

import re
from pathlib import Path

from actsparse.benchmarks import gpu_check


def test_gpu_check_dry_run_writes_the_plan_and_the_machine_to_one_file(tmp_path):
    out = tmp_path / "check.md"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert "-m actsparse.benchmarks.ffn_cuda --require-gpu --dtype float16" in text
    assert re.search(r"-m pytest -m gpu .*tests/test_decode_cuda\.py", text)
    assert "## The machine" in text and "load average" in text
    assert text.index("ffn_cuda") < text.index("pytest -m gpu")  # the figures first, the tests get what is left


def test_gpu_check_runs_every_test_file_that_has_gpu_tests():
    tests = Path(__file__).parent
    gpu_mark = re.compile(r"^@pytest\.mark\.gpu$", re.M)
    marked = {f"tests/{p.name}" for p in tests.glob("test_*.py") if gpu_mark.search(p.read_text())}
    assert marked == set(gpu_check.GPU_TEST_FILES)
    assert all((gpu_check.PACKAGE / f).is_file() for f in gpu_check.GPU_TEST_FILES)


def test_gpu_check_refuses_a_budget_too_short_for_any_step(capsys):
    assert gpu_check.main(["--budget", "5"]) == 2
    assert "--budget 5 s is too short" in capsys.readouterr().err


def test_ffn_cuda_gives_each_kernel_its_scratch_on_the_arguments_device():
    """The timed part of ffn_cuda runs only on a GPU; its scratch allocation is checked here on CPU tensors."""
    import pytest

    torch = pytest.importorskip("torch")
    from actsparse import targets
    from actsparse.benchmarks.ffn_cuda import scratch_tensors
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for

    prim = kernel("indexed", 64, 53, dtype="float16", sched=schedule_for(targets.get("cuda")))
    weights = [torch.zeros(53, 64, dtype=torch.float16)] * 3
    args = [torch.zeros(2, 64), *weights, torch.zeros(2, 5, dtype=torch.int32), torch.zeros(2, dtype=torch.int32),
            torch.zeros(2, 64)]
    h, part = scratch_tensors(prim, args)
    assert h.shape == (2, 5) and part.shape[1:] == (2, 64) and h.dtype == part.dtype == torch.float32
    assert h.device == args[0].device


def test_gpu_check_without_tvm_times_the_bundle_and_needs_one(tmp_path, capsys, monkeypatch):
    out, bundle = tmp_path / "check.md", tmp_path / "bundle"
    assert gpu_check.main(["--dry-run", "--without-tvm", "--bundle", str(bundle), "--out", str(out)]) == 2
    assert "no kernel bundle at" in capsys.readouterr().err and not out.exists()
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    assert gpu_check.main(["--dry-run", "--without-tvm", "--bundle", str(bundle), "--out", str(out)]) == 0
    text = out.read_text()
    assert f"-m actsparse.benchmarks.cuda_bundle_run {bundle}" in text
    assert "pytest -m gpu" not in text and "ffn_cuda" not in text  # both need TVM
    monkeypatch.setattr(gpu_check, "has_tvm", lambda: False)  # the lent H200 image: the bundle path by itself
    assert gpu_check.main(["--dry-run", "--bundle", str(bundle), "--out", str(out)]) == 0
    assert "cuda_bundle_run" in out.read_text()
