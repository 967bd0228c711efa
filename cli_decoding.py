"""The decoder commands of the CLI (cli.py): `actsparse generate` and `actsparse chat`, their flags (one per
generation setting of runtime/generation.py's table) and how they open a decoder (an artifact, or a Hugging Face
folder / .gguf compiled on the spot)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ActsparseError

TARGET_HELP = ("x86 (this machine's CPU; the default), x86:<cpu> (another x86 CPU LLVM knows: x86:x86-64-v3 runs on "
               "any AVX2 machine, x86:x86-64-v4 on any AVX-512 one), arm, arm-fhm, arm-dotprod, cuda")


def count(text: str) -> int:
    """An integer option that must be >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def decoder_arguments(parser) -> None:
    """What `generate` and `chat` share: the decoder, the length, how to compile a source, the settings."""
    parser.add_argument("what", help="decoder artifact directory, Hugging Face model folder or file.gguf")
    parser.add_argument("--system", help="a system message before the user's (generate: with --chat)")
    parser.add_argument("-n", "--tokens", "--max-new-tokens", dest="tokens", type=count,
                        help="new tokens to generate at most (default: the model's generation_config "
                        "max_new_tokens, or max_length minus the prompt, else 32; --max-new-tokens as in transformers)")
    compile_arguments(parser)
    _generation_arguments(parser)


def perplexity_arguments(parser) -> None:
    """`actsparse perplexity`: the decoder, the text, the windows, how to compile a source."""
    from .runtime.perplexity import WINDOW, WINDOWS

    parser.add_argument("what", help="decoder artifact directory, Hugging Face model folder or file.gguf")
    parser.add_argument("--text", nargs="+", required=True, metavar="FILE", help="text files to score (read as "
                        "UTF-8, joined), tokenized with the model's tokenizer")
    parser.add_argument("--window", type=count, default=WINDOW, help=f"tokens per window, each scored from an "
                        f"empty cache (default {WINDOW}; at most max_seq)")
    parser.add_argument("--windows", type=count, default=WINDOWS, help=f"windows at most (default {WINDOWS})")
    parser.add_argument("--against-dense", action="store_true", help="also score the dense twin of the same build "
                        "(same weights and dtype, every neuron computed) and print the increase")
    compile_arguments(parser)


def compile_arguments(parser) -> None:
    """How a model folder or .gguf is compiled on the spot (an artifact is used as built)."""
    compiling = parser.add_argument_group("when compiling a model folder or GGUF (an artifact is used as built)")
    compiling.add_argument("-t", "--target", help=TARGET_HELP)
    compiling.add_argument("-m", "--mode", help="auto (default), exact, dense, threshold, ...")
    compiling.add_argument("--max-seq", type=count, help="KV-cache slots")
    compiling.add_argument("--quantize", choices=("fp16", "int8", "int4"), help="weights as fp16 or group-wise "
                           "int8 / int4 (a .gguf keeps its own blocks where they fit)")
    compiling.add_argument("--sparsity", type=float, help="-m threshold: the target sparsity, e.g. 0.5")
    compiling.add_argument("--calib-text", nargs="+", metavar="FILE", help="-m threshold: calibration text, "
                           "tokenized with the model's tokenizer")
    compiling.add_argument("--method", help="-m threshold: the sparsity method (default: build's)")


def _generation_arguments(parser) -> None:
    """One flag per generation setting with a CLI type (runtime/generation.py SETTINGS), e.g. --repetition-penalty,
    --num-beams, --suppress-tokens 5 7, --bad-words TEXT...; each given one overrides the model's generation_config
    for this run."""
    from .runtime.generation import SETTINGS, ListFlag

    group = parser.add_argument_group("generation settings (default: the model's generation_config, as "
                                      "transformers' generate applies it)")
    for setting in SETTINGS:
        flag, parse = setting.flag, _flag_type(setting.flag)
        name = "--" + (getattr(flag, "name", "") or setting.name).replace("_", "-")
        if flag is bool:
            group.add_argument(name, action="store_true", default=None, dest=setting.name)
        elif isinstance(flag, ListFlag):
            group.add_argument(name, type=parse, nargs="+", action="extend", dest=setting.name,
                               metavar=flag.metavar)
        elif flag is not None:
            group.add_argument(name, type=parse, dest=setting.name, metavar=flag.__name__.strip("_").upper())


