"""`actsparse.compile()`: import a model, run the mode's pipeline, measure, build for the target.

    model --frontend--> IR --passes (pipeline.py)--> IR with sparse_gated_mlp --codegen--> TVM executable
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .compile_options import budget_options, check_example_inputs, check_mode, lossy_options
from .errors import ActsparseError
from .ir import Graph, TensorType
from .ir.examples import example_inputs_for
from .ir.quant import QUANTIZE_KINDS, STORAGE_KINDS
from .passes import pipeline_for, run_pipeline
from .passes.pipeline import LOSSY_MODES, MODES
from .passes.quality_guard import MAX_LOSS_INCREASE
from .runtime import CompiledModule
from .runtime.cold_store import place_cold
from .runtime.progress import Steps, steps
from .runtime.report import build_report

__all__ = ["LOSSY_MODES", "MODES", "compile", "example_inputs_for", "import_model"]


def import_model(model: Any, example_inputs: Sequence) -> Graph:
    """Any supported model form -> IR graph."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        if not path.endswith((".onnx", ".mlir")):
            raise ActsparseError(f"cannot import {path!r}: expected a .onnx or .mlir file, a torch.nn.Module or a "
                                 "Graph")
        if not os.path.isfile(path):
            raise ActsparseError(f"cannot import {path!r}: no such file")
        package = "onnx" if path.endswith(".onnx") else "torch_mlir"
        try:
            if package == "onnx":
                from .frontends.onnx import import_onnx

                return import_onnx(path)
            from .frontends.torch_mlir import import_mlir

            return import_mlir(path)
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] != package:
                raise
            raise ActsparseError(f"reading {path} needs the {package} package, which is not installed; install "
                                 f"it: pip install {package.replace('_', '-')}") from None
    if type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx"):
        from .frontends.onnx import import_onnx

        return import_onnx(model)
    if type(model).__module__.startswith("torch_mlir") and hasattr(model, "operation"):  # a torch-mlir Module
        from .frontends.torch_mlir import import_mlir

        return import_mlir(model)
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        from .frontends.torch_export import import_torch

        # numpy example inputs are as good as tensors (the compiled module takes numpy): share their memory
        inputs = tuple(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in example_inputs)
        return import_torch(model.eval(), inputs)
    raise ActsparseError(f"cannot compile a {type(model).__name__}: expected a torch.nn.Module, a path to a "
                         ".onnx/.mlir file, or an actsparse IR Graph")


