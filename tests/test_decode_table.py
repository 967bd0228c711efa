"""The generated decoding table (scripts/decode_table.py) is current: one row per run, rotating by the date
(ACTSPARSE_DECODE_ARCH=llama checks the named one instead), re-derived by compiling that architecture's tiny
config as a decoder and decoding greedily against transformers."""

from __future__ import annotations

import datetime
import os

import pytest

pytest.importorskip("transformers")

from actsparse.scripts.arch_table import readme_path  # noqa: E402
from actsparse.scripts.decode_table import check_decoding, format_row, table_rows, write_table  # noqa: E402


def todays_arch(rows: dict) -> str:
    names = sorted(rows)
    return os.environ.get("ACTSPARSE_DECODE_ARCH") or names[datetime.date.today().toordinal() % len(names)]


def test_todays_row_is_current():
    rows = table_rows(readme_path().read_text())
    assert rows, "README has no generated decoding table; run python -m actsparse.scripts.decode_table --write"
    arch = todays_arch(rows)
    assert format_row(check_decoding(arch)) == rows[arch]


def test_write_table_merges_rows_and_counts(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    write_table([{"arch": "b", "decodes": "yes", "export": "prompt per call", "reason": ""}], readme)
    write_table([{"arch": "a", "decodes": "no", "export": "–", "reason": "E: why"}], readme)
    text = readme.read_text()
    assert "1 of 2 architectures" in text
    assert list(table_rows(text)) == ["a", "b"] and "| a | no | – | E: why |" in text
