"""The ``file_read`` and ``file_write`` steps: JSON, NDJSON and CSV files (``file_read``
also XLSX and XML, see ``filefmt.py``).

Relative paths are resolved against ``base_dir``, which defaults to the folder of the
topology file. Files are **confined**: a path that resolves (``..``, symlinks followed)
outside the allowed folder fails the event. The folder is ``root`` when set; by default
it is the fixed folder written before the first event-dependent part of the template
(``out/${payload.name}`` -> ``out/``; ``${payload.file}`` -> ``base_dir``). A path with
no event-dependent part (only text, ``config`` and ``env``) is the deployer's and is not
confined. ``confinement`` says which, for ``validate``.

``file_read`` makes the records the payload: ``{file, count, records: [...]}``, or with
``chunk_size: N`` ``{file, count, chunks: [[...N records], ...]}``. (One downstream event
per chunk: a ``split`` step with ``items: ${payload.chunks}`` after it.)

``file_write`` writes atomically: a temporary file in the same folder, flushed to disk,
then renamed into place. An existing file is not replaced unless ``overwrite: true``
(``backup: true`` keeps the old one as ``<name>.bak``); if it already holds exactly what
would be written, the step succeeds (a retried execution is not a conflict). ``mode:
append`` adds records to an NDJSON or CSV file (CSV header only when the file is new).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streamflow import exactjson, textio
from streamflow.connectors.connections import context_directory
from streamflow.connectors.filefmt import READ_EXTENSIONS, XlsxOptions, read_structured
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Integration, Model, StepConfig
from streamflow.topology.registry import step_type

Format = Literal["json", "ndjson", "csv"]
_EXTENSIONS: dict[str, Format] = {
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".csv": "csv",
}


class CsvOptions(Model):
    delimiter: str = Field(",", min_length=1, max_length=1)
    quotechar: str = Field('"', min_length=1, max_length=1)
    header: bool = Field(True, description="the first row names the columns")
    columns: list[str] | None = Field(
        None, description="read: names when header is false; write: columns and their order"
    )
    empty_as_null: bool = Field(False, description="read: empty cells become null")


def _format_of(path: Path, configured: Format | None) -> Format:
    if configured is not None:
        return configured
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise PoisonMessageError(f"cannot tell the format of {path.name}: set format")
    return fmt


class _FileConfig(StepConfig):
    path: str = Field(description="a template; relative to base_dir")
    format: Format | None = Field(None, description="default: from the extension")
    encoding: str = "utf-8"
    csv: CsvOptions = Field(
        default_factory=CsvOptions,
        description="CSV: delimiter, quotechar, header, columns, empty_as_null",
    )
    base_dir: str | None = Field(
        None, validate_default=True, description="default: the topology file's folder"
    )
    root: str | None = Field(
        None,
        description="refuse paths outside this folder (relative to base_dir); default: the "
        "folder written before the first ${payload/steps/trigger/meta...} of path",
    )

    @field_validator("base_dir", mode="after")
    @classmethod
    def _base(cls, v: str | None, info: ValidationInfo) -> str:
        directory = context_directory(info)
        return str(directory if v is None else directory / v)


_TEMPLATE = re.compile(r"\$\{([^}]*)\}")
_EVENT_ROOTS = re.compile(r"\b(payload|steps|trigger|meta)\b")


def fixed_prefix(template: str) -> str | None:
    """The part of a path template before its first event-dependent ``${...}`` (one that
    reads payload, steps, trigger or meta), or None when no part depends on the event."""
    for m in _TEMPLATE.finditer(template):
        if template[max(m.start() - 1, 0) : m.start()] == "$":
            continue  # $${ is a literal
        if _EVENT_ROOTS.search(m.group(1)):
            return template[: m.start()]
    return None


class Confinement:
    """Where the paths rendered from a template may be: under ``root`` (relative to ``base``)
    when set, else under the folder written before the template's first event-dependent
    ``${...}`` (config/env rendered), so a payload value cannot steer a path out of it.
    Used by every step with a local path: file_read/file_write, file_list, s3/azure_blob file."""

    def __init__(self, template: str, base: str | None, root: str | None) -> None:
        self.base = Path(base or ".")
        self.root = (self.base / root).resolve() if root else None
        prefix = None if root else fixed_prefix(template)
        self.prefix = compile_value(prefix) if prefix is not None else None

    def check(self, raw: Any, scope: Mapping[str, Any]) -> Path:
        """The absolute path of ``raw`` (symlinks followed: a link out is outside);
        PoisonMessageError when it is outside the allowed folder."""
        path = (self.base / str(raw)).resolve()
        root = self.root
        if root is None and self.prefix is not None:
            prefix = str(self.prefix.render(scope) or "")
            folder = prefix.rpartition("/")[0] if "/" in prefix else ""
            root = (self.base / folder).resolve()
        if root is not None and not path.is_relative_to(root):
            raise PoisonMessageError(
                f"the path {str(raw)[:200]!r} is outside the allowed folder {root} "
                "(it comes from the event: set root: to allow another folder)"
            )
        return path


def confinement(config: Any, template: str | None = None) -> str:
    """Where a step's files may be, in words (for ``streamflow validate``); ``template``:
    its path template (default: ``config.path``)."""
    base = Path(config.base_dir or ".")
    if config.root:
        return f"only under {base / config.root} (root)"
    prefix = fixed_prefix(config.path if template is None else template)
    if prefix is None:
        return "at the path written in the topology (no part of it comes from the event)"
    folder = prefix.rpartition("/")[0] if "/" in prefix else ""
    return f"only under {base / folder if folder else base} (the default root: set root: to change)"


def file_places(integration: Integration) -> list[str]:
    """One line per file step and file trigger: where its files may be."""
    lines = []
    for flow in integration.flows.values():
        trigger = flow.trigger
        if getattr(trigger, "type", "") == "file":
            where = Path(str(getattr(trigger, "path", "")))
            lines.append(f"{integration.name}/{flow.name} trigger (file): only files in {where}")
        for node in flow.nodes.values():
            cfg = node.config
            template = _local_template(cfg)
            if template is not None:
                lines.append(
                    f"{integration.name}/{flow.name}/{cfg.id} ({cfg.type}): "
                    f"files {confinement(cfg, template)}"
                )
    return lines


def _local_template(cfg: Any) -> str | None:
    """The local path template of a step that reads or writes local files, else None."""
    if isinstance(cfg, _FileConfig) or getattr(cfg, "type", "") == "file_list":
        return str(cfg.path)
    file = getattr(cfg, "file", None)  # s3 / azure_blob get and put
    return file if isinstance(file, str) and hasattr(cfg, "base_dir") else None


class _FileStep(AsyncStep):
    def __init__(self, config: _FileConfig, ctx: StepContext) -> None:
        self.ctx = ctx
        self.path = compile_value(config.path)
        self.base = Path(config.base_dir or ".")
        self.confined = Confinement(config.path, config.base_dir, config.root)

    def resolve(self, env: Envelope) -> Path:
        scope = self.ctx.scope(env)
        raw = self.path.render(scope)
        if not raw:
            raise PoisonMessageError("the path is empty")
        return self.confined.check(raw, scope)


# --------------------------------------------------------------------------- read


class FileReadConfig(_FileConfig):
    """Read a JSON, NDJSON, CSV, XLSX or XML file; its records become the payload."""

    type: Literal["file_read"]
    format: Literal["json", "ndjson", "csv", "xlsx", "xml"] | None = Field(  # type: ignore[assignment]
        None, description="default: from the extension (.json .ndjson .jsonl .csv .xlsx .xml)"
    )
    xlsx: XlsxOptions = Field(
        default_factory=XlsxOptions,
        description="XLSX: sheet (name or 0-based index), header, columns, skip_rows",
    )
    records_path: str | None = Field(
        None,
        description="JSON/XML: dotted path to the records inside the document, e.g. "
        "data.items (XML: from the root, e.g. orders.order)",
    )
    chunk_size: int | None = Field(
        None, ge=1, description="group records into chunks of N: payload.chunks"
    )
    max_bytes: int = Field(100_000_000, ge=1, description="larger files fail the event")
    replace_payload: bool = Field(
        True, description="the records become the payload (else they go into steps.<id>)"
    )


@step_type(
    "file_read",
    FileReadConfig,
    category="storage",
    since="0.1.0",
    example="""- id: read
  type: file_read
  path: ${payload.file}          # relative to the topology's folder
  format: csv
  csv: {delimiter: ";", header: true, empty_as_null: true}
  chunk_size: 500                # payload.chunks: lists of up to 500 records""",
)
class FileReadStep(_FileStep):
    def __init__(self, config: FileReadConfig, ctx: StepContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config

    async def process(self, env: Envelope) -> Outcome:
        path = self.resolve(env)
        records = await asyncio.to_thread(self.read, path)
        out: dict[str, Any] = {"file": str(path), "count": len(records)}
        size = self.cfg.chunk_size
        if size:
            out["chunks"] = [records[i : i + size] for i in range(0, len(records), size)]
        else:
            out["records"] = records
        if self.cfg.replace_payload:
            return Outcome(out, {"file": str(path), "count": len(records)}, note=f"{len(records)}")
        return Outcome(env.payload, out, note=f"{len(records)} record(s)")

    def read(self, path: Path) -> list[Any]:
        special = self.cfg.format or READ_EXTENSIONS.get(path.suffix.lower())
        if special in ("xlsx", "xml"):  # see filefmt.py
            cfg = self.cfg
            return read_structured(path, special, cfg.xlsx, cfg.records_path, cfg.max_bytes)
        fmt = _format_of(path, cast(Format | None, self.cfg.format))
        try:
            if path.stat().st_size > self.cfg.max_bytes:
                raise PoisonMessageError(f"{path} is larger than max_bytes={self.cfg.max_bytes}")
            text = textio.read_text(path, self.cfg.encoding)  # no BOM in names
        except FileNotFoundError:
            raise PoisonMessageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise PoisonMessageError(f"{path} is a folder") from None
        except UnicodeDecodeError as exc:
            enc = self.cfg.encoding
            raise PoisonMessageError(f"{path}: not {enc} text ({exc.reason})") from None
        except OSError as exc:
            raise RetriableError(f"{path}: {exc.strerror or exc}") from None
        try:
            if fmt == "csv":
                return self.csv_records(text)
            if fmt == "ndjson":
                return [exactjson.loads(line) for line in text.splitlines() if line.strip()]
            return self.json_records(exactjson.loads(text))
        except exactjson.JSONDecodeError as exc:
            raise PoisonMessageError(f"{path}: invalid JSON: {exc}") from None
        except csv.Error as exc:
            raise PoisonMessageError(f"{path}: invalid CSV: {exc}") from None

    def json_records(self, doc: Any) -> list[Any]:
        if self.cfg.records_path:
            for key in self.cfg.records_path.split("."):
                doc = doc.get(key) if isinstance(doc, dict) else None
            if doc is None:
                raise PoisonMessageError(f"the document has nothing at {self.cfg.records_path}")
        return doc if isinstance(doc, list) else [doc]

    def csv_records(self, text: str) -> list[Any]:
        opts = self.cfg.csv
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


# --------------------------------------------------------------------------- write


class FileWriteConfig(_FileConfig):
    """Write records to a JSON, NDJSON or CSV file (atomic; no overwrite unless asked)."""

    type: Literal["file_write"]
    content: Any = Field("${payload}", description="what to write; NDJSON/CSV: a list of records")
    mode: Literal["write", "append"] = Field("write", description="append: NDJSON and CSV only")
    overwrite: bool = Field(False, description="replace an existing file")
    backup: bool = Field(False, description="keep the replaced file as <name>.bak")
    create_dirs: bool = Field(True, description="create missing folders")
    pretty: bool = Field(False, description="JSON: indented")

    @model_validator(mode="after")
    def _append(self) -> FileWriteConfig:
        if self.mode == "append" and self.format == "json":
            raise ValueError("mode append works for ndjson and csv, not json")
        return self


@step_type(
    "file_write",
    FileWriteConfig,
    category="storage",
    since="0.1.0",
    example="""- id: export
  type: file_write
  path: exports/customers-${meta.execution_id}.csv
  format: csv
  content: ${payload.records}
  csv: {columns: [id, email, name]}
  overwrite: true
  backup: true""",
)
class FileWriteStep(_FileStep):
    def __init__(self, config: FileWriteConfig, ctx: StepContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.content = compile_value(config.content)

    async def process(self, env: Envelope) -> Outcome:
        path = self.resolve(env)
        content = self.content.render(self.ctx.scope(env))
        result = await asyncio.to_thread(self.write, path, content)
        return Outcome(env.payload, result, note=result["action"])

    def encode(self, fmt: Format, content: Any, with_header: bool) -> tuple[bytes, int]:
        if fmt == "json":
            option = exactjson.OPT_INDENT_2 if self.cfg.pretty else 0
            return exactjson.dumps(content, option=option) + b"\n", 1
        records = content if isinstance(content, list) else [content]
        if fmt == "ndjson":
            return b"".join(exactjson.dumps(r) + b"\n" for r in records), len(records)
        opts = self.cfg.csv
        buf = io.StringIO()
        columns = opts.columns
        if columns is None:
            columns = list(records[0]) if records and isinstance(records[0], dict) else []
        writer = csv.writer(
            buf, delimiter=opts.delimiter, quotechar=opts.quotechar, lineterminator="\n"
        )
        if with_header and opts.header and columns:
            writer.writerow(columns)
        for r in records:
            if isinstance(r, dict):
                writer.writerow([_cell(r.get(c)) for c in columns])
            elif isinstance(r, list | tuple):
                writer.writerow([_cell(c) for c in r])
            else:
                raise PoisonMessageError("a CSV record is a mapping or a list")
        return buf.getvalue().encode(self.cfg.encoding), len(records)

    def write(self, path: Path, content: Any) -> dict[str, Any]:
        fmt = _format_of(path, self.cfg.format)
        if self.cfg.mode == "append" and fmt == "json":
            raise PoisonMessageError("mode append works for ndjson and csv files")
        try:
            if self.cfg.create_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
            if self.cfg.mode == "append":
                new = not path.exists() or path.stat().st_size == 0
                data, count = self.encode(fmt, content, with_header=new)
                with path.open("ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return _result(path, "appended", data, count)
            data, count = self.encode(fmt, content, with_header=True)
            return self.replace(path, data, count)
        except (TypeError, ValueError) as exc:
            raise PoisonMessageError(f"cannot write {fmt}: {exc}") from None
        except FileNotFoundError as exc:
            raise PoisonMessageError(f"{path}: {exc.strerror} (create_dirs is off?)") from None
        except OSError as exc:
            raise RetriableError(f"{path}: {exc.strerror or exc}") from None

    def replace(self, path: Path, data: bytes, count: int) -> dict[str, Any]:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if not self.cfg.overwrite:
                try:
                    os.link(tmp, path)  # atomic "create if absent"
                    return _result(path, "created", data, count)
                except FileExistsError:
                    if path.read_bytes() == data:
                        return _result(path, "unchanged", data, count)
                    raise PoisonMessageError(
                        f"{path} exists (set overwrite: true to replace it)"
                    ) from None
                except OSError:  # no hard links here: check, then rename
                    if path.exists():
                        raise PoisonMessageError(
                            f"{path} exists (set overwrite: true to replace it)"
                        ) from None
            existed = path.exists()
            if existed and self.cfg.backup:
                _backup(path)
            os.replace(tmp, path)
            return _result(path, "replaced" if existed else "created", data, count)
        finally:
            tmp.unlink(missing_ok=True)


def _backup(path: Path) -> None:
    bak = path.with_name(path.name + ".bak")
    bak.unlink(missing_ok=True)
    try:
        os.link(path, bak)
    except OSError:
        shutil.copy2(path, bak)


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return exactjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def _result(path: Path, action: str, data: bytes, count: int) -> dict[str, Any]:
    return {"file": str(path), "action": action, "bytes": len(data), "records": count}
