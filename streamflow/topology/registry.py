"""The registry of step, trigger and connection types.

A type is declared with ONE call that carries everything about it: its name, its
pydantic config model (``extra="forbid"``), for a step the implementation that runs it
(a callable ``(config, StepContext) -> Step | AsyncStep``, usually the step class), and
its metadata (category, stability, version added, a YAML example; the summary is the
first paragraph of the config model's docstring)::

    @step_type("echo", EchoConfig, category="transform", since="1.2", example="- {type: echo}")
    class EchoStep(Step): ...

    @trigger_type("schedule", category="time", example="trigger: {type: schedule, every: 5m}")
    class ScheduleTrigger(TriggerConfig): ...

    @connection_type("postgres", category="database")
    class PostgresConnection(ConnectionConfig): ...

The config model drives validation, ``streamflow steps``, the JSON Schema and the docs;
which of its fields may use secrets or are bare expressions is marked on the fields
(``Annotated[str, Secret]``, ``Annotated[str, Expression]``, see ``models.py``).

Types are found through entry points, the built-in ones too (streamflow's own
``pyproject.toml``): the groups ``streamflow.steps``, ``streamflow.triggers`` and
``streamflow.connections`` map a type name to the module that registers it. A module is
imported only when a type it provides is looked up (``STEPS["http"]``), so loading a
topology imports only the connectors it uses; listing every type (``STEPS.load_all()``,
for docs and schema) imports them all. A third-party package adds a step type by
declaring it with ``step_type`` and naming its module under
``[project.entry-points."streamflow.steps"]`` (see docs/plugins.md). A name registered
twice, or provided by two installed packages, is an error.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from streamflow.errors import ConfigError
from streamflow.topology.models import (
    ConnectionConfig,
    StepConfig,
    TriggerConfig,
)

Stability = Literal["stable", "beta", "experimental", "deprecated"]

T = TypeVar("T", bound=type[TriggerConfig])
C = TypeVar("C", bound=type[ConnectionConfig])
F = TypeVar("F", bound=Callable[..., Any])


class DuplicateTypeError(ConfigError):
    """Two registrations (or two installed packages) claim one type name."""


@dataclass(frozen=True, kw_only=True)
class TypeInfo:
    """A registered type: its name, config model and metadata."""

    name: str
    config: type[BaseModel]
    category: str
    stability: Stability = "stable"
    since: str = ""  # the version of the providing package that added the type
    example: str = ""  # YAML, shown in the reference docs and checked by the contract tests

    @property
    def summary(self) -> str:
        """The first paragraph of the config model's docstring, on one line."""
        first = inspect.cleandoc(self.config.__doc__ or "").split("\n\n")[0]
        return " ".join(line.strip() for line in first.splitlines())


@dataclass(frozen=True, kw_only=True)
class StepType(TypeInfo):
    config: type[StepConfig]
    factory: Callable[..., Any]  # (config, StepContext) -> Step | AsyncStep


@dataclass(frozen=True, kw_only=True)
class TriggerType(TypeInfo):
    config: type[TriggerConfig]


@dataclass(frozen=True, kw_only=True)
class ConnectionType(TypeInfo):
    config: type[ConnectionConfig]


E = TypeVar("E", bound=TypeInfo)


@functools.cache
def _entry_points(group: str) -> dict[str, list[importlib.metadata.EntryPoint]]:
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=group):
        found.setdefault(ep.name, []).append(ep)
    return found


