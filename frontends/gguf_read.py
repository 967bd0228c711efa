"""Reading a GGUF file (llama.cpp's format) with the `gguf` package's reader, as one clear error when it is not
a well-formed GGUF file.

    reader = read_gguf("model.gguf")      # gguf.GGUFReader: .fields (metadata), .tensors (name, shape, type, data)

The reader parses whatever it is given; on a malformed file it fails in many ways (ValueError, IndexError,
KeyError, struct and Unicode errors, huge allocations). Every failure to parse becomes a FrontendError naming the
file, and every tensor must lie inside the file, so no later access reads past its end.

Parsing is slow where the vocabulary is large (SmolLM2's 49k tokens and merges: ~6 s; Gemma 3's 262k: ~15 s; read
through a plain array view of the map, `_plain_arrays`: a third of that), and
one compile of a .gguf reads the file five times: our type check and storage note, and transformers' GGUF loader for
the config, the tokenizer and the weights (`from gguf import GGUFReader` in each call). Inside `parsed_once()` (the
decoder compile, api.py) every read of one unchanged file is the first one's reader (read-only memory maps, so one
can serve every caller), transformers' calls included, and gguf's `get_tensor_name_map`, which transformers builds
anew for each of a model's ~400 modules, is built once per (architecture, layers). Outside the block nothing is
kept: no file stays open after a compile.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from .errors import FrontendError

# the way out of a GGUF file the reader refuses
AGAIN = ("download the file again (a cut-short copy is the usual cause) or re-export it with llama.cpp's "
         "convert_hf_to_gguf.py")


class GGUFError(FrontendError):
    """A file could not be read as GGUF."""


_PARSED: dict | None = None  # inside `parsed_once`: {(path, inode, size, mtime): reader}
_OWN_READER = None  # inside `parsed_once`: gguf's own reader class, while gguf.GGUFReader is the shared one


def read_gguf(path: str | os.PathLike):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GGUFError(f"reading {path} needs the gguf package; install it: pip install gguf") from None
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)  # a file changed since: parsed anew
    if _PARSED is not None and key in _PARSED:
        return _PARSED[key]
    reader = _parse(_plain_arrays(_OWN_READER or GGUFReader), path, stat.st_size)
    if _PARSED is not None:
        _PARSED[key] = reader
    return reader


@functools.cache
def _plain_arrays(reader_type):
    """`reader_type` reading its file's map through a plain ndarray view of it (the same read-only pages): every
    field and tensor is a slice of that map, and slicing an np.memmap makes a memmap each time, whose bookkeeping
    (`__array_finalize__`) was most of the parse (SmolLM2's 98k vocabulary strings: 6.1 -> 2.3 s) and of
    transformers' walk over the same fields (1.4 -> 0.65 s, three times a compile)."""
    import numpy as np

    class PlainArrays(reader_type):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return PlainArrays


def _parse(reader_type, path: Path, size: int):
    try:
        reader = reader_type(path)
        tensors = [(t.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]
    except Exception as err:  # noqa: BLE001 - the reader's many failure modes on malformed input, see above
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise GGUFError(f"{path}: not a readable GGUF file (truncated or corrupt?): {detail}; {AGAIN}") from None
    for name, offset, n_bytes in tensors:
        if offset < 0 or n_bytes < 0 or offset + n_bytes > size:
            raise GGUFError(f"{path}: tensor {name} lies outside the file ({size} bytes: truncated?); {AGAIN}")
    return reader


@contextlib.contextmanager
def parsed_once():
    """For the block, each GGUF file is parsed once, by `read_gguf` and by transformers' loader alike (module
    docstring); on leaving it the readers are dropped and gguf's own functions put back. Nested: the outer block's."""
    global _PARSED, _OWN_READER
    try:
        import gguf
    except ImportError:  # nothing reads GGUF here: read_gguf says so where it is called
        gguf = None
    if _PARSED is not None or gguf is None:
        yield
        return
    own_reader, own_name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def shared_reader(path, mode="r"):
        return read_gguf(path) if mode == "r" else own_reader(path, mode)

    _PARSED, _OWN_READER = {}, own_reader
    gguf.GGUFReader = shared_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(own_name_map)
    try:
        yield
    finally:
        _PARSED = _OWN_READER = None
        gguf.GGUFReader, gguf.get_tensor_name_map = own_reader, own_name_map
