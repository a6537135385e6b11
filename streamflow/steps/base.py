"""What a step is to the runtime: ``process(envelope) -> Outcome``, nothing else.

Steps never see a broker, an offset or a commit. A step is built once per agent by the
factory registered for its type, from its validated config and a ``StepContext`` that
hands it every resource it may use (config values, logger, HTTP session); steps never
reach for globals. Pure steps are synchronous; steps that wait on I/O are async.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError
from streamflow.topology.exprcode import LIGHT, roots_read
from streamflow.topology.models import StepNode
from streamflow.topology.values import MISSING

if TYPE_CHECKING:
    import aiohttp

    from streamflow.topology.expressions import Template


class Next:
    """Route: go on with the node's ``next`` step (the default of every ``Outcome``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEXT"


NEXT = Next()


@dataclass(frozen=True, slots=True)
class GoTo:
    """Route: go on with ``step`` (a branch's target), or end the execution (None)."""

    step: str | None


@dataclass(frozen=True, slots=True)
class Fallback:
    """Route: the step failed for good and its ``fallback`` step takes over. A fallback is
    not a completed step: it is not recorded for compensation."""

    step: str


Route = Next | GoTo | Fallback


@dataclass(slots=True)
class Outcome:
    payload: Any
    result: Any = None
    filtered: bool = False
    route: Route = NEXT  # where the execution goes on
    note: str = ""  # a short word for traces (e.g. "route big")
    emit: list[Emit] | None = None  # messages for outside topics, produced in the agent's batch


@dataclass(slots=True)
class Emit:
    """A message a step asks the runtime to produce (in the flow's transaction, if any);
    the runtime's own messages are the same type (``runtime.contain.Out``), so a step's
    are produced as they are, without a copy."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # None: the key picks it (a state changelog names it)


T = TypeVar("T")


class Resources:
    """Shared resources of one App (connection pools, clients), created on first use and
    closed when the App stops. Steps get them through their StepContext, never globals."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def get(
        self, key: str, create: Callable[[], T], close: Callable[[T], Awaitable[None]] | None = None
    ) -> T:
        if key not in self._items:
            item = create()
            self._items[key] = item
            if close is not None:
                self._closers.append(lambda: close(item))
        return self._items[key]  # type: ignore[no-any-return]

    async def aget(
        self,
        key: str,
        create: Callable[[], Awaitable[T]],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """Like ``get`` for resources built by a coroutine (e.g. a database pool)."""
        if key not in self._items:
            item = await create()
            if key in self._items:  # another task won the race
                if close is not None:
                    await close(item)
            else:
                self._items[key] = item
                if close is not None:
                    self._closers.append(lambda: close(item))
        return self._items[key]  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        closers, self._closers = self._closers, []
        self._items.clear()
        for close in reversed(closers):
            await close()


@dataclass
class StepContext:
    integration: str
    flow: str
    node: StepNode
    config: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    http_session: Callable[[], aiohttp.ClientSession] | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("streamflow.step"))
    resources: Resources = field(default_factory=Resources)
    config_for: Callable[[Envelope], Mapping[str, Any]] | None = None  # its instance's config
    clock: Clock = SYSTEM_CLOCK  # what a step waits on (the delay step)

    def config_of(self, env: Envelope) -> Mapping[str, Any]:
        """The config values for this envelope: its instance's, else the run's."""
        if env.instance and self.config_for is not None:
            return self.config_for(env)
        if MISSING in self.config:
            raise PoisonMessageError(
                f"config variable(s) {', '.join(self.config[MISSING])} not set: the event "
                "belongs to no instance and the worker got no --config for them"
            )
        return self.config

    @property
    def step_id(self) -> str:
        return self.node.config.id

    @staticmethod
    def light(*templates: Template) -> bool:
        """Do ``templates`` read nothing but ``payload`` and ``trigger``?"""
        return roots_read(*templates) <= LIGHT

    def scoper(self, *templates: Template) -> Callable[[Envelope], dict[str, Any]]:
        """``scope`` cut to the roots ``templates`` read (``Template.references``): an
        unread root is left out - it would read as null anyway, and building it (the
        ``meta`` dict, the instance's config) is most of a pure step's cost per event."""
        roots = roots_read(*templates)
        if roots <= LIGHT:  # the usual pure step: no dict built per root
            if "trigger" in roots:
                return lambda env: {"payload": env.payload, "trigger": env.trigger}
            return lambda env: {"payload": env.payload}
        if roots <= {"payload", "trigger", "steps", "env"}:
            names = self.env
            return lambda env: {
                "payload": env.payload, "trigger": env.trigger, "steps": env.steps, "env": names
            }  # fmt: skip
        return self.scope

    def scope(self, env: Envelope) -> dict[str, Any]:
        """The names an expression can read while this step handles ``env``."""
        return {
            "payload": env.payload,
            "config": self.config_of(env),
            "steps": env.steps,
            "trigger": env.trigger,
            "meta": {
                "execution_id": env.execution_id,
                "integration": env.integration,
                "flow": env.flow,
                "step": env.step,
                "instance": env.instance,
                "attempt": env.attempt,
                "created_ms": env.created_ms,
                **env.meta,
            },
            "env": self.env,
        }


STOP: Any = object()
"""What a chain function returns when its step stops the execution (a filter drops it)."""
ChainFn = Callable[[dict[str, Any], list[Emit]], Any]
"""A pure step as a function of the scope ``{"payload", "trigger"}`` and the messages to
produce (it appends its own): the next payload, or ``STOP`` (runtime/kernel.py)."""


class Step:
    """A synchronous step (pure logic)."""

    is_async = False

    def process(self, env: Envelope) -> Outcome:
        raise NotImplementedError

    def chain_fn(self) -> ChainFn | None:
        """This step as a chain function, when it needs nothing of the envelope but its
        payload and trigger and does what ``process`` does with them; None otherwise."""
        return None

    async def close(self) -> None:
        return None


class AsyncStep:
    """A step that awaits I/O; the runtime runs several at once, one per key at a time."""

    is_async = True

    async def process(self, env: Envelope) -> Outcome:
        raise NotImplementedError

    async def close(self) -> None:
        return None


AnyStep = Step | AsyncStep
