"""The binary and structured formats of ``file_read``: XLSX (openpyxl) and XML (defusedxml).

XLSX is opened ``read_only`` (rows are streamed, the workbook is never held whole; openpyxl
parses its XML with defusedxml when that is installed, as it is here; ``max_bytes`` also
bounds what the zip unpacks to) with
``data_only`` (a formula cell gives the value Excel saved with it; a file written by a
tool that never computed formulas gives ``null`` there). Cells become JSON values: text,
numbers, booleans, ``null`` for empty cells, dates and times as ISO 8601 text. Rows whose
cells are all empty are passed over. With ``header: true`` (the default) the first
non-empty row names the columns (blank names become ``column_<n>``).

XML is parsed with ``parse_xml`` (no DTD, no entities, no network); ``records_path`` points
at the records inside ``{root: …}`` (a list, or one mapping as one record).
"""

from __future__ import annotations

import datetime as dt
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import Field

from streamflow.errors import PoisonMessageError, RetriableError
from streamflow.topology.exprxml import XmlError, parse_xml
from streamflow.topology.models import Model

__all__ = ["READ_EXTENSIONS", "XlsxOptions", "read_structured", "read_xlsx", "read_xml"]

READ_EXTENSIONS = {".xlsx": "xlsx", ".xlsm": "xlsx", ".xml": "xml"}


class XlsxOptions(Model):
    sheet: str | int | None = Field(
        None, description="sheet name, or 0-based index (default: the first sheet)"
    )
    header: bool = Field(True, description="the first non-empty row names the columns")
    columns: list[str] | None = Field(None, description="names when header is false")
    skip_rows: int = Field(0, ge=0, description="rows passed over before the header/data")


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    return value


def read_xlsx(path: Path, opts: XlsxOptions) -> list[Any]:
    """The rows of one sheet as records (mappings, or lists without names)."""
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise PoisonMessageError(f"{path}: not an XLSX workbook ({exc})") from None
    try:
        names = book.sheetnames
        sheet = opts.sheet
        if sheet is None:
            ws = book.worksheets[0]
        elif isinstance(sheet, int):
            if not 0 <= sheet < len(names):
                raise PoisonMessageError(f"{path}: no sheet {sheet} (it has {len(names)})")
            ws = book.worksheets[sheet]
        elif sheet in names:
            ws = book[sheet]
        else:
            raise PoisonMessageError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(names)})")
        header: list[str] | None = opts.columns
        out: list[Any] = []
        for i, row in enumerate(ws.iter_rows(values_only=True)):
            if i < opts.skip_rows:
                continue
            cells = [_cell(v) for v in row]
            if all(c is None or c == "" for c in cells):
                continue
            if header is None and opts.header:
                header = [
                    str(c).strip() if c not in (None, "") else f"column_{n + 1}"
                    for n, c in enumerate(cells)
                ]
                continue
            if header is None:
                out.append(cells)
                continue
            while cells and len(cells) > len(header) and cells[-1] is None:
                cells.pop()
            if len(cells) > len(header):
                header = header + [f"column_{n + 1}" for n in range(len(header), len(cells))]
            out.append(
                {name: cells[n] if n < len(cells) else None for n, name in enumerate(header)}
            )
        return out
    finally:
        book.close()


def read_structured(
    path: Path, fmt: str, opts: XlsxOptions, records_path: str | None, max_bytes: int
) -> list[Any]:
    """``file_read`` of an XLSX or XML file (errors as for the other formats)."""
    try:
        if path.stat().st_size > max_bytes:
            raise PoisonMessageError(f"{path} is larger than max_bytes={max_bytes}")
        if fmt == "xlsx":
            _check_unzipped(path, max_bytes)
            return read_xlsx(path, opts)
        return read_xml(path.read_bytes(), records_path)
    except FileNotFoundError:
        raise PoisonMessageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PoisonMessageError(f"{path} is a folder") from None
    except OSError as exc:
        raise RetriableError(f"{path}: {exc.strerror or exc}") from None


def _check_unzipped(path: Path, max_bytes: int) -> None:
    """An XLSX is a zip: ``max_bytes`` bounds what it unpacks to (a small file may
    expand to gigabytes)."""
    try:
        with zipfile.ZipFile(path) as z:
            size = sum(i.file_size for i in z.infolist())
    except zipfile.BadZipFile as exc:
        raise PoisonMessageError(f"{path}: not an XLSX workbook ({exc})") from None
    if size > max_bytes:
        raise PoisonMessageError(f"{path} unpacks to {size} bytes, more than max_bytes={max_bytes}")


def read_xml(data: bytes, records_path: str | None) -> list[Any]:
    try:
        doc: Any = parse_xml(data)
    except XmlError as exc:
        raise PoisonMessageError(str(exc)) from None
    if records_path:
        for key in records_path.split("."):
            doc = doc.get(key) if isinstance(doc, dict) else None
        if doc is None:
            return []
    return doc if isinstance(doc, list) else [doc]