def compile(model: Any, example_inputs: Sequence | None = None, target: Any = "x86", mode: str = "auto",
            calibration=None, sparsity: float | None = None, memory_budget: int | None = None,
            method: str | None = None, max_seq: int | None = None, tokenizer=None, predictor: str | None = None,
            recall: float | None = None, predictor_budget: float | None = None, quantize: str | None = None,
            prequantized=None, max_loss_increase: float | None = MAX_LOSS_INCREASE):
    """See the package docstring and DESIGN.md. Lossy modes: `calibration` (iterable of input tuples) and the
    target `sparsity`; `method` picks the sparsity method (passes/sparsity_methods.METHODS, default
    "rotated-wina-greedy"; a decoder with its torch model at hand pools a greedy method's budget across blocks by
    the loss's diagonal Fisher, passes/loss_sensitivity.py). The report then gives each block's calibrated
    sparsity, the sparsity and effective sparsity measured on `example_inputs` (keep them out of the calibration
    data: they are the held-out check) and the outputs' relative error vs the dense model (a decoder without a
    prompt: measured on the last calibration sample).

    mode="predictor" (ReLU-family blocks): `predictor` = "lowrank" (default, trained) | "svd" | "sign" | "quant"
    (q4_0 shadow of the gate) | "quant8" (training-free), `recall` the per-block target (default 0.99), `sparsity`
    an optional floor on the predicted sparsity per block, `predictor_budget` the predictors' bytes as a fraction
    of the MLP bytes (default 0.1).
    `predictor="bound"` is lossless and needs no calibration: an int8 gate copy with a per-neuron error bound
    certifies neurons inactive, the rest are computed exactly (passes/certified_gate.py).

    `quantize` ("fp16" | "int8" | "int4"): the kernels' weights stored as fp16 or group-wise quantized
    (passes/quantize.py), in any mode; `prequantized` ({weight name: ir.quant.QuantizedWeight}, e.g.
    `frontends.gguf_quant.read_gguf_quantized`) supplies weights already quantized (taken losslessly where the
    stored rows match); a .gguf source compiled with `quantize="int8"|"int4"` takes its own Q8_0/Q4_0/Q4_1
    tensors that way.

    `max_loss_increase` (threshold mode, a decoder with its torch model): the sparsity is lowered until
    exp(Δ mean next-token loss) − 1 on calibration samples held out of the fit is at most this (default 0.05,
    +5% perplexity; passes/quality_guard.py); the report says what was kept. None: the asked sparsity regardless.

    Decoders: a Hugging Face folder, a .gguf file, or a transformers causal LM given without example inputs (or
    with `max_seq`) compiles to a `Decoder` with a KV cache of `max_seq` slots (see `compile_decoder`)."""
    from .frontends.hf_source import is_decoder_source

    predictor_options = {"predictor": predictor, "recall": recall, "predictor_budget": predictor_budget}
    if quantize is not None and quantize not in STORAGE_KINDS:
        raise ActsparseError(f"unknown quantize={quantize!r}; valid: None, {', '.join(map(repr, STORAGE_KINDS))}")
    if prequantized is not None and quantize not in QUANTIZE_KINDS:
        raise ActsparseError("prequantized weights need quantize='int8' or 'int4' (the layout the rest is stored in)")
    if (predictor or "") == "bound" and quantize in QUANTIZE_KINDS:
        raise ActsparseError(f"predictor='bound' certifies neurons against float gate rows, but quantize={quantize!r} "
                             "stores them group-quantized; use quantize='fp16' (or none) with it, or mode='exact'")
    quant = {"quantize": quantize, "prequantized": prequantized}
    if is_decoder_source(model) and (isinstance(model, (str, os.PathLike)) or example_inputs is None
                                     or max_seq is not None):
        prompt = example_inputs[0] if example_inputs else None  # the report's sparsity is measured on it
        return compile_decoder(model, target=target, mode=mode, max_seq=max_seq, tokenizer=tokenizer,
                               calibration=calibration, sparsity=sparsity, memory_budget=memory_budget,
                               method=method, prompt=prompt, predictor_options=predictor_options,
                               max_loss_increase=max_loss_increase, **quant)
    if max_seq is not None:
        raise ActsparseError("max_seq applies to decoders (a Hugging Face folder, a .gguf file or a transformers "
                             f"causal LM), not to a {type(model).__name__}")
    from . import targets as target_registry

    memory_budget = check_mode(mode, memory_budget)
    budget_calibration = calibration if memory_budget is not None and mode not in LOSSY_MODES else None
    options = lossy_options(mode, None if budget_calibration is not None else calibration, sparsity, method,
                             predictor_options)
    check_example_inputs(example_inputs)
    target = target_registry.get(target)  # an unknown target fails before the (slow) import
    with steps(f"actsparse compile ({mode})", 1) as progress:
        progress.start("import")
        graph = import_model(model, example_inputs if example_inputs is not None else ())
        if example_inputs is None or (isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 0):
            # an ONNX or MLIR file (or a Graph) carries its input types: make example inputs from them
            example_inputs = example_inputs_for(graph)
        arrays = [_to_numpy(x) for x in example_inputs]
        if memory_budget is not None:   # a lossy mode's own calibration also counts the neurons' firing
            options = {**budget_options(memory_budget, budget_calibration, arrays), **options}
        return compile_graph(graph, arrays, target, mode, options, **quant, progress=progress)


def compile_decoder(source: Any, target: Any = "x86", mode: str = "auto", max_seq: int | None = None,
                    tokenizer=None, calibration=None, sparsity=None, memory_budget=None, method=None, prompt=None,
                    predictor_options: dict | None = None, quantize: str | None = None, prequantized=None,
                    max_loss_increase: float | None = MAX_LOSS_INCREASE):
    """A decoder source (HF folder, .gguf, transformers causal LM) -> `Decoder` (prefill / step / generate).

    The decoding graph comes from the model's own forward with its KV cache as graph inputs
    (`frontends/kv_cache.py`); the mode's pipeline and the build are those of any graph. `max_seq` (KV-cache
    slots) defaults to the model's context length, at most 2048. `prompt` (token ids [1, n]) is what the report
    measures sparsity on (default: the last calibration sample where there is calibration, else 8 random ids;
    random ids activate other neurons than text: a threshold calibrated on text skips less of them). Calibration
    samples for lossy modes are token id arrays [1, n] (or tuples whose first element is one), fed as prompts."""
    from . import targets as target_registry
    from .frontends.hf_source import load_causal_lm

    memory_budget = check_mode(mode, memory_budget)
    target = target_registry.get(target)  # an unknown target fails before the (slow) load
    with steps(f"actsparse compile ({mode} decoder)", 2) as progress:
        progress.start("load")
        model, own_tokenizer = load_causal_lm(source)
        progress.start("import (KV-cached decoding graph)")
        return _compile_decoder(model, own_tokenizer, source, target, mode, max_seq, tokenizer, calibration,
                                sparsity, memory_budget, method, prompt, predictor_options, quantize, prequantized,
                                progress, max_loss_increase)


