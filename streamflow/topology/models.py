"""Pydantic models of the YAML contract (see DESIGN.md, "The YAML contract").

Every model forbids unknown keys and is frozen. Steps and triggers are validated in a
second pass against the model registered for their ``type`` (``registry.py``), so the
models here hold them as raw mappings; ``loader.py`` turns the result into the typed
``Integration`` / ``Flow`` objects the compiler and runtime use.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
_DURATION = re.compile(DURATION_PATTERN)
# how a duration appears in the JSON Schema: a number of seconds or a string like 500ms
# (`pattern` applies to strings only, so one wrong value gives one error)
DURATION_JSON_SCHEMA: dict[str, Any] = {
    "type": ["number", "string"],
    "minimum": 0,
    "pattern": DURATION_PATTERN,
    "description": "a duration: 500ms, 1s, 5m, 2h, 1d or a number of seconds",
}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``500ms``, ``1s``, ``5m``, ``2h``, ``1d`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is like 500ms, 1s, 5m")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration (like 500ms, 1s, 5m, 2h)")


Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_JSON_SCHEMA)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]


class Secret:
    """Field marker, ``Annotated[T, Secret]``: the field may use secret config variables
    (it is used where it never travels on a topic: credentials, headers, a DSN)."""


class Expression:
    """Field marker, ``Annotated[str, Expression]``: the field is one bare expression
    (``when: payload.total > 100``), compiled as such rather than as a ``${…}`` template."""


class NestedSteps:
    """Field marker: the field holds nested step lists (branch routes, parallel branches),
    validated as steps of the same flow."""


class ReadsOwnResult:
    """Field marker: the field's expressions may read the step's own result,
    ``steps.<its id>`` (an http step's ``paginate`` reads the page just fetched)."""


@functools.cache
def marked(model: type[BaseModel], marker: type) -> frozenset[str]:
    """The keys (as written in YAML: alias or name) of ``model``'s fields marked with
    ``marker`` (``Secret``, ``Expression``, ``NestedSteps`` or ``ReadsOwnResult``)."""
    return frozenset(
        f.alias or name for name, f in model.model_fields.items() if marker in f.metadata
    )


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(Model):
    """How often and how far apart a failed step is tried again."""

    max_attempts: int = Field(3, ge=1, le=1000)
    backoff: Literal["fixed", "linear", "exponential"] = "exponential"
    delay: Duration = 1.0
    max_delay: Duration = 60.0
    jitter: bool = True


class BreakerConfig(Model):
    """Circuit breaker of an I/O step (``breaker:``)."""

    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open it")
    reset_timeout: Duration = Field(30.0, description="how long it stays open before probing")
    half_open_calls: int = Field(1, ge=1, description="trial calls while half-open")


class ConfigVar(Model):
    """A config variable of an integration: one value per instance (or per `run`)."""

    type: Literal["string", "integer", "number", "boolean", "object", "array"] = "string"
    default: Any = None
    secret: bool = False
    required: bool | None = Field(None, description="default: required when there is no default")
    description: str = ""
    enum: list[Any] | None = None

    @model_validator(mode="after")
    def _default_has_the_type(self) -> ConfigVar:
        """A default of the wrong type fails `validate`, not the first run; the message
        names the types, never the value (it may be a secret)."""
        d = self.default
        if d is None:
            return self
        wanted = _CONFIG_TYPES[self.type]
        is_bool = isinstance(d, bool)
        if not isinstance(d, wanted) or (self.type in ("integer", "number") and is_bool):
            yaml_type = _YAML_TYPES.get(type(d), type(d).__name__)
            raise ValueError(f"default must be {_ARTICLES[self.type]}, not {yaml_type}")
        if self.enum is not None and d not in self.enum:
            raise ValueError("default is not one of enum")
        return self


_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": (str, int, float, bool),  # a scalar default reads as its text
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}
_ARTICLES = {"string": "text", "integer": "an integer", "number": "a number",
             "boolean": "a boolean", "object": "a mapping", "array": "a list"}  # fmt: skip
_YAML_TYPES = {str: "text", int: "an integer", float: "a number", bool: "a boolean",
               dict: "a mapping", list: "a list"}  # fmt: skip


