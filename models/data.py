"""Training corpus for the tiny model: the Python standard library's own source code.

Why this corpus: it is on every machine that runs actsparse (no download, no licence question), it is
several MB of varied, real text, and code is what the demo generates. It is deterministic for a given Python
build: files are read in sorted path order and capped at a fixed size; `corpus_fingerprint` records the
exact bytes' hash so a retrain on another Python version is detectably different rather than silently so.

The validation split is by file (every `VAL_EVERY`-th file), so held-out perplexity and sparsity are
measured on code the model never saw, not on neighbouring windows of the same file.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_CAP_BYTES = 8 * 1024 * 1024
VAL_EVERY = 20
FILE_SEPARATOR = b"\n\n"
# Directory names whose files are tests or vendored third-party code, not the library itself.
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: Path | None = None) -> list[Path]:
    """All *.py files under the stdlib in sorted relative-path order, minus tests and site-packages."""
    root = root or stdlib_dir()
    files = [path for path in root.rglob("*.py") if not SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


@dataclass(frozen=True)
class Corpus:
    """Train/validation byte streams (uint8 tensors) plus where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    n_train_files: int
    n_val_files: int
    fingerprint: str

    def describe(self) -> dict[str, object]:
        return {
            "source": "python stdlib *.py (sorted, tests and site-packages skipped)",
            "train_bytes": int(self.train.numel()),
            "val_bytes": int(self.val.numel()),
            "train_files": self.n_train_files,
            "val_files": self.n_val_files,
            "sha256": self.fingerprint,
        }


def load_corpus(cap_bytes: int = DEFAULT_CAP_BYTES, root: Path | None = None) -> Corpus:
    """Read files in order until `cap_bytes` is reached; every VAL_EVERY-th file goes to validation."""
    train_parts: list[bytes] = []
    val_parts: list[bytes] = []
    total = 0
    for index, path in enumerate(stdlib_source_files(root)):
        if total >= cap_bytes:
            break
        content = path.read_bytes() + FILE_SEPARATOR
        (val_parts if index % VAL_EVERY == 0 else train_parts).append(content)
        total += len(content)
    train_bytes, val_bytes = b"".join(train_parts), b"".join(val_parts)
    digest = hashlib.sha256(train_bytes + b"\x00VAL\x00" + val_bytes).hexdigest()
    return Corpus(
        train=_as_tensor(train_bytes),
        val=_as_tensor(val_bytes),
        n_train_files=len(train_parts),
        n_val_files=len(val_parts),
        fingerprint=digest,
    )


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def random_batch(
    stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows -> (inputs [B, T], next-byte targets [B, T]) as int64 ids, reproducible via `generator`."""
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch_size,), generator=generator)
    windows = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]


def eval_windows(stream: torch.Tensor, seq_len: int, max_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed, evenly spaced non-overlapping windows: the same held-out set on every run and every machine."""
    n_available = (stream.numel() - 1) // seq_len
    n_windows = min(max_windows, n_available)
    stride = n_available // n_windows
    starts = [i * stride * seq_len for i in range(n_windows)]
    windows = torch.stack([stream[s : s + seq_len + 1] for s in starts]).long()
    return windows[:, :-1], windows[:, 1:]