class Kind(Generic[E]):
    """The registered types of one kind (steps, triggers or connections), loaded lazily
    through the entry-point ``group``. Iterating or ``in`` reads names only (no import);
    ``[name]`` / ``get`` import the providing module on first use."""

    def __init__(self, what: str, group: str) -> None:
        self.what = what
        self.group = group
        self.types: dict[str, E] = {}

    def add(self, entry: E) -> None:
        if entry.name in self.types:
            raise DuplicateTypeError(f"{self.what} type {entry.name!r} is registered twice")
        self.types[entry.name] = entry

    def remove(self, name: str) -> None:
        """Forget a registration (tests register throwaway types)."""
        self.types.pop(name, None)

    def names(self) -> list[str]:
        names = sorted(set(self.types) | set(_entry_points(self.group)))
        if not names:  # run from a source tree that was never installed
            raise ConfigError(
                f"no {self.what} types are installed: they are found through the package's "
                f"entry points ({self.group}); install streamflow (pip install -e .)"
            )
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.types or name in _entry_points(self.group)

    def get(self, name: str) -> E | None:
        """The type called ``name``, importing its module if needed; None if unknown.

        Raises ``ConfigError`` when its package is broken: two packages provide the name,
        the module fails to import, or it does not register the type it advertises."""
        if not isinstance(name, str):
            return None
        if name in self.types:
            return self.types[name]
        eps = _entry_points(self.group).get(name)
        if not eps:
            return None
        if len({ep.value for ep in eps}) > 1:
            where = ", ".join(sorted(f"{ep.value} ({_dist(ep)})" for ep in eps))
            raise DuplicateTypeError(f"{self.what} type {name!r} is provided twice: {where}")
        ep = eps[0]
        try:
            ep.load()
        except DuplicateTypeError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"{self.what} type {name!r}: its module {ep.value} ({_dist(ep)}) "
                f"failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        if name not in self.types:
            raise ConfigError(
                f"{self.what} type {name!r}: entry point {self.group} {name} = {ep.value} "
                f"({_dist(ep)}) did not register it"
            )
        return self.types[name]

    def __getitem__(self, name: str) -> E:
        entry = self.get(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def load_all(self) -> dict[str, E]:
        """Every installed type of this kind, by name (imports every providing module)."""
        return {name: self[name] for name in self.names()}

    def items(self) -> list[tuple[str, E]]:
        return list(self.load_all().items())


def _dist(ep: importlib.metadata.EntryPoint) -> str:
    return f"package {ep.dist.name}" if ep.dist is not None else "unknown package"


STEPS: Kind[StepType] = Kind("step", "streamflow.steps")
TRIGGERS: Kind[TriggerType] = Kind("trigger", "streamflow.triggers")
CONNECTIONS: Kind[ConnectionType] = Kind("connection", "streamflow.connections")


def step_type(
    name: str,
    config: type[StepConfig],
    *,
    category: str,
    stability: Stability = "stable",
    since: str = "",
    example: str = "",
) -> Callable[[F], F]:
    """Decorator on a step's implementation (a class or function called with
    ``(config, StepContext)``): register step type ``name`` with its config model and
    metadata. The config's ``type`` must be ``Literal[name]``."""

    def register(factory: F) -> F:
        STEPS.add(
            StepType(
                name=name,
                config=config,
                factory=factory,
                category=category,
                stability=stability,
                since=since,
                example=example,
            )
        )
        return factory

    return register


def trigger_type(
    name: str,
    *,
    category: str,
    stability: Stability = "stable",
    since: str = "",
    example: str = "",
) -> Callable[[T], T]:
    """Class decorator on a trigger's config model: register trigger type ``name``. What
    runs it is chosen by the runtime from the type (the gateway's trigger runners)."""

    def register(model: T) -> T:
        TRIGGERS.add(
            TriggerType(
                name=name,
                config=model,
                category=category,
                stability=stability,
                since=since,
                example=example,
            )
        )
        return model

    return register


def connection_type(
    name: str, *, category: str, stability: Stability = "stable", since: str = ""
) -> Callable[[C], C]:
    """Class decorator on a connection model (``connections:``): register ``name``."""

    def register(model: C) -> C:
        CONNECTIONS.add(
            ConnectionType(
                name=name, config=model, category=category, stability=stability, since=since
            )
        )
        return model

    return register


def load_all() -> None:
    """Import every installed step, trigger and connection type (docs, schema, `steps`)."""
    for kind in (STEPS, TRIGGERS, CONNECTIONS):
        kind.load_all()
