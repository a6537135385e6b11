"""What the ``http`` and ``graphql`` steps share: send one request with auth, a timeout,
a concurrency limit and classified failures, over the App's aiohttp session.

Connection errors and timeouts raise ``RetriableError``; the caller decides about
statuses. With ``oauth2`` auth a 401 answer invalidates the cached token and the request
is sent once more with a fresh one. Every message goes through the step's ``Masker``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from streamflow.connectors.auth import HttpAuth, apply_static_auth, auth_secrets, token_source
from streamflow.connectors.secrets import Masker
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.steps.base import StepContext
from streamflow.topology.expressions import ROOTS, Template, compile_value


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any

    def as_result(self) -> dict[str, Any]:
        return {"status": self.status, "headers": self.headers, "body": self.body}


class HttpCaller:
    def __init__(
        self,
        step_id: str,
        ctx: StepContext,
        auth: HttpAuth | None,
        timeout: float,
        *,
        limit_key: str | None = None,
        limit: int | None = None,
    ) -> None:
        if ctx.http_session is None:
            raise ConfigError("no HTTP session available")
        self.step_id = step_id
        self.ctx = ctx
        self.session = ctx.http_session
        self.auth: Template | None = (
            compile_value(auth.model_dump(by_alias=True), roots=ROOTS | {"item"})
            if auth is not None
            else None
        )
        self.timeout_s = timeout
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.masker = Masker()
        self.limit: asyncio.Semaphore | None = None
        if limit is not None:
            key = f"http-limit\x00{ctx.integration}\x00{limit_key or step_id}"
            self.limit = ctx.resources.get(key, lambda: asyncio.Semaphore(limit))

    def mask(self, text: str) -> str:
        return self.masker.mask(text)

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        query: dict[str, str],
        data: Any,
        scope: Mapping[str, Any],
    ) -> Response:
        auth = self.auth.render(scope) if self.auth is not None else None
        source = None
        if auth is not None:
            self.masker.add(*auth_secrets(auth))
            if auth["type"] == "oauth2":
                source = token_source(self.ctx.resources, auth, self.masker)
            else:
                apply_static_auth(auth, headers, query)
        for attempt in (1, 2):
            token = None
            if source is not None:
                token = await source.token(self.session(), self.timeout_s)
                self.masker.add(token)
                headers["Authorization"] = f"Bearer {token}"
            resp = await self._send(method, url, headers, query, data)
            if resp.status == 401 and source is not None and token is not None and attempt == 1:
                source.invalidate(token)  # expired or revoked early: one more try, new token
                continue
            return resp
        raise AssertionError("unreachable")

    async def _send(
        self, method: str, url: str, headers: dict[str, str], query: dict[str, str], data: Any
    ) -> Response:
        where = f"{method} {safe_url(url)}"
        try:
            if self.limit is not None:
                async with self.limit:
                    return await self._request(method, url, headers, query, data)
            return await self._request(method, url, headers, query, data)
        except TimeoutError:
            raise RetriableError(f"{where} timed out after {self.timeout_s:g}s") from None
        except aiohttp.InvalidURL:
            msg = f"invalid URL {safe_url(url)}"
            raise PoisonMessageError(self.mask(msg)) from None
        except aiohttp.ClientError as exc:
            raise RetriableError(self.mask(f"{where} failed: {exc.__class__.__name__}")) from None

    async def _request(
        self, method: str, url: str, headers: dict[str, str], query: dict[str, str], data: Any
    ) -> Response:
        async with self.session().request(
            method, url, headers=headers, params=query, data=data, timeout=self.timeout
        ) as resp:
            raw = await resp.read()
            return Response(
                resp.status,
                {str(k): v for k, v in resp.headers.items()},
                parse_body(raw, resp.content_type),
            )


def parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "json" in content_type:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def safe_url(url: str) -> str:
    """The URL without its query string (which may hold an API key) or user info."""
    base = url.split("?", 1)[0]
    if "@" in base and "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return base


def join_url(base: str | None, url: str) -> str:
    if not base or "://" in url:
        return url
    return base.rstrip("/") + "/" + url.lstrip("/") if url else base