class StepConfig(Model):
    """Fields every step has. Each step type subclasses this with ``type: Literal[...]``."""

    id: Name
    type: str
    description: str = ""
    retry: RetryPolicy | None = None
    compensate: dict[str, Any] | None = Field(
        None, description="saga: the step that undoes this one when the execution fails for good"
    )
    fallback: str | None = Field(
        None, description="step id to continue at when retries run out or the circuit is open"
    )
    breaker: BreakerConfig | None = Field(
        None,
        description="circuit breaker of an I/O step: failure_threshold (5), reset_timeout (30s), "
        "half_open_calls (1); while open the agent pauses its partitions",
    )

    # class-level facts about the type, read by the loader and compiler
    # a class-level fact about the type, read by the compiler (fields that may use secrets,
    # are bare expressions or hold nested steps are marked on the fields: Secret, ...)
    pure: ClassVar[bool] = False  # no side effects: may be fused, never retried for I/O


class TriggerConfig(Model):
    type: str


class ConnectionConfig(Model):
    """A named connection (``connections:``): settings steps share with ``connection: <name>``.
    Each connection type subclasses this with ``type: Literal[...]`` (see registry.py)."""

    type: str


class FlowDoc(Model):
    """A flow as written in YAML (trigger and steps still raw)."""

    name: Name
    description: str = ""
    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    partitions: int = Field(3, ge=1, le=10_000)
    key: str | None = Field(None, description="partition key expression; ordering is per key")
    fuse: bool = Field(
        True,
        description="run the trigger and pure steps (transform, filter, branch targets' "
        "neighbours, log, kafka_publish) in the agent of the step before them; every I/O step "
        "keeps its own agent, topics and group. `false`: one agent per step",
    )
    encoding: Literal["json", "avro"] = "json"
    commit_interval: Duration = Field(0.1, description="how often offsets are committed")
    max_batch: int = Field(500, ge=1, le=100_000, description="records per poll")
    concurrency: int = Field(16, ge=1, le=10_000, description="in-flight async steps per agent")
    max_value_size: int = Field(
        1_000_000,
        ge=1_000,
        le=1_000_000_000,
        description="largest value an expression may build (characters; for lists and "
        "objects about bytes of JSON); over it, the execution fails (dead letter)",
    )
    retry: RetryPolicy | None = None
    events: Literal["summary", "lifecycle", "steps"] = Field(
        "summary",
        description="execution records: `summary` (one record per execution that starts and "
        "ends in one agent - its end, with its start time; `started` too when it crosses "
        "agents), `lifecycle` (started, retry, filtered, failed, completed) or `steps` "
        "(lifecycle plus one per step done)",
    )
    ordered: bool = Field(
        False,
        description="retries block their partition (keeps per-key order) instead of a retry topic",
    )
    trigger: dict[str, Any]
    steps: list[dict[str, Any]] = Field(min_length=1)


class IntegrationDoc(Model):
    """An integration as written in YAML."""

    api_version: Literal["streamflow/v1"] = Field(alias="apiVersion")
    kind: Literal["Integration"]
    name: Name
    description: str = ""
    version: str = "1"
    config: dict[str, ConfigVar] = Field(default_factory=dict)
    connections: dict[Name, dict[str, Any]] = Field(
        default_factory=dict,
        description="named connections (type http, postgres, sqlite, smtp) that steps "
        "reference with `connection: <name>`; validated against their type's model",
    )
    flows: list[FlowDoc] = Field(min_length=1)


@dataclass(frozen=True)
class Route:
    when: str
    steps: tuple[str, ...]  # step ids, in order


@dataclass
class StepNode:
    """One step in a flow's graph, with where an envelope goes after it."""

    config: StepConfig
    next: str | None  # the following step id; None ends the execution
    routes: tuple[Route, ...] = ()  # for steps with nested step lists (branch)
    path: tuple[str | int, ...] = ()  # YAML path, for messages
    compensation: StepConfig | None = None  # saga: validated `compensate:` step


@dataclass
class Flow:
    doc: FlowDoc
    trigger: TriggerConfig
    first: str  # id of the first step
    nodes: dict[str, StepNode] = field(default_factory=dict)  # in YAML order
    referenced: frozenset[str] = frozenset()  # step ids some expression reads as steps.<id>

    @property
    def name(self) -> str:
        return self.doc.name


@dataclass
class Integration:
    doc: IntegrationDoc
    flows: dict[str, Flow]
    file: str = ""

    @property
    def name(self) -> str:
        return self.doc.name

    @property
    def config(self) -> dict[str, ConfigVar]:
        return self.doc.config
