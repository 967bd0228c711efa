"""`actsparse.compile()`: import a model, run the mode's pipeline, measure, build for the target.

    model --frontend--> IR --passes (pipeline.py)--> IR with sparse_gated_mlp --codegen--> TVM executable
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .compile_options import budget_options, check_example_inputs, check_mode, lossy_options, needs_calibration
from .decoder_setup import (
    checked_max_seq,
    decoder_inputs,
    eos_ids,
    fisher_weights,
    no_decoder_calibration,
    not_one_token_stream,
    prefill_function,
    text_calibration,
    to_numpy,
)
from .errors import ActsparseError
from .ir import Graph, TensorType
from .ir.examples import example_inputs_for
from .ir.quant import QUANTIZE_KINDS, STORAGE_KINDS
from .passes import pipeline_for, run_pipeline
from .passes.calibrate import SINK_POSITIONS, CalibrationError
from .passes.pipeline import LOSSY_MODES, MODES
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
    if torch is not None and isinstance(model, torch.export.ExportedProgram):
        from .frontends.torch_export import import_exported

        return import_exported(model)
    if torch is not None and isinstance(model, torch.nn.Module):
        from .frontends.torch_export import import_torch

        # numpy example inputs are as good as tensors (the compiled module takes numpy): share their memory
        inputs = tuple(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in example_inputs)
        return import_torch(model.eval(), inputs)
    raise ActsparseError(f"cannot compile a {type(model).__name__}: expected a torch.nn.Module, a "
                         "torch.export.ExportedProgram, a path to a .onnx/.mlir file, or an actsparse IR Graph")


def exported_example_inputs(model) -> tuple | None:
    """A torch.export.ExportedProgram's own example arguments (None for any other model, or a program exported
    with keyword inputs, which the compiled module does not take)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(model, torch.export.ExportedProgram):
        return None
    args, kwargs = model.example_inputs or ((), {})
    return tuple(args) if args and not kwargs else None


