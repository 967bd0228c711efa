"""Every causal-LM architecture transformers knows, shrunk to a tiny config (arch_table.py's `build_tiny`) and
compiled as a KV-cached decoder; greedy decoding compared with transformers' `generate` token for token.

    python -m actsparse.scripts.decode_table [ARCH ...] [--write]

A row says `yes` when `actsparse.compile(model, mode="dense", max_seq=...)` builds and its `generate` equals
`model.generate(ids, attention_mask=ones, do_sample=False)` for NEW tokens (a plain greedy generation config: the
model's own forced-EOS or n-gram rules are decoding policy, not the model); `one token per call` when the model
could only be exported for one token at a time (prefill then feeds the prompt token by token), `prompt per call
(prefill), then one token per call` when such a model (recurrent states) has a whole-prompt `prefill` function
besides (frontends/prefill.py); `whole sequence per
call` when each step runs the model on all tokens so far, because it keeps no cache or because its cached forward
exports in no variant (ProphetNet's takes one token at a position export fixes); otherwise the
stage and the first line of the error. `--write` updates the README's generated table (rows of architectures not
run are kept).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from .arch_table import build_tiny, causal_lm_architectures, clean_message, example_ids, readme_path, replace_marked
from .arch_table import table_rows as _rows_between

NEW = 8
START, END = "<!-- decode-table:start -->", "<!-- decode-table:end -->"
# what stops an architecture whose decoding still fails, found by reading its modeling code (shown only while the
# check fails, before the error itself)
CAUSES = {
    "cpmant": "its cached forward re-feeds the whole sequence and keeps the prompt in the cache (the mask spans "
              "prompt + seq while the keys span the cache), and its forward without a cache builds its padding mask "
              "from a Python list of seq - prompt_length ints (`list(range(seqlen - self.prompt_length))`), which "
              "export fixes to one length: `range` reads the symbolic length as a Python int (a guard on its value) "
              "before any op exists, so no op or shape rule of the frontend sees it; neither runs at a growing "
              "length",
}
HEADER = ("| architecture | decodes as transformers | export | reason it stops |\n"
          "|---|---|---|---|")


def check_decoding(arch: str) -> dict:
    """{arch, decodes ('yes' | 'no' | 'differs'), export, reason, seconds} for one architecture."""
    from transformers import GenerationConfig

    import actsparse

    row, clock, stage = {"arch": arch, "decodes": "no", "export": "–", "reason": ""}, time.perf_counter(), ""
    try:
        model = build_tiny(arch)
        ids = example_ids(model)
        # plain greedy on both sides: the model's own generation config (BART's forced EOS and n-gram bans, which
        # our generate takes over from it) replaced before the compile reads it
        model.generation_config = GenerationConfig(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                                   pad_token_id=getattr(model.config.get_text_config(),
                                                                        "pad_token_id", None))
        lm = actsparse.compile(model, mode="dense", max_seq=ids.shape[1] + NEW + 2)
        row["export"] = export_kind(lm)
        got = torch.as_tensor(lm.generate(ids, NEW))
        stage = "transformers' generate: "  # ours ran; what follows is the reference
        with torch.no_grad():
            want = model.generate(ids, attention_mask=torch.ones_like(ids))
        if got.shape[1] < want.shape[1] and int(got[0, -1]) in lm.spec.eos_token_ids:
            want = want[:, :got.shape[1]]  # ours stops at end-of-sequence, where min_new_tokens made it go on
        row["decodes"] = "yes" if torch.equal(got, want) else "differs"
        if row["decodes"] == "differs":
            n = ids.shape[1]
            row["reason"] = f"new tokens {got[0, n:].tolist()} vs transformers' {want[0, n:].tolist()}"
    except Exception as err:  # noqa: BLE001 - the reason is the product here
        row["reason"] = f"{stage}{type(err).__name__}: {clean_message(str(err))}"
        if arch in CAUSES:
            row["reason"] = f"{CAUSES[arch]} ({row['reason']})"
    row["seconds"] = round(time.perf_counter() - clock, 1)
    return row


def export_kind(lm) -> str:
    """How the decoder takes tokens: the whole sequence, the prompt per call, or one token per call (and then
    whether a `prefill` function takes the prompt: frontends/prefill.py)."""
    if lm.recomputes:
        return f"whole sequence per call ({recomputed_because(lm)})"
    if lm.module.inputs[0][1].shape[1] != 1:
        return "prompt per call"
    if not lm.spec.prefill_tokens:
        return "one token per call"
    if not lm.spec.prefill_continues:
        return "prompt per call from a fresh cache (prefill), then one token per call"
    if lm.spec.prefill_tokens < lm.max_seq:
        return f"prompt per {lm.spec.prefill_tokens} tokens (prefill), then one token per call"
    return "prompt per call (prefill), then one token per call"


def recomputed_because(lm) -> str:
    """Why a decoder runs the whole sequence each call, in short, from the reason its import recorded: the model
    keeps no cache, or keeps one that decoding cannot carry or whose cached forward exports in no variant
    (frontends/decoder_export.py falls back to its uncached forward)."""
    from actsparse.frontends.decoder_export import CACHE_REFUSED, NO_CACHE

    why = lm.spec.recomputes_because
    return "no cache" if why == NO_CACHE else CACHE_REFUSED if why.startswith(CACHE_REFUSED) else \
        "its cached forward does not export"


def format_row(r: dict) -> str:
    return f"| {r['arch']} | {r['decodes']} | {r['export']} | {r['reason'] or '–'} |"


def table_rows(readme: str) -> dict[str, str]:
    return _rows_between(readme, START, END)


def write_table(rows: list[dict], path) -> None:
    text = path.read_text()
    merged = {**table_rows(text), **{r["arch"]: format_row(r) for r in rows}}
    ok = sum(row.split("|")[2].strip() == "yes" for row in merged.values())
    table = "\n".join([START, f"{ok} of {len(merged)} architectures tried decode greedily token for token as "
                       "transformers' `generate` does (tiny configs, dense mode). Generated by `python -m "
                       "actsparse.scripts.decode_table --write`.", "", HEADER, *(merged[a] for a in sorted(merged)),
                       END])
    replace_marked(path, text, table, START, END, "Decoding, architecture by architecture (generated)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile every causal-LM architecture of transformers (tiny "
                                     "configs) as a decoder and compare greedy decoding with transformers.")
    parser.add_argument("archs", nargs="*", help="architectures (default: all of transformers' causal-LM mapping)")
    parser.add_argument("--write", action="store_true", help="update the table in README.md")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = []
    for arch in tqdm(args.archs or causal_lm_architectures(), unit="arch"):
        rows.append(check_decoding(arch))
        tqdm.write(format_row(rows[-1]))
        if args.write:  # row by row: a cut run keeps what it measured
            write_table(rows[-1:], readme_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
