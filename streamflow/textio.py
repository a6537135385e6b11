"""Reading text the way editors and spreadsheets write it.

Excel ("CSV UTF-8"), Notepad and many exporters start UTF-8 files with a byte-order mark
(EF BB BF). A BOM is never part of the text: ``decode`` drops it, so a CSV's first column
is ``id``, not ``\\ufeffid``, and a JSON document parses.
"""

from __future__ import annotations

import codecs
from pathlib import Path

__all__ = ["BOM", "decode", "read_text", "without_bom"]

BOM = codecs.BOM_UTF8


def _codec(encoding: str) -> str:
    """``utf-8`` (any spelling) -> ``utf-8-sig``, which drops a leading BOM; other
    encodings are returned as given (Python's utf-16/utf-32 already consume theirs).
    Raises LookupError for an unknown encoding."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def decode(data: bytes, encoding: str = "utf-8", errors: str = "strict") -> str:
    """``data`` as text, without a leading BOM. Raises UnicodeDecodeError, LookupError."""
    return data.decode(_codec(encoding), errors)


def read_text(path: Path | str, encoding: str = "utf-8") -> str:
    """The file's text, without a leading BOM. Raises OSError, UnicodeDecodeError."""
    return decode(Path(path).read_bytes(), encoding)


def without_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(BOM) else data
