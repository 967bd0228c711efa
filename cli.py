"""The `actsparse` command: demo, build, generate, chat, perplexity, inspect, bench, keygen. User errors (bad
arguments, bad files, models actsparse cannot take) exit 2 with one line, no traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .cli_decoding import (
    TARGET_HELP,
    chat_command,
    count,
    decoder_arguments,
    generate_command,
    perplexity_arguments,
    perplexity_command,
)
from .errors import ActsparseError


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="actsparse", description="Compile LLM MLP activation sparsity into speed.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="compile the embedded tiny model in exact mode, generate, report")
    demo.add_argument("--prompt", default="class Stack:\n    def __init__(self):\n        self.")
    demo.add_argument("--tokens", type=count, default=48, help="bytes to generate greedily")
    demo.add_argument("--plot", help="write the per-layer sparsity plot here (PNG)")

    build = sub.add_parser("build", help="compile a model to a deployable artifact directory")
    build.add_argument("spec", help="Hugging Face model folder | file.gguf (both build a decoder with a KV cache) | "
                       "module:factory (returns a model or (model, example_inputs)) | file.onnx | file.mlir")
    build.add_argument("-t", "--target", default="x86", help=TARGET_HELP)
    build.add_argument("-m", "--mode", default="auto")
    build.add_argument("-o", "--out", required=True, help="artifact directory to write")
    build.add_argument("--seq", type=count, default=16, help="example sequence length when the factory gives none")
    build.add_argument("--quantize", choices=("fp16", "int8", "int4"),
                       help="store the kernels' weights as fp16, or group-wise quantized (groups of 32, fp16 scales)")
    build.add_argument("--requantize-gguf", action="store_true",
                       help="with a .gguf and --quantize int8|int4: quantize every tensor anew in that layout "
                            "instead of keeping the file's own blocks (fewer bytes where Q5_0 would be kept as 8-bit "
                            "groups; a second rounding, lower quality)")
    build.add_argument("--sign", metavar="KEY", help="sign the artifact with this ed25519 private key (PEM; make one "
                       "with `actsparse keygen KEY`); load it with actsparse.load(OUT, public_key=KEY.pub)")
    build.add_argument("--memory-budget", metavar="BYTES",
                       help="-m exact|auto: RAM for the MLP weights, e.g. 512M; hot neurons stay resident, cold ones "
                            "are read on demand from the artifact's cold.bin (calibration: --calib, else the example)")
    build.add_argument("--max-seq", type=count, help="decoders: KV-cache slots (default: the model's context, "
                       "at most 2048)")
    _lossy_arguments(build)

    generate = sub.add_parser("generate", help="decode with the KV cache (greedy unless --do-sample): the text and "
                              "tokens/s")
    generate.add_argument("-p", "--prompt", required=True, help="the text to continue; with --chat, the user's message "
                          "(-p as in llama.cpp)")
    generate.add_argument("--chat", action="store_true", help="a chat turn: the prompt (and --system) through the "
                          "model's chat template; prints the assistant's reply")
    decoder_arguments(generate)
    chat = sub.add_parser("chat", help="a conversation on stdin through the model's chat template, the KV cache "
                          "kept between turns (/reset starts over, /exit or EOF ends)")
    decoder_arguments(chat)

    perplexity = sub.add_parser("perplexity", help="perplexity on text files, scored by the compiled decoding steps "
                                "(the quality a lossy mode or --quantize costs, with --against-dense)")
    perplexity_arguments(perplexity)

    inspect = sub.add_parser("inspect", help="print the report of an artifact or of a model spec")
    inspect.add_argument("what", help="artifact directory, Hugging Face model folder, file.gguf, module:factory, "
                         "file.onnx or file.mlir")
    inspect.add_argument("-m", "--mode", default="auto")
    inspect.add_argument("--seq", type=count, default=16)
    inspect.add_argument("--plot", help="also write the sparsity plot (PNG)")
    _lossy_arguments(inspect)

    bench = sub.add_parser("bench", help="time an artifact against its dense twin on this machine")
    bench.add_argument("artifact")
    bench.add_argument("--seq", type=count, default=1, help="tokens per call (1 = decoding)")
    bench.add_argument("--repeats", type=count, default=20)
    bench.add_argument("--rpc", metavar="HOST:PORT", help="measure the memory levels of a device registered with this "
                                                          "TVM RPC tracker, for the artifact's target")
    bench.add_argument("--key", help="with --rpc: the device's key at the tracker")

    keygen = sub.add_parser("keygen", help="make an ed25519 key pair for `build --sign` (KEY and KEY.pub)")
    keygen.add_argument("key", help="private key file to write (PEM, mode 600); the public key goes to KEY.pub")

    args = parser.parse_args(argv)
    commands = {"demo": _demo, "build": _build, "generate": generate_command, "chat": chat_command,
                "perplexity": perplexity_command, "inspect": _inspect,
                "bench": _bench, "keygen": _keygen}
    try:
        return commands[args.command](args)
    except ActsparseError as err:
        message = str(err)
    except OSError as err:  # a path the user gave: missing, unreadable, disk full
        message = f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
    except KeyboardInterrupt:
        message = "interrupted"
    print(f"actsparse {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _lossy_arguments(parser) -> None:
    from .passes.sparsity_methods import DEFAULT_METHOD, METHODS

    parser.add_argument("--calib", help="calibration inputs for -m threshold|predictor: a .safetensors file with "
                        "one tensor per model input, named 0, 1, ... in input order; axis 0 indexes the samples, "
                        "each sample keeps it as a batch axis of 1 (token windows: input 0 of shape [samples, seq])")
    parser.add_argument("--calib-text", nargs="+", metavar="FILE", help="decoders (a Hugging Face folder or .gguf): "
                        "calibration from text files like what the model will read, tokenized with its tokenizer "
                        "(16 windows of 256 tokens, cached), instead of --calib")
    parser.add_argument("--sparsity", type=float, help="target sparsity for -m threshold, e.g. 0.9")
    parser.add_argument("--method", help=f"sparsity method: {DEFAULT_METHOD} (default), "
                                         f"{', '.join(m for m in METHODS if m != DEFAULT_METHOD)}")
    parser.add_argument("--max-loss-increase", type=float, metavar="FRACTION", help="-m threshold on a decoder: "
                        "lower the sparsity until the loss on held-out calibration windows rises at most this much "
                        "(0.05: +5%%)")
    parser.add_argument("--predictor", help="-m predictor: lowrank (default), svd, sign, quant, quant8 or bound")
    parser.add_argument("--recall", type=float, help="-m predictor: target recall per layer (default 0.99)")


def load_calibration(path: str | None) -> list[tuple] | None:
    """The --calib file -> calibration samples (tuples of arrays, one per model input). safetensors only: never
    unpickle a file someone hands us."""
    if path is None:
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not Path(path).is_file():
        raise ActsparseError(f"calibration file {path} does not exist")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ActsparseError(f"calibration file {path} is not a readable .safetensors file ({err}); write one "
                             "with safetensors.numpy.save_file({'0': input0_samples, ...}, path)") from None
    names = [str(i) for i in range(len(tensors))]
    if sorted(tensors) != sorted(names):
        raise ActsparseError(f"calibration file {path}: tensors must be named 0..{len(tensors) - 1} after the model "
                             f"inputs they feed, got {sorted(tensors)}")
    counts = {tensors[n].shape[0] if tensors[n].ndim else 0 for n in names}
    if len(counts) != 1 or 0 in counts:
        raise ActsparseError(f"calibration file {path}: every tensor needs the same number (> 0) of samples on "
                             f"axis 0, got {[tensors[n].shape for n in names]}")
    return [tuple(tensors[n][i : i + 1] for n in names) for i in range(counts.pop())]


def check_lossy_flags(args, decoder: bool = False) -> None:
    """A lossy mode's missing --sparsity / --calib in the CLI's words (the API's errors name its keyword arguments),
    before the (slow) model load; a `decoder` (folder / .gguf) is told of --calib-text first: it reads text."""
    from .compile_options import needs_calibration

    missing = []
    if args.mode == "threshold" and args.sparsity is None:
        missing.append("a target sparsity (--sparsity 0.5: the share of MLP neurons skipped)")
    if args.calib is not None and args.calib_text:
        raise ActsparseError("give calibration as --calib FILE.safetensors or as --calib-text FILE..., not both")
    if args.calib is None and not args.calib_text and needs_calibration(args.mode, args.predictor):
        text = "--calib-text FILE: text like the model will read, a few thousand tokens; or " if decoder else ""
        missing.append(f"calibration inputs ({text}--calib FILE.safetensors: token windows of text like the model "
                       "will read, tensor '0' of shape [samples, seq], a few hundred tokens or more, written with "
                       "safetensors.numpy.save_file({'0': ids}, FILE))")
    if missing:
        raise ActsparseError(f"-m {args.mode} needs {' and '.join(missing)}; or build with -m exact or -m dense, "
                             "which need neither")


def _lossy_options(args, decoder: bool = False) -> dict:
    """The lossy flags as compile()'s options; calibration text and the loss guard apply to a decoder only."""
    if not decoder and (args.calib_text or args.max_loss_increase is not None):
        given = "--calib-text" if args.calib_text else "--max-loss-increase"
        raise ActsparseError(f"{given} applies to decoders (a Hugging Face model folder or a .gguf file), whose "
                             "tokenizer and loss it uses; for this model use --calib FILE.safetensors")
    options = {"calibration": args.calib_text or load_calibration(args.calib), "sparsity": args.sparsity,
               "method": args.method, "predictor": args.predictor, "recall": args.recall}
    return {**options, "max_loss_increase": args.max_loss_increase} if decoder else options


def load_spec(spec: str, seq: int):
    """`module:factory` -> (model, example_inputs)."""
    import torch

    module_name, _, factory_name = spec.partition(":")
    if not factory_name:
        raise ActsparseError(f"cannot load {spec!r}: it is neither an artifact directory nor module:factory "
                             "(nor a .onnx/.mlir file)")
    cwd = str(Path.cwd())
    if cwd not in sys.path:  # a model module next to the user, as `python -m` would find it
        sys.path.insert(0, cwd)
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as err:
        raise ActsparseError(f"cannot load {spec!r}: {err}") from None
    made = factory()
    if isinstance(made, tuple) and len(made) == 2:
        return made
    vocab = getattr(getattr(made, "config", None), "vocab_size", None) or getattr(made, "vocab_size", 256)
    return made, (torch.randint(0, int(vocab), (1, seq), generator=torch.Generator().manual_seed(0)),)


def _build(args) -> int:
    from . import api
    from .frontends.hf_source import is_decoder_source, is_gguf
    from .runtime.artifact import check_destination, read_artifact

    check_destination(args.out)  # before the slow part: a refused destination fails now
    if args.sign and not Path(args.sign).is_file():
        raise ActsparseError(f"signing key {args.sign} does not exist; make one with `actsparse keygen {args.sign}`")
    if args.requantize_gguf and not (is_gguf(args.spec) and args.quantize in ("int8", "int4")):
        given = (f"{args.spec} is not a .gguf file" if not is_gguf(args.spec) else
                 f"given --quantize {args.quantize}" if args.quantize else "given no --quantize")
        raise ActsparseError(f"--requantize-gguf applies to a .gguf file built with --quantize int8 or int4 ({given}); "
                             "add --quantize int4 (or int8) to a .gguf, or leave the flag out")
    decoder = is_decoder_source(args.spec)
    check_lossy_flags(args, decoder)
    lossy = _lossy_options(args, decoder)   # a flag that does not apply fails before the (slow) load
    if decoder:
        lm = api.compile(args.spec, target=args.target, mode=args.mode, max_seq=args.max_seq,
                         quantize=args.quantize, memory_budget=args.memory_budget,
                         prequantized={} if args.requantize_gguf else None, **lossy)
        path = lm.save(args.out, signing_key=args.sign)
        print(lm.report)
        print(f"wrote {path} (decoder: {lm.max_seq} KV-cache slots, tokenizer "
              f"{'included' if lm.tokenizer is not None else 'absent'}; manifest sha256 "
              f"{read_artifact(path).manifest_sha256}{', signed' if args.sign else ''})")
        return 0
    if args.max_seq is not None:
        raise ActsparseError("--max-seq applies to decoders (a Hugging Face model folder or a .gguf file)")
    if args.spec.endswith((".onnx", ".mlir")):
        model, inputs = args.spec, ()
    else:
        model, inputs = load_spec(args.spec, args.seq)
    cm = api.compile(model, inputs, target=args.target, mode=args.mode, quantize=args.quantize,
                     memory_budget=args.memory_budget, **lossy)
    path = cm.save(args.out, signing_key=args.sign)
    print(cm.report)
    print(f"wrote {path} (manifest sha256 {read_artifact(path).manifest_sha256}{', signed' if args.sign else ''})")
    return 0


def _keygen(args) -> int:
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key, public = Path(args.key), Path(args.key + ".pub")
    for path in (key, public):
        if path.exists():
            raise ActsparseError(f"{path} exists; keygen never overwrites a key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    print(f"wrote {key} (private: keep it secret) and {public} (give it to whoever loads your artifacts)")
    return 0


def _inspect(args) -> int:
    from .frontends.hf_source import is_decoder_source
    from .runtime import read_report

    path = Path(args.what)
    decoder = not (path / "manifest.json").is_file() and is_decoder_source(args.what)
    if path.is_dir() and not decoder:
        report, digest = read_report(path)
        print(f"{path}: manifest sha256 {digest}")
    else:
        from . import api

        check_lossy_flags(args, decoder)
        lossy = _lossy_options(args, decoder)
        if decoder:   # a Hugging Face folder or .gguf: the decoder's compile report
            report = api.compile(args.what, mode=args.mode, **lossy).report
        else:
            model, inputs = (args.what, ()) if args.what.endswith((".onnx", ".mlir")) else load_spec(args.what,
                                                                                                   args.seq)
            report = api.compile(model, inputs, mode=args.mode, **lossy).report
    print(report)
    if args.plot:
        print(f"wrote {report.plot(args.plot)}")
    return 0


def _bench(args) -> int:
    from .runtime.bench import bench_artifact

    if args.rpc or args.key:
        from .runtime.bench_remote import bench_remote

        if not (args.rpc and args.key):
            raise ActsparseError("bench --rpc HOST:PORT needs --key KEY (the device's key at the tracker), and --key "
                                 "needs --rpc")
        print(bench_remote(args.artifact, args.rpc, args.key))
        return 0
    print(bench_artifact(args.artifact, seq=args.seq, repeats=args.repeats))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(prompt=args.prompt, tokens=args.tokens, plot=args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
