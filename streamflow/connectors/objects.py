"""What object-store steps (``s3``, ``azure_blob``) share: object bodies read into values
and values written as bodies, paths of local files, and the fields for both.

``format`` says how a body is read (``get``) or written (``put``):

* ``text``: a string (``encoding``); ``json``: one document; ``ndjson``: a list, one
  record per line; ``csv``: a list of rows (mappings with ``csv.header``); ``base64``:
  the raw bytes as base64 text.
* ``auto`` (default): by the key's extension (``.json``, ``.ndjson``/``.jsonl``,
  ``.csv``, ``.txt``); otherwise JSON when the content type says so, text when the body
  decodes, base64 when it does not. Writing: a string as it is (the extension gives the
  content type), anything else per the extension, else as JSON.

A body that does not parse per its format fails the event for good (it would not parse
on a retry either).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, ValidationInfo, field_validator

from streamflow import exactjson
from streamflow.connectors.connections import context_directory
from streamflow.connectors.files import Confinement, CsvOptions
from streamflow.errors import PoisonMessageError
from streamflow.steps.base import AsyncStep, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Model

BodyFormat = Literal["auto", "text", "json", "ndjson", "csv", "base64"]
_BY_EXTENSION: dict[str, BodyFormat] = {
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".csv": "csv",
    ".txt": "text",
}
_CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
    "text": "text/plain",
    "base64": "application/octet-stream",
}


def format_of(name: str, configured: BodyFormat) -> BodyFormat:
    if configured != "auto":
        return configured
    return _BY_EXTENSION.get(Path(name).suffix.lower(), "auto")


def decode_body(
    data: bytes, name: str, fmt: BodyFormat, content_type: str, encoding: str, opts: CsvOptions
) -> Any:
    """The value of an object's bytes per ``fmt`` (see the module docstring)."""
    fmt = format_of(name, fmt)
    if fmt == "base64":
        return base64.b64encode(data).decode()
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        if fmt == "auto":
            return base64.b64encode(data).decode()
        raise PoisonMessageError(f"{name}: not {encoding} text ({exc})") from None
    try:
        if fmt == "json" or (fmt == "auto" and "json" in content_type and text.strip()):
            return exactjson.loads(text)
        if fmt == "ndjson":
            return [exactjson.loads(line) for line in text.splitlines() if line.strip()]
        if fmt == "csv":
            return csv_rows(text, opts)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessageError(f"{name}: invalid JSON: {exc}") from None
    except csv.Error as exc:
        raise PoisonMessageError(f"{name}: invalid CSV: {exc}") from None
    return text


def csv_rows(text: str, opts: CsvOptions) -> list[Any]:
    rows = csv.reader(io.StringIO(text), delimiter=opts.delimiter, quotechar=opts.quotechar)
    names: list[str] | None = opts.columns
    out: list[Any] = []
    for row in rows:
        if not row or all(not cell.strip() for cell in row):
            continue
        if names is None and opts.header:
            names = [c.strip() for c in row]
            continue
        cells: list[Any] = [None if opts.empty_as_null and c == "" else c for c in row]
        out.append(cells if names is None else dict(zip(names, cells, strict=False)))
    return out


def encode_body(
    value: Any, name: str, fmt: BodyFormat, encoding: str, opts: CsvOptions
) -> tuple[bytes, str]:
    """The bytes (and default content type) of ``value`` written per ``fmt``."""
    derived = format_of(name, fmt)
    if fmt == "auto" and isinstance(value, str):  # text as given, typed by the extension
        kind = "text" if derived == "auto" else derived
        return value.encode(encoding), _CONTENT_TYPES[kind]
    fmt = "json" if derived == "auto" else derived
    try:
        if fmt == "base64":
            return base64.b64decode(str(value), validate=True), _CONTENT_TYPES[fmt]
        if fmt == "text":
            return str(value).encode(encoding), _CONTENT_TYPES[fmt]
        if fmt == "json":
            return exactjson.dumps(value), _CONTENT_TYPES[fmt]
        records = value if isinstance(value, list) else [value]
        if fmt == "ndjson":
            return b"".join(exactjson.dumps(r) + b"\n" for r in records), _CONTENT_TYPES[fmt]
        return _csv_text(records, opts).encode(encoding), _CONTENT_TYPES[fmt]
    except (binascii.Error, ValueError) as exc:
        raise PoisonMessageError(f"{name}: cannot write {fmt}: {exc}") from None
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise PoisonMessageError(f"{name}: cannot write {fmt}: {exc}") from None


def _csv_text(records: list[Any], opts: CsvOptions) -> str:
    buf = io.StringIO()
    columns = opts.columns
    if columns is None:
        columns = list(records[0]) if records and isinstance(records[0], dict) else []
    writer = csv.writer(
        buf, delimiter=opts.delimiter, quotechar=opts.quotechar, lineterminator="\n"
    )
    if opts.header and columns:
        writer.writerow(columns)
    for r in records:
        if isinstance(r, dict):
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        elif isinstance(r, list | tuple):
            writer.writerow(list(r))
        else:
            raise PoisonMessageError("a CSV record is a mapping or a list")
    return buf.getvalue()


class ObjectFields(Model):
    """Fields of object-store steps: body format and local files."""

    format: BodyFormat = Field(
        "auto", description="get/put: text, json, ndjson, csv, base64; auto: by extension"
    )
    csv: CsvOptions = Field(
        default_factory=CsvOptions,
        description="CSV: delimiter, quotechar, header, columns, empty_as_null",
    )
    encoding: str = "utf-8"
    file: str | None = Field(
        None,
        description="get: stream the object into this local file; put: stream this file up "
        "(large objects are never held in memory); relative to base_dir",
    )
    base_dir: str | None = Field(
        None, validate_default=True, description="default: the topology file's folder"
    )
    root: str | None = Field(
        None,
        description="refuse local paths outside this folder (relative to base_dir); default: "
        "the folder written before the first ${payload/steps/trigger/meta...} of file",
    )
    max_bytes: int = Field(
        50_000_000, ge=1, description="get without `file`: larger objects fail the event"
    )

    @field_validator("base_dir", mode="after")
    @classmethod
    def _base(cls, v: str | None, info: ValidationInfo) -> str:
        directory = context_directory(info)
        return str(directory if v is None else directory / v)


def local_path(raw: Any, confined: Confinement, scope: Mapping[str, Any]) -> Path:
    """A local file path from a rendered ``file:`` template, confined like file_read's paths
    (``root``, else the folder written before the event's part of the template)."""
    if not raw:
        raise PoisonMessageError("the local file path is empty")
    return confined.check(raw, scope)


class ObjectStep(AsyncStep):
    """What the s3 and azure_blob steps share: their connection settings, ``prefix``, the
    confined local ``file`` and the body templates, compiled once."""

    def __init__(self, config: Any, ctx: StepContext, settings: tuple[str, ...]) -> None:
        self.cfg = config
        self.ctx = ctx
        self.settings = compile_value({k: getattr(config, k) for k in settings})
        self.prefix = compile_value(config.prefix)
        self.file = compile_value(config.file)
        self.local = Confinement(config.file or "", config.base_dir, config.root)
        self.content = compile_value(config.content)
        self.content_type = compile_value(config.content_type)
        self.metadata = compile_value(config.metadata)
