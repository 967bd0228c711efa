"""A decoder artifact's tokenizer: a transformers tokenizer's own files (never a pickle), written and read back."""

from __future__ import annotations

from pathlib import Path


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """A transformers tokenizer's own files (tokenizer.json, its config, ...), as save_pretrained writes them."""
    if tokenizer is None:
        return {}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes]):
    """A transformers tokenizer from its (verified) files; written to a private temporary folder to load."""
    if not files:
        return None
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / Path(name).name).write_bytes(data)
        return AutoTokenizer.from_pretrained(tmp, local_files_only=True)
