"""The ``code`` step: call a Python function of your project, ``module:function``.

The function is called as ``function(payload, context)`` and may be sync or async; what it
returns becomes the payload. ``context`` is a dict: ``execution_id``, ``integration``,
``flow``, ``step``, ``instance``, ``attempt``, ``steps`` (earlier results), ``trigger``,
``meta``, ``config`` (the config values), ``options`` (this step's rendered ``options``)
and ``logger``. A sync function runs in a worker thread, so it may block.

The module is imported when the step is built (a missing module or function is a
``ConfigError``: the App refuses to start), with the folders of ``path`` (default: the
topology file's folder) at the front of ``sys.path``. Exceptions are mapped onto the error
taxonomy: StreamFlow errors pass through (raise ``PoisonMessageError`` or
``RetriableError(retry_after=…)`` yourself to decide); ``ValueError``, ``TypeError`` and
``KeyError`` fail the event for good; anything else is retried by the policy.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from streamflow.connectors.connections import context_directory
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError, StreamFlowError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Duration, StepConfig
from streamflow.topology.registry import step_type

_FUNCTION = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
POISON = (ValueError, TypeError, KeyError)


class CodeConfig(StepConfig):
    """Call a Python function `module:function(payload, context)`; it returns the payload."""

    type: Literal["code"]
    function: str = Field(pattern=_FUNCTION, description="e.g. transforms.customers:normalize")
    path: list[str] = Field(
        default_factory=lambda: ["."],
        validate_default=True,
        description="folders put on sys.path, relative to the topology's folder",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="templates rendered into context['options']"
    )
    replace_payload: bool = Field(
        True, description="the return value becomes the payload (else it goes to steps.<id>)"
    )
    timeout: Duration | None = Field(None, description="async functions: cancel after this")

    @field_validator("path", mode="after")
    @classmethod
    def _absolute(cls, v: list[str], info: ValidationInfo) -> list[str]:
        directory = context_directory(info)
        return [str((directory / p).resolve()) for p in v]


def load_function(spec: str, path: list[str]) -> Callable[..., Any]:
    """Import ``module:function`` with ``path`` first on sys.path."""
    module_name, _, attr = spec.partition(":")
    for folder in reversed(path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} ({exc}); searched {', '.join(path)} first"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name!r} failed: {exc.__class__.__name__}: {exc}"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


@step_type(
    "code",
    CodeConfig,
    category="transform",
    since="0.1.0",
    example="""- id: normalize
  type: code
  function: transforms:normalize_customer   # transforms.py beside the topology
  options: {country: "${config.default_country}"}
  timeout: 5s""",
)
class CodeStep(AsyncStep):
    def __init__(self, config: CodeConfig, ctx: StepContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.fn = load_function(config.function, config.path)
        self.is_coroutine = inspect.iscoroutinefunction(self.fn)
        self.options = compile_value(config.options)

    def context(self, env: Envelope) -> dict[str, Any]:
        scope = self.ctx.scope(env)
        return {
            "execution_id": env.execution_id,
            "integration": env.integration,
            "flow": env.flow,
            "step": env.step,
            "instance": env.instance,
            "attempt": env.attempt,
            "steps": env.steps,
            "trigger": env.trigger,
            "meta": scope["meta"],
            "config": self.ctx.config_of(env),
            "options": self.options.render(scope),
            "logger": self.ctx.logger,
        }

    async def process(self, env: Envelope) -> Outcome:
        context = self.context(env)
        try:
            if self.is_coroutine:
                value = await asyncio.wait_for(self.fn(env.payload, context), self.cfg.timeout)
            else:
                value = await asyncio.to_thread(self.fn, env.payload, context)
                if inspect.isawaitable(value):  # a sync wrapper returning a coroutine
                    value = await asyncio.wait_for(value, self.cfg.timeout)
        except StreamFlowError:
            raise
        except TimeoutError as exc:
            raise RetriableError(f"{self.cfg.function} timed out") from exc
        except POISON as exc:
            name = exc.__class__.__name__
            raise PoisonMessageError(f"{self.cfg.function}: {name}: {exc}") from exc
        except Exception as exc:
            name = exc.__class__.__name__
            raise RetriableError(f"{self.cfg.function}: {name}: {exc}") from exc
        if self.cfg.replace_payload:
            return Outcome(value, None)
        return Outcome(env.payload, value)
