"""StreamFlow's error taxonomy, in one place.

::

    StreamFlowError
    ├── ConfigError            refuse to start; the CLI exits 2
    │   └── ValidationFailed   a topology has problems (a list of Issue, each file:line:col)
    ├── RetriableError         try again later, per the step's retry policy (retry_after: seconds)
    │   └── CircuitOpenError   the target's circuit breaker is open: pause, don't burn attempts
    ├── PoisonMessageError     this message can never succeed: dead-letter it, commit past it
    └── FatalError             stop the agent without committing; non-zero exit

An exception of any other class raised by a step is treated as retriable until the
retry policy runs out, then dead-lettered. Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass


class StreamFlowError(Exception):
    """Base of every error StreamFlow raises on purpose."""


class ConfigError(StreamFlowError):
    """The configuration is wrong: nothing can run until a person fixes it."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation problem, pointing at its place in a YAML file."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.column}: {where}{self.message}"


class ValidationFailed(ConfigError):
    """A topology failed validation; ``issues`` lists every problem found."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class RetriableError(StreamFlowError):
    """A transient failure: the step may succeed if tried again."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitOpenError(RetriableError):
    """The circuit breaker of the step's target is open; ``retry_after`` says until when."""


class PoisonMessageError(StreamFlowError):
    """The message itself is bad (undecodable, schema-invalid): dead-letter it at once."""


class FatalError(StreamFlowError):
    """The agent cannot go on (fenced producer, lost broker state): stop without committing."""