def _compile_decoder(model, own_tokenizer, source, target, mode, max_seq, tokenizer, calibration, sparsity,
                     memory_budget, method, prompt, predictor_options, quantize, prequantized, progress: Steps,
                     max_loss_increase: float | None = MAX_LOSS_INCREASE):
    from .frontends.decoder_export import import_decoder
    from .runtime.decoder import Decoder, DecoderSpec

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    max_seq = _checked_max_seq(max_seq, model, config)
    embeddings = model.get_input_embeddings()
    if not hasattr(embeddings, "num_embeddings"):  # e.g. MusicGen: one table per audio codebook
        raise ActsparseError(_not_one_token_stream(model, embeddings))
    vocab = int(embeddings.num_embeddings)
    calibration = None if calibration is None else list(calibration)
    predictor_options = predictor_options or {}
    lossy_calibration = None if memory_budget is not None and mode not in LOSSY_MODES else calibration
    lossy_options(mode, lossy_calibration, sparsity, method, predictor_options)  # bad options fail before the import
    graph, caches, recomputes_because = import_decoder(model, max_seq)
    one_token = graph.inputs[0].type.shape[1] == 1  # exported for one token at a time (frontends/decoder_export.py)
    if one_token and calibration is not None:
        raise ActsparseError(f"{type(model).__name__} decodes one token per call (its forward computes sizes from "
                             "the token count that a symbolic length cannot carry), so calibration prompts cannot "
                             "run through it; use mode='dense' or 'exact', or a model of another architecture")
    if calibration is not None:
        calibration = [_decoder_inputs(sample[0] if isinstance(sample, (tuple, list)) else sample, caches)
                       for sample in calibration]
        longest = max((c[0].shape[1] for c in calibration), default=0)
        if longest > max_seq:   # each sample is a prompt into the KV cache: it must fit its max_seq slots
            raise ActsparseError(f"a calibration sample has {longest} tokens but the decoder has max_seq={max_seq} "
                                 "KV-cache slots; cut the samples to at most max_seq tokens or raise max_seq")
    options = lossy_options(mode, calibration if lossy_calibration is not None else None, sparsity, method,
                             predictor_options)
    guard_note = ""
    if mode == "threshold":   # the quality guard's samples held out first: the Fisher weights never see them
        from .passes.torch_plans import held_out_guard

        options["calibration"], options["loss_guard"], guard_note = held_out_guard(
            model, options["calibration"], max_loss_increase)
        options["sensitivity"] = _fisher_weights(model, options, progress)
    if prompt is None and calibration:   # text the model reads, not random ids: the last calibration prompt
        prompt = calibration[-1][0]
    if prompt is None:
        prompt = np.random.default_rng(0).integers(0, vocab, (1, min(8, max_seq)), dtype=np.int64)
    if one_token:
        prompt = np.asarray(_to_numpy(prompt), np.int64).reshape(1, -1)[:, :1]
    if memory_budget is not None:   # a lossy mode's own calibration also counts the neurons' firing
        options = {**budget_options(memory_budget, calibration if lossy_calibration is None else None,
                                     _decoder_inputs(prompt, caches)), **options}
    if quantize in QUANTIZE_KINDS and prequantized is None and isinstance(source, (str, os.PathLike)) \
            and str(source).endswith(".gguf"):
        from .frontends.gguf_quant import read_gguf_quantized

        prequantized = read_gguf_quantized(source)  # the file's own blocks, kept where the layout allows
    functions, prefill_tokens, continues = _prefill_function(model, max_seq, caches, one_token and calibration is None
                                                             and memory_budget is None, progress)
    module = compile_graph(graph, _decoder_inputs(prompt, caches), target, mode, options, quantize, prequantized,
                           progress, functions)
    spec = DecoderSpec(max_seq, vocab, tuple((c.name, c.shape) for c in caches), _eos_ids(model),
                       source if isinstance(source, str) else type(model).__name__,
                       recomputes_because=recomputes_because, prefill_tokens=prefill_tokens,
                       prefill_continues=continues)
    lm = Decoder(module, spec, tokenizer if tokenizer is not None else own_tokenizer)
    if functions and module.runnable:  # a hybrid's prefill: from which piece length it beats token by token
        from .runtime.prefill_rule import settle_prefill_from

        progress.more(1)
        progress.start("measure from which prompt length prefill beats token by token")
        note = settle_prefill_from(lm)
        module.report.notes.extend([note] if note else [])
    guard = options.get("loss_guard")
    if guard is not None:
        guard_note = guard.describe() if guard.outcome else "no quality guard: the graph's blocks are not its MLPs"
    module.report.notes.extend([guard_note] if guard_note else [])
    if lm.decoding_note:  # said once, where the report is read: a step is a whole forward, not one token's
        module.report.notes.append(lm.decoding_note)
    from .frontends.hf_source import greedy_differences

    if isinstance(source, (str, os.PathLike)):  # a file's generation_config, not one the caller set on a model
        module.report.notes.extend(note for note in [greedy_differences(model)] if note)
    return lm


