"""What can be wrong with a data file as a whole (``DataFileError``) or with one undecodable row (``BadRow``),
shared by the readers of each format (data/reader.py: JSON, JSONL; data/parquet.py: Parquet)."""
from __future__ import annotations


class DataFileError(ValueError):
    """A data file that cannot be read at all (missing, unreadable, not JSON/JSONL/Parquet, wrong top level)."""


class BadRow:
    """Stands in for a row that could not even be decoded (bad JSON line, undecodable Parquet JSON column)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
