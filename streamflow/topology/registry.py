"""The registry of step and trigger types.

Each type registers a name, a pydantic config model (``extra="forbid"``) and, for
steps, a factory that builds the running step. Connection types (the integration's
``connections:``, named settings that steps reference with ``connection: <name>``) are
registered the same way, with ``connection_config``. The config model drives validation,
``streamflow steps``, the JSON Schema and the docs. A name registered twice is an
error at import. Built-in types are imported on first use; third-party types come in
through the ``streamflow.steps`` / ``streamflow.triggers`` entry-point groups (each
entry point names a module that registers its types when imported).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from streamflow.topology.models import ConnectionConfig, StepConfig, TriggerConfig

BUILTIN_MODULES = (
    "streamflow.topology.triggers",
    "streamflow.topology.streams",
    "streamflow.steps.pure",
    "streamflow.connectors.connections",
    "streamflow.connectors.http",
    "streamflow.connectors.graphql",
    "streamflow.connectors.kafka",
    "streamflow.connectors.sql",
    "streamflow.connectors.email",
    "streamflow.connectors.files",
    "streamflow.connectors.filelist",
    "streamflow.connectors.code",
    "streamflow.connectors.aws",
    "streamflow.connectors.s3",
    "streamflow.connectors.azure",
    "streamflow.connectors.dedupe",
    "streamflow.connectors.rabbitmq",
    "streamflow.connectors.mongodb",
)

S = TypeVar("S", bound=type[StepConfig])
T = TypeVar("T", bound=type[TriggerConfig])
C = TypeVar("C", bound=type[ConnectionConfig])
F = TypeVar("F", bound=Callable[..., Any])


class DuplicateTypeError(RuntimeError):
    pass


@dataclass
class StepType:
    name: str
    config: type[StepConfig]
    factory: Callable[..., Any] | None = None  # (config, resources) -> Step


STEPS: dict[str, StepType] = {}
TRIGGERS: dict[str, type[TriggerConfig]] = {}
CONNECTIONS: dict[str, type[ConnectionConfig]] = {}
_loaded = False


def step_config(name: str) -> Callable[[S], S]:
    """Class decorator: register a step config model under ``name``."""

    def register(model: S) -> S:
        if name in STEPS:
            raise DuplicateTypeError(f"step type {name!r} is registered twice")
        STEPS[name] = StepType(name, model)
        return model

    return register


def step_factory(name: str) -> Callable[[F], F]:
    """Decorator: the callable that builds a running step of type ``name``."""

    def register(factory: F) -> F:
        entry = STEPS[name]
        if entry.factory is not None:
            raise DuplicateTypeError(f"step type {name!r} has two implementations")
        entry.factory = factory
        return factory

    return register


def trigger_config(name: str) -> Callable[[T], T]:
    def register(model: T) -> T:
        if name in TRIGGERS:
            raise DuplicateTypeError(f"trigger type {name!r} is registered twice")
        TRIGGERS[name] = model
        return model

    return register


def connection_config(name: str) -> Callable[[C], C]:
    """Class decorator: register a connection model under ``name``."""

    def register(model: C) -> C:
        if name in CONNECTIONS:
            raise DuplicateTypeError(f"connection type {name!r} is registered twice")
        CONNECTIONS[name] = model
        return model

    return register


def load_builtins() -> None:
    """Import the built-in types and every installed plugin (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for group in ("streamflow.steps", "streamflow.triggers"):
        for ep in entry_points(group=group):
            if ep.value not in BUILTIN_MODULES:
                importlib.import_module(ep.value)
