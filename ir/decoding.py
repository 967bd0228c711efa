"""The decoding interface: the names and sizes the frontends export, codegen builds and the runtime calls.

A decoder's graph (frontends/decoder_export.py, frontends/kv_cache.py) takes CALL_INPUTS, then one input per cache
tensor; codegen/build.py builds it as `main` and, beside it, STEP_FUNCTION (main specialized to one token),
PREFILL_FUNCTION (a hybrid's whole-prompt graph, frontends/prefill.py: PREFILL_MIN_TOKENS .. its bound tokens a
call) and, for static decoding, STEP_GRAPH with the runtime-owned LOGITS buffer after the caches
(codegen/static_step.py). runtime/decoder.py calls them by these names and binds the inputs by position, so each
name is defined here once.
"""

CALL_INPUTS = ("input_ids", "pos", "filled")  # the decoding graph's inputs before the caches
STEP_FUNCTION = "step"  # main specialized to one token
PREFILL_FUNCTION = "prefill"  # a one-token main's whole-prompt function
PREFILL_MIN_TOKENS = 2  # a prefill call's least token count: one token goes through the step
STEP_GRAPH = "step_graph"  # the static one-token function over max_seq slots
LOGITS = "logits"  # the static step's input after the caches: the buffer it writes its logits into
KEYS, VALUES = "k", "v"  # layer i's key and value caches are the inputs KEYS + "i" and VALUES + "i"
WORKSPACE_SUFFIX = "_workspace"  # f + it: the function making f's lifted buffers, passed after the weights (CPU)


def workspace_function(function: str) -> str:
    """The function that allocates `function`'s lifted intermediate buffers once (codegen/step_workspace.py)."""
    return function + WORKSPACE_SUFFIX


def checked_inputs(names) -> int:
    """How many of a function's leading inputs `names` the VM checks on every call (its `num_input`): a decoding
    graph's CALL_INPUTS, not the caches after them, which are the runtime's own buffers made at their declared
    shapes (runtime/decoder.py checks a state handed in); every input of any other graph."""
    names = list(names)
    calls = next((i for i, n in enumerate(names) if n not in CALL_INPUTS), len(names))
    decoding = calls >= 2 and names[:calls] == list(CALL_INPUTS[:calls])  # input_ids, pos[, filled]: not any graph's
    return calls if decoding and calls < len(names) else len(names)


def is_kv_cache(name: str) -> bool:
    """Whether the cache input `name` holds keys or values by position (dim 2: max_seq slots), not a state."""
    return name[:1] in (KEYS, VALUES) and name[1:].isdigit()


class TokenSteps(tuple):
    """A prompt's decoding-graph inputs (input_ids [1, n], pos, filled, then the caches, empty) to be fed one token
    per call, as a graph exported for one token at a time (a recurrent hybrid's) takes it: call t gets token t at
    position t with the caches call t - 1 returned. Still the tuple of the first inputs, so whatever reads a
    calibration sample's token ids as `sample[0]` (the torch-side Fisher weights and quality guard) reads them."""

    def calls(self, run):
        """Each token's call in order: `run(inputs)` returns the graph's outputs (logits, then each cache as written)
        and whatever it keeps after them; yields what each call returned."""
        import numpy as np

        ids, _, _, *caches = self
        for t in range(ids.shape[1]):
            values = run((ids[:, t:t + 1], np.array([t], np.int64), np.zeros(t + 1, np.int64), *caches))
            caches = values[1:1 + len(caches)]
            yield values
