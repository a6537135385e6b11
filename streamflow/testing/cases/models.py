"""The flow-test file format (pydantic models) and its loaded form."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from streamflow.topology.expressions import (
    Template,
)
from streamflow.topology.models import Duration, Integration

TEST_FILE_NAMES = ("tests.yaml", "tests.yml")
TEST_FILE_SUFFIXES = (".tests.yaml", ".tests.yml")
STATUSES = ("completed", "filtered", "failed", "compensated", "compensation_failed")
TEMPLATE_ROOTS: frozenset[str] = frozenset({"config", "mocks"})
MATCHERS = ("$regex", "$contains", "$type")
JSON_TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
_MOCK_PLACEHOLDER = "http://127.0.0.1:1"

Status = Literal["completed", "filtered", "failed", "compensated", "compensation_failed"]
Count = Annotated[int, Field(ge=0, strict=True)]
_M = TypeVar("_M", bound=BaseModel)


# --------------------------------------------------------------------------- format


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CallExpect(_Model):
    """Calls a mock service received: every field given must match; count them."""

    service: str | None = Field(None, description="mock service name; default: any")
    method: str | None = Field(None, description="HTTP method; default: any")
    path: str | None = Field(None, description="exact path or with {param} segments")
    json_: Any = Field(None, alias="json", description="subset of the JSON body")
    body: Any = Field(None, description="the body text (or a matcher)")
    query: dict[str, Any] | None = Field(None, description="subset of the query parameters")
    headers: dict[str, Any] | None = Field(None, description="subset of the request headers")
    status: int | None = Field(None, description="the status the mock answered")
    count: Count | None = Field(None, description="exactly this many calls; default: at least 1")

    def label(self) -> str:
        parts = [self.service or "*", self.method or "*", self.path or "*"]
        return " ".join(parts)


class DeadLetterExpect(_Model):
    """One dead letter of the case's flow."""

    step: str | None = None
    error: str | None = Field(None, description="text in the error message")
    error_type: str | None = None
    payload: Any = Field(None, description="subset of the dead envelope's payload")


class PublishedExpect(_Model):
    """Messages the flow produced to an outside topic (``kafka_publish``)."""

    topic: str
    key: str | None = Field(None, description="the message key")
    value: Any = Field(None, description="subset of the value (JSON), or the text")
    count: Count | None = Field(None, description="exactly this many; default: at least 1")


class ExecutionExpect(_Model):
    """What one event's execution did."""

    status: Status | None = None
    output: Any = Field(None, description="subset of the final payload")
    error: str | None = Field(None, description="text in the execution's error")
    steps: list[str] | None = Field(None, description="ids of the steps that finished, in order")


class FileExpect(_Model):
    """A file a step wrote, in the case's copy of the topology's folder."""

    exists: bool = Field(True, description="false: the file must not have been written")
    contains: str | None = Field(None, description="text the file contains")
    records: Count | None = Field(
        None, description="number of records: JSON array items, NDJSON lines or CSV rows"
    )
    content: Any = Field(
        None, description="subset of the parsed file (JSON; NDJSON and CSV: a list of records)"
    )


class RowsExpect(_Model):
    """Rows of an SQLite database the steps wrote, in the case's copy of the folder."""

    database: str = Field(
        description="an sqlite connection's name, or the database file relative to the folder"
    )
    query: str = Field(description="a SELECT whose rows are checked, e.g. SELECT * FROM t")
    rows: list[Any] | None = Field(None, description="subsets of the rows, in order; fixes count")
    count: Count | None = Field(None, description="exactly this many rows")


class Expect(_Model):
    status: Status | list[Status] | None = None
    output: Any = None
    error: str | None = None
    executions: list[ExecutionExpect] | None = None
    calls: list[CallExpect] = Field(default_factory=list)
    calls_ordered: bool = False
    dead_letters: Count | list[DeadLetterExpect] | None = None
    published: list[PublishedExpect] = Field(default_factory=list)
    max_duration: Duration | None = None
    files: dict[str, FileExpect] | None = Field(
        None, description="files written, by path relative to the topology's folder"
    )
    rows: list[RowsExpect] | None = Field(None, description="rows in SQLite databases written")


class CaseDoc(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    flow: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    events: list[Any] | None = Field(None, min_length=1)
    events_file: str | None = None
    mocks: str | dict[str, Any] | None = None
    timeout: Duration = 30.0
    expect: Expect = Field(default_factory=Expect)


class TestFileDoc(_Model):
    integration: str = "integration.yaml"
    description: str = ""
    mocks: str | dict[str, Any] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    cases: list[Any] = Field(min_length=1, description="test cases (each validated as CaseDoc)")


# --------------------------------------------------------------------------- loaded form


@dataclass
class TestCase:
    """One validated case, ready to run."""

    file: TestFile
    doc: CaseDoc
    flow: str
    events: list[Any]
    config: dict[str, Any]
    mocks: dict[str, Any] | None  # a mocks document (services of the file merged with the case's)
    mocks_source: str
    expect: Template  # the raw `expect` mapping, compiled; rendered per run, then validated

    __test__ = False  # not a pytest class

    @property
    def name(self) -> str:
        return self.doc.name

    @property
    def id(self) -> str:
        return f"{self.file.display}::{self.doc.name}"


@dataclass
class TestFile:
    path: Path
    display: str
    integration: Integration
    cases: list[TestCase] = field(default_factory=list)

    __test__ = False


@dataclass
class CaseResult:
    case: TestCase
    passed: bool
    seconds: float
    failures: list[list[str]] = field(default_factory=list)  # each: a title line, then details

    @property
    def message(self) -> str:
        return self.failures[0][0] if self.failures else ""

    def details(self) -> str:
        out: list[str] = []
        for block in self.failures:
            out.append(block[0])
            out.extend("  " + line for line in block[1:])
        return "\n".join(out)
