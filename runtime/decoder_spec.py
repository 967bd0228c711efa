"""decoder.json: what a compiled decoding module needs beside its functions (runtime/decoder.py), written into a
decoder artifact and read back field by field; and the check that a loaded one still describes its module."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from ..errors import ActsparseError
from ..ir.decoding import PREFILL_MIN_TOKENS, is_kv_cache
from .generation import check_settings
from .module import CompiledModule


@dataclass(frozen=True)
class DecoderSpec:
    max_seq: int
    vocab_size: int
    caches: tuple[tuple[str, tuple[int, ...]], ...]  # (input name, shape) per cache tensor, in input order
    eos_token_ids: tuple[int, ...] = ()
    source: str = ""
    recomputes_because: str = ""  # why a decoder without a cache has none (frontends/decoder_export.py)
    prefill_tokens: int = 0  # the most tokens a call of the module's `prefill` takes (0: it has none)
    prefill_continues: bool = False  # whether `prefill` may start from states that are not zero, or starts prompts
    # the fewest tokens a piece needs to go through `prefill` (runtime/prefill_rule.py); above prefill_tokens:
    # never. Artifacts without it: any piece of PREFILL_MIN_TOKENS or more (as they were built)
    prefill_from: int = PREFILL_MIN_TOKENS
    # the model's generation_config settings generate applies (runtime/generation.py), those away from the defaults
    generation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """decoder.json's fields: every field by its name, `caches` as [{"name", "shape"}]."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["caches"] = [{"name": n, "shape": list(s)} for n, s in self.caches]
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DecoderSpec:
        """The inverse of `to_dict`, each value converted to its field's type (decoder.json is read from an
        artifact); a field an older artifact lacks keeps its default, a missing required one is a KeyError."""
        read = {f.name: _SPEC_READERS.get(f.name) or _READERS[f.type] for f in fields(cls)}
        values = {name: convert(d[name]) for name, convert in read.items() if name in d}
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in values]
        if missing:
            raise KeyError(", ".join(missing))
        return cls(**values)


_READERS = {"int": int, "str": str, "bool": bool}  # DecoderSpec's field types (annotations are strings here)
_SPEC_READERS = {"caches": lambda v: tuple((c["name"], tuple(int(n) for n in c["shape"])) for c in v),
                 "eos_token_ids": lambda v: tuple(int(i) for i in v),
                 "generation": lambda v: dict(v)}  # checked against the module by _spec_disagrees


def spec_disagrees(spec: DecoderSpec, module: CompiledModule) -> str:
    """Why decoder.json cannot describe `module` ("" where it can): a manifest rehashed after an edit passes the
    hashes, and a max_seq past the KV cache's slots would write past its end, a vocabulary past the logits read
    past theirs."""
    inputs = {name: tuple(t.shape) for name, t in module.inputs}
    for name, shape in spec.caches:
        if inputs.get(name) != tuple(shape):
            return f"cache {name} {list(shape)}; the module takes {list(inputs.get(name) or ())}"
    slots = [shape[2] for name, shape in spec.caches if is_kv_cache(name) and len(shape) == 4]
    if not 1 <= spec.max_seq <= min(slots, default=spec.max_seq):
        return f"max_seq {spec.max_seq}, the KV cache has {min(slots, default=0)} slots"
    width = module.graph.outputs[0].shape[-1] if module.graph is not None else None
    if not 1 <= spec.vocab_size <= (width if isinstance(width, int) else spec.vocab_size):
        return f"vocab_size {spec.vocab_size}, the logits have {width}"
    try:  # a setting naming a token past the logits would index past them
        check_settings(spec.generation, spec.vocab_size)
    except ActsparseError as err:
        return str(err)
    return ""