def _flag_type(flag):
    """argparse's type for a setting's flag: a ValueError of the table's check becomes argparse's one-line error."""
    item = getattr(flag, "item", flag)
    if item in (int, float, str, bool, None):
        return item

    def parse(text):
        try:
            return item(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def _generation_overrides(args, encode=None) -> dict:
    """The settings given on the command line; text ones (--bad-words) tokenized with `encode` (text -> ids), left
    out where it is None (before a decoder and its tokenizer exist)."""
    from .runtime.generation import SETTINGS

    given = {s: getattr(args, s.name) for s in SETTINGS if getattr(args, s.name, None) is not None}
    return {s.name: (value if getattr(s.flag, "from_text", None) is None else s.flag.from_text(value, encode))
            for s, value in given.items() if encode is not None or getattr(s.flag, "from_text", None) is None}


def generate_command(args) -> int:


    if args.system and not args.chat:
        raise ActsparseError("--system is a chat message: give it with --chat")
    lm = _open_decoder(args)
    overrides = _generation_overrides(args, lambda text: _encode(lm, text))

    shown = []

    def show(piece: str) -> None:  # the text as it is decoded (a completion after its prompt)
        print(("" if shown or args.chat else args.prompt) + piece, end="", flush=True)
        shown.append(piece)

    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.prompt})
        text, tokens, seconds = lm.chat(messages, args.tokens, on_text=show, **overrides)
        prompt_length = lm.chat_ids(messages).shape[1]
    else:
        text, tokens, seconds = lm.generate_text(args.prompt, args.tokens, on_text=show, **overrides)
        prompt_length = len(lm.tokenizer(args.prompt)["input_ids"])
    print("" if shown or args.chat else args.prompt)
    _, why = lm.new_tokens(prompt_length, args.tokens, **overrides)
    print(f"-- length: {why}")
    rate = f"{(tokens - 1) / seconds:.1f} tokens/s" if tokens > 1 and seconds > 0 else "too few steps to time"
    print(f"-- {tokens} new tokens, decode {rate} (mode {lm.report.mode}, after a {len(args.prompt)}-character "
          "prompt's prefill)")
    if lm.decoding_note:
        print(f"-- note: {lm.decoding_note}")
    return 0


def perplexity_command(args) -> int:
    """The decoder's perplexity on the text, scored by its compiled steps; with --against-dense its dense twin's on the
    same windows, and the increase."""
    from .runtime.bench import dense_twin_decoder
    from .runtime.perplexity import score, token_windows

    lm = _open_decoder(args)
    windows = token_windows(lm, args.text, args.window, args.windows)
    mode = lm.report.mode
    result = score(lm, windows)
    print(f"-- {mode}: {result}")
    if args.against_dense:
        dense = score(dense_twin_decoder(lm), windows)
        print(f"-- dense twin: {dense}")
        increase = round(100 * (result.perplexity / dense.perplexity - 1), 2) + 0.0  # + 0.0: no "-0.00%"
        print(f"-- {mode} vs dense: {increase:+.2f}% perplexity")
    if lm.decoding_note:
        print(f"-- note: {lm.decoding_note}")
    return 0


def _open_decoder(args):
    """The decoder `args.what` names (an artifact, or a folder / .gguf compiled now), after the generation flags are
    checked (bad values before any compile; token ids at generate)."""
    import actsparse

    from . import api
    from .frontends.hf_source import is_decoder_source
    from .runtime.decoder import Decoder
    from .runtime.generation import check_settings

    check_settings(_generation_overrides(args), vocab_size=sys.maxsize)
    path = Path(args.what)
    compile_flags = {"-t": args.target, "-m": args.mode, "--max-seq": args.max_seq, "--quantize": args.quantize,
                     "--sparsity": args.sparsity, "--calib-text": args.calib_text, "--method": args.method}
    if (path / "manifest.json").is_file():
        given = [flag for flag, value in compile_flags.items() if value is not None]
        if given:
            raise ActsparseError(f"{' '.join(given)} apply when compiling a model folder or .gguf; {path} is an "
                                 "artifact, used as it was built: leave them out, or `actsparse build` it anew")
        lm = actsparse.load(path)
        if not isinstance(lm, Decoder):
            raise ActsparseError(f"{path} is an artifact of a model without a KV cache, not a decoder; build one from "
                                 "a Hugging Face model folder or a .gguf file")
        return lm
    if is_decoder_source(args.what):
        return api.compile(args.what, target=args.target or "x86", mode=args.mode or "auto", max_seq=args.max_seq,
                           quantize=args.quantize, sparsity=args.sparsity, calibration=args.calib_text,
                           method=args.method)
    raise ActsparseError(f"{args.what}: expected a decoder artifact directory, a Hugging Face model folder or a "
                         ".gguf file")


def chat_command(args) -> int:
    """Turns read from stdin (a prompt `> ` on a terminal) until EOF or /exit; /reset starts over."""
    lm = _open_decoder(args)
    overrides = _generation_overrides(args, lambda text: _encode(lm, text))
    lm.chat_ids("")  # a decoder without a tokenizer or a chat template: one error before the first turn
    chat = lm.start_chat(args.system, args.tokens, **overrides)
    terminal = sys.stdin.isatty()
    while True:
        try:
            line = input("> " if terminal else "")
        except EOFError:
            break
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            chat = lm.start_chat(args.system, args.tokens, **overrides)
            continue
        if not line:
            continue
        chat.send(line, on_text=lambda piece: print(piece, end="", flush=True))
        turn = chat.last
        rate = f"{(turn.tokens - 1) / turn.seconds:.1f} tokens/s" if turn.tokens > 1 and turn.seconds > 0 else "-"
        print(f"\n-- {turn.tokens} new tokens, decode {rate}; {turn.reused} of the {turn.prompt_tokens} prompt tokens "
              "were in the cache", flush=True)
    return 0


def _encode(lm, text: str) -> list[int]:
    """A --bad-words / --sequence-bias text -> its token ids, as transformers' docs tokenize them (no special
    tokens)."""
    if lm.tokenizer is None:
        raise ActsparseError("--bad-words and --sequence-bias take text and this decoder has no tokenizer; build it "
                             "from a folder with the tokenizer's files")
    ids = list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ActsparseError(f"{text!r} encodes to no tokens; give text with something in it")
    return ids
