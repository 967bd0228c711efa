"""Reading a GGUF file (llama.cpp's format) with the `gguf` package's reader, as one clear error when it is not
a well-formed GGUF file.

    reader = read_gguf("model.gguf")      # gguf.GGUFReader: .fields (metadata), .tensors (name, shape, type, data)

The reader parses whatever it is given; on a malformed file it fails in many ways (ValueError, IndexError,
KeyError, struct and Unicode errors, huge allocations). Every failure to parse becomes a FrontendError naming the
file, and every tensor must lie inside the file, so no later access reads past its end.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FrontendError

# the way out of a GGUF file the reader refuses
AGAIN = ("download the file again (a cut-short copy is the usual cause) or re-export it with llama.cpp's "
         "convert_hf_to_gguf.py")


class GGUFError(FrontendError):
    """A file could not be read as GGUF."""


def read_gguf(path: str | os.PathLike):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GGUFError(f"reading {path} needs the gguf package; install it: pip install gguf") from None
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
        tensors = [(t.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]
    except Exception as err:  # noqa: BLE001 - the reader's many failure modes on malformed input, see above
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise GGUFError(f"{path}: not a readable GGUF file (truncated or corrupt?): {detail}; {AGAIN}") from None
    for name, offset, n_bytes in tensors:
        if offset < 0 or n_bytes < 0 or offset + n_bytes > size:
            raise GGUFError(f"{path}: tensor {name} lies outside the file ({size} bytes: truncated?); {AGAIN}")
    return reader