# where configs keep the number of positions a model was trained for (absolute tables or rotary training length)
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


def _checked_max_seq(max_seq, model, config) -> int:
    """KV-cache slots: by default the model's context, at most 2048; else a whole number >= 1, at most the context
    where the model has a learned table of absolute positions (past it no row exists: GPT-2's wpe, OPT's), and a
    cache that fits this machine's memory (a huge max_seq would allocate it before anything failed). Rotary, ALiBi
    and position-free models may go past their training context, as in transformers."""
    found = [(f, v) for f in CONTEXT_FIELDS if isinstance(v := getattr(config, f, None), int) and v > 0]
    field, context = found[0] if found else ("", None)
    if max_seq is None:
        return min(context or 2048, 2048)
    if isinstance(max_seq, bool) or not isinstance(max_seq, (int, np.integer)):
        raise ActsparseError(f"max_seq must be a whole number of KV-cache slots, got {max_seq!r}")
    if max_seq < 1:
        raise ActsparseError(f"max_seq must be a positive number of KV-cache slots, got {max_seq}")
    import torch

    name, tokens = type(model).__name__, model.get_input_embeddings()
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m is not tokens  # OPT's: 2 more
              and context is not None and context <= m.num_embeddings <= context + 2]
    if tables and max_seq > context:
        raise ActsparseError(f"max_seq={max_seq} exceeds the {context} positions of {name}'s position table (its "
                             f"config's {field}); give max_seq <= {context}")
    per_slot = 2 * 4 * int(getattr(config, "num_hidden_layers", 0) or 0) * int(getattr(config, "hidden_size", 0) or 0)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if per_slot * max_seq > memory:  # K and V of every layer, fp32, at most hidden_size wide per slot
        raise ActsparseError(f"max_seq={max_seq} asks for a KV cache of up to {per_slot * max_seq / 2**30:.0f} GiB, "
                             f"more than this machine's {memory / 2**30:.0f} GiB of memory; give a smaller max_seq")
    return int(max_seq)


def _not_one_token_stream(model, embeddings) -> str:
    """Why a model that embeds tokens with several tables (or none) cannot keep a decoder's contract."""
    name = type(model).__name__
    children = embeddings.children() if hasattr(embeddings, "children") else ()
    tables = [m for m in children if hasattr(m, "num_embeddings")]
    if len(tables) > 1:  # MusicGen: [batch × codebooks, seq] ids, a token per codebook each step, delayed per codebook
        return (f"{name} embeds {len(tables)} codebooks, one table each (ids [batch × {len(tables)} codebooks, seq], "
                "a token per codebook per step); a decoder's generate takes one token stream (ids [1, n] -> [1, n + "
                "new]): use transformers' generate for it")
    return (f"{name} embeds tokens with a {type(embeddings).__name__}, not one embedding table; decoding takes "
            "text decoders with one token vocabulary")


def _prefill_function(model, max_seq: int, caches, wanted: bool, progress: Steps) -> tuple[dict, int, bool]:
    """({"prefill": its graph}, the most tokens a call takes, whether a call may continue a prompt) for a decoder
    whose step takes one token per call because of recurrent states (frontends/prefill.py), or ({}, 0, False): the
    prompt then goes token by token. Not with calibration or a memory budget (`wanted` False): those passes measure
    each graph's own activations, and the two functions must share one set of weights."""
    from .frontends.prefill import import_prefill, needs_prefill
    from .ir.decoding import PREFILL_FUNCTION

    if not wanted or not needs_prefill(caches):
        return {}, 0, False
    progress.more(1)
    progress.start("import (whole-prompt prefill graph)")
    found = import_prefill(model, max_seq, caches)
    return ({PREFILL_FUNCTION: found.graph}, found.tokens, found.continues) if found.graph is not None \
        else ({}, 0, False)