def compile(model: Any, example_inputs: Sequence | None = None, target: Any = "x86", mode: str = "auto",
            calibration=None, sparsity: float | None = None, memory_budget: int | None = None,
            method: str | None = None, max_seq: int | None = None, tokenizer=None, predictor: str | None = None,
            recall: float | None = None, predictor_budget: float | None = None, quantize: str | None = None,
            prequantized=None, max_loss_increase: float | None = None):
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

    `quantize` ("fp16" | "int8" | "int4"): the kernels' weights and the embedding tables stored as fp16 or
    group-wise quantized (passes/quantize.py: tables in the output projection's int8, a tied one once), in any mode;
    `prequantized` ({weight name: ir.quant.QuantizedWeight}, e.g.
    `frontends.gguf_quant.read_gguf_quantized`) supplies weights already quantized (taken losslessly where the
    stored rows match); a .gguf source compiled with `quantize="int8"|"int4"` takes its own Q8_0/Q4_0/Q4_1
    tensors that way, and its Q5_0 / Q4_K ones converted (`frontends.gguf_quant.KEPT`): the file's quality, at
    Q5_0's 8-bit bytes; `prequantized={}` quantizes every tensor anew in `quantize=`'s layout (fewer bytes, a
    second rounding).

    `max_loss_increase` (threshold mode, a decoder with its torch model): the sparsity is lowered until
    exp(Δ mean next-token loss) − 1 on calibration samples held out of the fit is at most this (e.g. 0.05: +5%
    perplexity; passes/quality_guard.py); the report says what was kept. None (the default): the asked sparsity.

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
    if max_loss_increase is not None and mode != "threshold":
        raise ActsparseError(f"max_loss_increase bounds threshold mode's loss (mode='threshold' on a decoder), not "
                             f"mode={mode!r}; leave it out")
    quant = {"quantize": quantize, "prequantized": prequantized}
    if is_decoder_source(model) and (isinstance(model, (str, os.PathLike)) or example_inputs is None
                                     or max_seq is not None):
        prompt = example_inputs[0] if example_inputs else None  # the report's sparsity is measured on it
        return compile_decoder(model, target=target, mode=mode, max_seq=max_seq, tokenizer=tokenizer,
                               calibration=calibration, sparsity=sparsity, memory_budget=memory_budget,
                               method=method, prompt=prompt, predictor_options=predictor_options,
                               max_loss_increase=max_loss_increase, **quant)
    if max_seq is not None or max_loss_increase is not None:
        given = "max_seq" if max_seq is not None else "max_loss_increase"
        raise ActsparseError(f"{given} applies to decoders (a Hugging Face folder, a .gguf file or a transformers "
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
            # an exported program keeps the inputs it was exported on; an ONNX or MLIR file (or a Graph) carries its
            # input types: make example inputs from them
            exported = exported_example_inputs(model)
            example_inputs = exported if exported is not None else example_inputs_for(graph)
        arrays = [to_numpy(x) for x in example_inputs]
        if memory_budget is not None:   # a lossy mode's own calibration also counts the neurons' firing
            options = {**budget_options(memory_budget, budget_calibration, arrays), **options}
        return compile_graph(graph, arrays, target, mode, options, **quant, progress=progress)


def compile_decoder(source: Any, target: Any = "x86", mode: str = "auto", max_seq: int | None = None,
                    tokenizer=None, calibration=None, sparsity=None, memory_budget=None, method=None, prompt=None,
                    predictor_options: dict | None = None, quantize: str | None = None, prequantized=None,
                    max_loss_increase: float | None = None):
    """A decoder source (HF folder, .gguf, transformers causal LM) -> `Decoder` (prefill / step / generate).

    The decoding graph comes from the model's own forward with its KV cache as graph inputs
    (`frontends/kv_cache.py`); the mode's pipeline and the build are those of any graph. `max_seq` (KV-cache
    slots) defaults to the model's context length, at most 2048. `prompt` (token ids [1, n]) is what the report
    measures sparsity on (default: the last calibration sample where there is calibration, else 8 random ids;
    random ids activate other neurons than text: a threshold calibrated on text skips less of them). Calibration
    samples for lossy modes are token id arrays [1, n] (or tuples whose first element is one), fed as prompts, or
    text files (a path or a list of paths: `decoder_setup.text_calibration`) read with the model's tokenizer."""
    from . import targets as target_registry
    from .frontends.gguf_read import parsed_once
    from .frontends.hf_source import load_causal_lm

    memory_budget = check_mode(mode, memory_budget)
    target = target_registry.get(target)  # an unknown target fails before the (slow) load
    with steps(f"actsparse compile ({mode} decoder)", 2) as progress, parsed_once():  # a .gguf: parsed once
        progress.start("load")
        model, own_tokenizer = load_causal_lm(source)
        progress.start("import (KV-cached decoding graph)")
        return _compile_decoder(model, own_tokenizer, source, target, mode, max_seq, tokenizer, calibration,
                                sparsity, memory_budget, method, prompt, predictor_options, quantize, prequantized,
                                progress, max_loss_increase)


def _compile_decoder(model, own_tokenizer, source, target, mode, max_seq, tokenizer, calibration, sparsity,
                     memory_budget, method, prompt, predictor_options, quantize, prequantized, progress: Steps,
                     max_loss_increase: float | None = None):
    from .frontends.decoder_export import import_decoder
    from .frontends.gguf_quant import (
        hf_tensor_types,
        read_gguf_quantized,
        second_rounding_note,
        storage_note,
        wide_tensors,
    )
    from .frontends.gguf_read import read_gguf
    from .frontends.hf_source import is_gguf
    from .ir.decoding import TokenSteps
    from .runtime.decoder import Decoder, DecoderSpec
    from .runtime.generation import from_generation_config

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    max_seq = checked_max_seq(max_seq, model, config)
    embeddings = model.get_input_embeddings()
    if not hasattr(embeddings, "num_embeddings"):  # e.g. MusicGen: one table per audio codebook
        raise ActsparseError(not_one_token_stream(model, embeddings))
    vocab = int(embeddings.num_embeddings)
    generation, generation_notes = from_generation_config(getattr(model, "generation_config", None), vocab)
    if calibration is None and needs_calibration(mode, (predictor_options or {}).get("predictor")):
        raise CalibrationError(no_decoder_calibration(mode, max_seq))
    calibration = None if calibration is None else list(text_calibration(
        calibration, tokenizer if tokenizer is not None else own_tokenizer, max_seq))
    predictor_options = predictor_options or {}
    lossy_calibration = None if memory_budget is not None and mode not in LOSSY_MODES else calibration
    lossy_options(mode, lossy_calibration, sparsity, method, predictor_options)  # bad options fail before the import
    graph, caches, recomputes_because = import_decoder(model, max_seq)
    one_token = graph.inputs[0].type.shape[1] == 1  # exported for one token at a time (frontends/decoder_export.py)
    if calibration is not None:   # a graph exported for one token per call takes each prompt token by token
        calibration = [(TokenSteps if one_token else tuple)(decoder_inputs(
            sample[0] if isinstance(sample, (tuple, list)) else sample, caches)) for sample in calibration]
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
        options["sensitivity"] = fisher_weights(model, options, progress)
        options["calibration_skip"] = SINK_POSITIONS   # the prompts' sink tokens: no decode step is one
    if prompt is None and calibration:   # text the model reads, not random ids: the last calibration prompt
        prompt = calibration[-1][0]
    if prompt is None:
        prompt = np.random.default_rng(0).integers(0, vocab, (1, min(8, max_seq)), dtype=np.int64)
    if one_token:
        prompt = np.asarray(to_numpy(prompt), np.int64).reshape(1, -1)[:, :1]
    if memory_budget is not None:   # a lossy mode's own calibration also counts the neurons' firing
        options = {**budget_options(memory_budget, calibration if lossy_calibration is None else None,
                                     decoder_inputs(prompt, caches)), **options}
    gguf_types = {} if is_gguf(source) else None   # HF name -> (GGUF name, type): the report says what became of each
    if quantize in QUANTIZE_KINDS and prequantized is None and gguf_types is not None:
        prequantized = read_gguf_quantized(source, tensor_types=gguf_types)  # the file's own blocks, where they fit
    functions, prefill_tokens, continues, no_prefill = prefill_function(
        model, max_seq, caches, one_token, calibration is not None or memory_budget is not None, progress)
    module = compile_graph(graph, decoder_inputs(prompt, caches), target, mode, options, quantize, prequantized,
                           progress, functions, wide_tensors(gguf_types or {}) if prequantized else frozenset())
    if gguf_types is not None and not gguf_types:   # not read above: read now from the compile's one parse
        # (gguf_read.parsed_once); HF names only with quantize=, else every tensor is float32 and the file's own do
        gguf_types = hf_tensor_types(source) if quantize else {t.name: (t.name, t.tensor_type.name)
                                                               for t in read_gguf(source).tensors}
    if gguf_types is not None:
        module.report.notes.append(storage_note(gguf_types, module.graph.weights, prequantized or {}))
        warning = second_rounding_note(gguf_types, module.graph.weights, prequantized or {})
        module.report.notes.extend([warning] if warning else [])
    spec = DecoderSpec(max_seq, vocab, tuple((c.name, c.shape) for c in caches), eos_ids(model),
                       source if isinstance(source, str) else type(model).__name__,
                       recomputes_because=recomputes_because, prefill_tokens=prefill_tokens,
                       prefill_continues=continues, generation=generation)
    lm = Decoder(module, spec, tokenizer if tokenizer is not None else own_tokenizer)
    if functions and module.runnable:  # a hybrid's prefill: from which piece length it beats token by token
        from .runtime.prefill_rule import settle_prefill_from

        progress.more(1)
        progress.start("measure from which prompt length prefill beats token by token")
        note = settle_prefill_from(lm)
        module.report.notes.extend([note] if note else [])
    guard = options.get("loss_guard")
    if guard is not None:
        guard_note = guard.describe() if guard.outcome else (
            "no quality guard: the guard runs one plan per torch MLP, and here some blocks are not its MLPs' own "
            "(a fallback method, a folded bias, a block kept dense, or blocks the torch model does not have)")
    module.report.notes.extend([guard_note] if guard_note else [])
    if lm.decoding_note:  # said once, where the report is read: a step is a whole forward, not one token's
        module.report.notes.append(lm.decoding_note)
    module.report.notes.extend([no_prefill] if no_prefill else [])
    module.report.notes.extend(generation_notes)  # settings generate does not apply, sampling it does not follow
    return lm


def compile_graph(graph: Graph, arrays: list[np.ndarray], target: Any, mode: str, options: dict,
                  quantize: str | None = None, prequantized=None, progress: Steps | None = None,
                  functions: dict[str, Graph] | None = None, wide: frozenset = frozenset()) -> CompiledModule:
    """An imported graph through the mode's pipeline, measured on `arrays`, built for the target; `progress`
    (runtime/progress.py) gets a step per pass, the build and the report. `functions`: more graphs of the same
    model (a decoder's `prefill`), each through the same pipeline, built beside `main` under their names. `wide`:
    weights the source stored above 4 bits (passes/quantize.py)."""
    if progress is None:
        with steps(f"actsparse compile ({mode})", 0) as progress:
            return compile_graph(graph, arrays, target, mode, options, quantize, prequantized, progress, functions,
                                 wide)
    from . import targets as target_registry
    from .codegen.build import build, with_functions_weights
    from .runtime.tvm_stderr import tvm_noise_dropped

    tgt = target_registry.get(target)
    try:
        passes = pipeline_for(mode, tgt, storage=quantize, **options,
                              file_layouts={name: q.layout for name, q in (prequantized or {}).items()})
    except ValueError as err:
        raise ActsparseError(str(err)) from None
    if quantize is not None:  # a storage property of the weights, after the sparsity passes (which read floats)
        from .passes.quantize import Quantize

        passes.append(Quantize(kind=quantize, prequantized=dict(prequantized or {}), wide=frozenset(wide),
                               kernel_family=tgt.kernel_family))
    progress.more(len(passes) + 2)
    result = run_pipeline(graph, passes, on_pass=lambda p: progress.start(f"pass {p.name}"))
    functions = functions or {}
    progress.more(len(passes) * len(functions))
    functions = {name: run_pipeline(function, passes, on_pass=lambda p, n=name: progress.start(f"{n}: pass {p.name}"))
                 .graph for name, function in functions.items()}
    result.graph = with_functions_weights(result.graph, functions)
    progress.start("build (lower to Relax, compile with TVM)")
    with tvm_noise_dropped():  # TVM's scatter lowerings warn of a pragma its codegen ignores (tvm_stderr.py)
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
