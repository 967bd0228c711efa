"""The CUDA bundle (benchmarks/cuda_bundle.py) that lets a GPU machine without TVM time our kernels: it is complete
(every launch's arguments resolve to a tensor of its MLP or a typed integer, matching the kernel's signature), the
runner packs every launch (dry run, no GPU), and its launch sequences, replayed by the SIMT emulator without TVM's
host code, give exactly what TVM's host code gives when it launches the same kernels. Timing needs the GPU."""

import json

import numpy as np
import pytest

from .kernel_cases import require_nvcc

tvm = pytest.importorskip("tvm")

TINY = {"tiny": (64, 53)}  # d a multiple of the 16-byte vectors, n_ff not of the 8 warps per block


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from actsparse.benchmarks.cuda_bundle import write_bundle

    require_nvcc()
    path = write_bundle(tmp_path_factory.mktemp("bundle"), TINY, sparsities=(0.5,))
    return path.parent, json.loads(path.read_text())


def test_bundle_lists_every_kind_with_resolved_launches(bundle):
    from actsparse.benchmarks.cuda_bundle import KINDS, signatures

    folder, manifest = bundle
    assert {m["kind"] for m in manifest["mlps"]} == set(KINDS) and manifest["arch"] == "sm_90"
    source = (folder / "tiny.cu").read_text()
    sigs = signatures(source)
    for mlp in manifest["mlps"]:
        names = {t["name"]: t for t in mlp["tensors"]}
        assert [t["role"] for t in mlp["tensors"]].count("output") == 1
        # gate/up, down parts, their sum; input mode: channel flags, gate parts, up parts, sums + h, down parts, sum
        assert len(mlp["launches"]) == (6 if mlp["kind"] == "input" else 3)
        assert all(launch["kernel"].startswith(mlp["symbol"]) for launch in mlp["launches"])
        for launch in mlp["launches"]:
            types = sigs[launch["kernel"]]
            assert len(types) == len(launch["args"])
            for arg, ctype in zip(launch["args"], types):
                assert (arg["tensor"] in names and ctype == "ptr") if "tensor" in arg else arg["ctype"] == ctype
            assert min(launch["grid"] + launch["block"]) >= 1
        if mlp["kind"] == "indexed":  # K, the index list's width, is the active count at this sparsity
            assert names["idx"]["shape"] == [1, mlp["n_active"]] == [1, 26]
    assert len(source) < 1_000_000  # a device call carries 64 MiB; the Mistral-size bundle is ~0.5 MB


def test_runner_dry_run_packs_every_launch(bundle, capsys):
    from actsparse.benchmarks import cuda_bundle_run

    folder, manifest = bundle
    assert cuda_bundle_run.main([str(folder), "--dry-run"]) == 0
    assert "dry run: 18 launches of 5 MLPs packed" in capsys.readouterr().out
    assert cuda_bundle_run.dry_run(manifest, manifest["mlps"]) == 18


def test_runner_inputs_activate_exactly_the_sampled_neurons(bundle):
    from actsparse.benchmarks.cuda_bundle_run import make_inputs

    mlps = {m["kind"]: m for m in bundle[1]["mlps"]}
    a = make_inputs(mlps["indexed"])
    g = a["w_gate"].astype(np.float64) @ a["x"][0]
    assert sorted(np.flatnonzero(g > 0)) == sorted(a["idx"][0, :a["count"][0]]) and a["count"][0] == 26
    teal = make_inputs(mlps["input"])  # thresholds: 0 where kept, inf where dropped
    assert (teal["x_thr"] == 0).sum() == (teal["h_thr"] == 0).sum() == 26 and np.isinf(teal["h_thr"]).sum() == 27


def test_bad_bundle_arguments_get_one_clear_error(tmp_path, capsys):
    from actsparse.benchmarks import cuda_bundle, cuda_bundle_run

    assert cuda_bundle_run.main([str(tmp_path)]) == 2
    assert "no bundle at" in capsys.readouterr().err
    assert cuda_bundle.main(["--sizes", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown size huge" in capsys.readouterr().err


def test_manifest_launches_reproduce_the_simt_emulation(bundle, tmp_path):
    """The manifest's launches (replayed without TVM) against TVM's host code launching the same kernels under the
    emulator: equal outputs, bit for bit; and against the float64 reference."""
    from actsparse.benchmarks.cuda_bundle import mlp_prims
    from actsparse.benchmarks.cuda_bundle_run import make_inputs, output_name, reference
    from actsparse.codegen.kernels.scratch import scratch_arrays
    from actsparse.codegen.schedules import schedule_for
    from actsparse.targets.cuda import target

    from .kernel_cases import simt_kernels
    from .simt_replay import ManifestReplay

    folder, manifest = bundle
    cuda = target(manifest["arch"])
    prims = mlp_prims(*TINY["tiny"], manifest["dtype"], schedule_for(cuda))
    emulated = simt_kernels(list(prims.values()), cuda)  # skips where the emulator cannot run
    replay = ManifestReplay((folder / "tiny.cu").read_text(), tmp_path)
    jobs, replayed = [], []
    for mlp in manifest["mlps"]:
        arrays = make_inputs(mlp)
        args = [arrays[t["name"]] for t in mlp["tensors"] if t["role"] != "scratch"]
        prim = prims[mlp["kind"]]
        jobs.append((str(prim.attrs["global_symbol"]), [*args, *scratch_arrays(prim, args)], [len(args) - 1]))
        ref = reference({k: a.astype(np.float64) for k, a in arrays.items()}, mlp["kind"], np.exp)
        replayed.append((replay.run(mlp, arrays)[output_name(mlp)], ref))
    for mlp, (ours, ref), (theirs,) in zip(manifest["mlps"], replayed, emulated.run(jobs)):
        np.testing.assert_array_equal(ours, theirs, err_msg=mlp["name"])
        # the kernels round h to fp16 before the down projection (kernel_cases.RTOL: 1e-3 for fp16 weights)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3 * np.abs(ref).max(), err_msg=mlp["name"])


def test_runner_compiles_the_bundle_source_with_nvcc(bundle, tmp_path):
    """The runner's own nvcc command (a cubin for the device's architecture) takes TVM's source as it is."""
    from actsparse.benchmarks.cuda_bundle_run import compile_cubin

    folder, manifest = bundle
    image = compile_cubin(folder / "tiny.cu", "sm_90", tmp_path)
    assert image[:4] == b"\x7fELF"
    assert all(launch["kernel"].encode() in image for mlp in manifest["mlps"] for launch in mlp["launches"])