def _fisher_weights(model, options: dict, progress: Steps) -> list | None:
    """Threshold mode's default allocation where the torch model is at hand: per block g² of the loss on the
    calibration prompts (one backward each, cached), which pools a greedy method's budget across blocks
    (passes/sensitivity_allocation.py); None for a method that is not greedy or layers it does not know."""
    from .passes.loss_sensitivity import cached_fisher_weights, decoder_mlps
    from .passes.sparsity_methods import method

    if not method(options["method"]).greedy or decoder_mlps(model) is None:
        return None
    progress.more(1)
    progress.start("loss sensitivity (diagonal Fisher, one torch backward per calibration prompt)")
    try:
        return cached_fisher_weights(model, [sample[0] for sample in options["calibration"]])
    except ValueError:   # MLPs whose outputs are not one tensor (routed MoE): the same budget in every block
        return None


def compile_graph(graph: Graph, arrays: list[np.ndarray], target: Any, mode: str, options: dict,
                  quantize: str | None = None, prequantized=None, progress: Steps | None = None,
                  functions: dict[str, Graph] | None = None) -> CompiledModule:
    """An imported graph through the mode's pipeline, measured on `arrays`, built for the target; `progress`
    (runtime/progress.py) gets a step per pass, the build and the report. `functions`: more graphs of the same
    model (a decoder's `prefill`), each through the same pipeline, built beside `main` under their names."""
    if progress is None:
        with steps(f"actsparse compile ({mode})", 0) as progress:
            return compile_graph(graph, arrays, target, mode, options, quantize, prequantized, progress, functions)
    from . import targets as target_registry
    from .codegen.build import build, with_functions_weights

    tgt = target_registry.get(target)
    try:
        passes = pipeline_for(mode, tgt, storage=quantize, **options)
    except ValueError as err:
        raise ActsparseError(str(err)) from None
    if quantize is not None:  # a storage property of the weights, after the sparsity passes (which read floats)
        from .passes.quantize import Quantize

        passes.append(Quantize(kind=quantize, prequantized=dict(prequantized or {})))
    progress.more(len(passes) + 2)
    result = run_pipeline(graph, passes, on_pass=lambda p: progress.start(f"pass {p.name}"))
    functions = functions or {}
    progress.more(len(passes) * len(functions))
    functions = {name: run_pipeline(function, passes, on_pass=lambda p, n=name: progress.start(f"{n}: pass {p.name}"))
                 .graph for name, function in functions.items()}
    result.graph = with_functions_weights(result.graph, functions)
    progress.start("build (lower to Relax, compile with TVM)")
    executable, weight_order = build(result.graph, tgt, functions)
    # a hot/cold split: the cold neurons' rows to a file (CPU) or host memory (GPU), not the target's memory
    final, placement, cold_file = place_cold(result.graph, on_gpu=tgt.kind == "cuda")
    result.graph = final
    inputs = [(n.attrs["name"], TensorType(n.shape, n.dtype)) for n in result.graph.inputs]
    module = CompiledModule(executable, dict(result.graph.weights), weight_order, result.graph, inputs,
                            len(result.graph.outputs), None, tgt.to_dict(), placement=placement, cold_file=cold_file)
    if cold_file is not None:  # the temporary cold file goes with the module (save() copies it into the artifact)
        import shutil
        import weakref

        weakref.finalize(module, shutil.rmtree, str(cold_file.parent), True)
    # the sparsity from the module's own run where it runs here (no numpy forward of the model)
    progress.start("report")
    module.report = build_report(tgt.name, mode, result.graph, graph if mode in LOSSY_MODES else None, arrays,
                                 result.stats, result.notes, module=module)
    return module


def _decoder_inputs(ids, caches) -> tuple:
    """A decoding graph's inputs for a prompt at position 0 with an empty cache (`caches`: its CacheSpecs)."""
    ids = np.asarray(_to_numpy(ids), np.int64).reshape(1, -1)
    if not caches:  # a model without a cache: the graph takes the token ids only (frontends/decoder_export.py)
        return (ids,)
    filled = np.zeros(ids.shape[1], np.int64)  # its length: the slots filled after the prompt is written
    return (ids, np.zeros(1, np.int64), filled, *(np.zeros(c.shape, str(c.dtype).removeprefix("torch."))
                                                       for c in caches))


def _eos_ids(model) -> tuple[int, ...]:
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    eos = getattr(model.config, "eos_token_id", None) if eos is None else eos
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)


def _to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
