"""memory_budget on a CPU target: hot neurons resident, cold ones bundled in a file and read on demand, with the
same outputs as the in-memory model (and as transformers' generate), and clear errors for budgets that cannot work."""

import numpy as np
import pytest
import torch

import actsparse
from actsparse.errors import MemoryBudgetError
from actsparse.models import TinyConfig, TinyLlama
from actsparse.runtime.cold_store import COLD_FILE

D, N_FF, LAYERS = 64, 256, 2
MLP_BYTES = LAYERS * 3 * D * N_FF * 4
GATES = MLP_BYTES // 3   # exact mode keeps every gate row resident: the least feasible budget


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyLlama(TinyConfig(d_model=D, n_layers=LAYERS, n_heads=2, n_ff=N_FF, max_seq=64, mlp_act="relu")).eval()
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    calibration = [(torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(s)),) for s in range(3)]
    return model, ids, calibration, actsparse.compile(model, (ids,), mode="exact")


@pytest.fixture(scope="module")
def budgeted(tiny):
    """share of the MLP bytes -> the module compiled under that budget (each compiled once for the module)."""
    model, ids, calibration, _ = tiny
    cache = {}

    def get(share):
        if share not in cache:
            cache[share] = actsparse.compile(model, (ids,), mode="exact", memory_budget=int(share * MLP_BYTES),
                                             calibration=calibration)
        return cache[share]

    return get


@pytest.mark.parametrize("share, stats", [(GATES / MLP_BYTES, {"all-cold"}), (0.5, {"split", "all-cold"}),
                                          (1.0, {"all-hot"})])
def test_budgeted_module_equals_the_in_memory_one(tiny, budgeted, share, stats):
    model, ids, calibration, full = tiny
    cm = budgeted(share)
    counts = cm.report.pass_stats["split-hot-cold"]
    assert set(counts) <= stats and sum(counts.values()) == 2
    hot = sum(b.hot_neurons for b in cm.report.blocks if b.mode == "cold" or b.cold_neurons == 0)
    assert (hot > 0) == (share > GATES / MLP_BYTES)
    assert cm.report.pass_stats["reorder-neurons"] == {"reordered": 2}
    for seed in range(2):   # other tokens than the ones it was compiled on
        x = np.random.default_rng(seed).integers(0, 256, (1, 7))
        np.testing.assert_allclose(cm(x), full(x), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(cm(ids.numpy()), model(ids).numpy(), rtol=1e-4, atol=1e-5)
    if "all-hot" in stats:
        assert cm.cold_file is None and not cm.placement
        return
    # the cold rows are in the file, bundled per neuron, and the module holds no copy of them
    assert cm.cold_file.name == COLD_FILE and set(cm.placement.values()) == {"file"}
    assert all(isinstance(cm.weights[name].base, np.memmap) or isinstance(cm.weights[name], np.memmap)
               for name in cm.placement)
    assert sum(s.misses for s in cm.cold_stores) > 0
    budget = int(share * MLP_BYTES)
    resident = sum(a.nbytes for n, a in cm.weights.items() if "mlp" in n and n not in cm.placement)
    assert resident <= budget, (resident, budget)


def test_cold_window_serves_repeated_neurons_without_reads(tiny, budgeted):
    model, ids, calibration, _ = tiny
    cm = budgeted(0.5)
    assert cm.cold_stores and all(s.layout.rows > 0 and len(s.owner) > 0 for s in cm.cold_stores)
    cm(ids.numpy())
    before = [(s.hits, s.bytes_read) for s in cm.cold_stores]
    cm(ids.numpy())   # the same tokens: their cold neurons are in the window (as far as it holds them)
    after = [(s.hits, s.bytes_read) for s in cm.cold_stores]
    assert all(a[0] > b[0] for a, b in zip(after, before))


def test_generate_with_a_memory_budget_equals_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=192, vocab_size=128, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=None, eos_token_id=None, initializer_range=0.1,
                                      hidden_act="relu")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    prompt = torch.tensor([[5, 6, 7, 9, 11, 3]])
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    mlp = 2 * 3 * 64 * 192 * 4
    lm = actsparse.compile(model, mode="exact", max_seq=24, memory_budget=mlp // 2,
                           calibration=[torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))])
    assert sum(lm.module.report.pass_stats["split-hot-cold"].values()) == 2 and lm.module.cold_stores
    assert torch.equal(lm.generate(prompt, 8), expected)
    loaded = actsparse.load(lm.save(tmp_path / "lm"))   # a decoder artifact keeps its cold file too
    assert loaded.module.cold_file == tmp_path / "lm" / COLD_FILE
    assert torch.equal(loaded.generate(prompt, 8), expected)


def test_budgets_that_cannot_work_are_one_clear_error(tiny):
    model, ids, _, _ = tiny
    with pytest.raises(MemoryBudgetError, match=r"feasible budgets: \d+ \.\. \d+"):
        actsparse.compile(model, (ids,), mode="exact", memory_budget=int(0.25 * MLP_BYTES))  # below the gates
    with pytest.raises(MemoryBudgetError, match="negative"):
        actsparse.compile(model, (ids,), mode="exact", memory_budget=-1)
    with pytest.raises(MemoryBudgetError, match="number of bytes"):
        actsparse.compile(model, (ids,), mode="exact", memory_budget="lots")
    with pytest.raises(MemoryBudgetError, match="disk"):   # the arm target declares no disk level
        actsparse.compile(model, (ids,), target="arm", mode="exact", memory_budget=MLP_BYTES // 2)
    with pytest.raises(MemoryBudgetError, match="modes exact, auto"):
        actsparse.compile(model, (ids,), mode="dense", memory_budget=MLP_BYTES)


def test_budget_text_is_parsed():
    from actsparse.compile_options import parse_bytes

    assert parse_bytes("512M") == 512 << 20 and parse_bytes("1.5G") == 3 << 29 and parse_bytes(4096) == 4096
    assert parse_bytes("64k") == 64 << 10 and parse_bytes("2GiB".replace("B", "")) == 2 << 30


@pytest.mark.parametrize("slip", [0.6, "0.25", 1500.5])
def test_budget_that_is_no_whole_byte_count_is_refused(slip):
    # a fraction (0.6 of the weights?) must not truncate to a 0-byte budget and fail later with "memory_budget=0"
    from actsparse.compile_options import parse_bytes

    with pytest.raises(MemoryBudgetError, match="not a whole number of bytes"):
        parse_bytes(slip)
    assert parse_bytes("1.1M") == int(1.1 * (1 << 20))  # a unit's fraction still rounds down


def test_artifact_keeps_the_cold_neurons_in_its_own_file(tiny, budgeted, tmp_path):
    from actsparse.errors import ArtifactError

    model, ids, _, full = tiny
    cm = budgeted(0.5)
    path = cm.save(tmp_path / "m.actsparse")
    loaded = actsparse.load(path)
    assert loaded.cold_file == path / COLD_FILE and loaded.placement == cm.placement
    assert (path / COLD_FILE).stat().st_size >= sum(s.layout.nbytes for s in cm.cold_stores)
    x = np.random.default_rng(5).integers(0, 256, (1, 6))
    np.testing.assert_allclose(loaded(x), full(x), rtol=1e-4, atol=1e-5)
    again = loaded.save(tmp_path / "again.actsparse")   # a loaded module saves its cold file again
    assert (again / COLD_FILE).read_bytes() == (path / COLD_FILE).read_bytes()
    data = bytearray((path / COLD_FILE).read_bytes())
    data[100] ^= 0xFF
    (path / COLD_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="cold.bin does not match its checksum"):
        actsparse.load(path)
