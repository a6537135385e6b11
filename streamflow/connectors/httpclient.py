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
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from streamflow import exactjson, textio
from streamflow.connectors.auth import HttpAuth, apply_static_auth, auth_secrets, token_source
from streamflow.connectors.aws import sigv4_headers
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.errtext import plain
from streamflow.steps.base import StepContext
from streamflow.topology.expressions import ROOTS, Template, compile_value
from streamflow.util.secrets import Masker


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any
    next_link: str | None = None  # the Link header's rel="next" target (RFC 8288)
    raw: bytes = b""  # the body as received

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
            if auth["type"] == "basic":  # base64(user:password) is the secret as sent
                self.masker.add_basic(str(auth["username"]), str(auth.get("password") or ""))
            if auth["type"] == "oauth2":
                source = token_source(self.ctx.resources, auth, self.masker)
            elif auth["type"] == "aws_sigv4":
                signed, headers, data = sigv4_request(auth, method, url, headers, query, data)
                return await self._send(method, signed, headers, {}, data)
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
        self, method: str, url: str | URL, headers: dict[str, str], query: dict[str, str], data: Any
    ) -> Response:
        where = f"{method} {safe_url(str(url))}"
        try:
            if self.limit is not None:
                async with self.limit:
                    return await self._request(method, url, headers, query, data)
            return await self._request(method, url, headers, query, data)
        except TimeoutError:
            raise RetriableError(f"{where} timed out after {self.timeout_s:g}s") from None
        except aiohttp.InvalidURL:
            msg = f"invalid URL {safe_url(str(url))}"
            raise PoisonMessageError(self.mask(msg)) from None
        except aiohttp.ClientError as exc:
            raise RetriableError(self.mask(f"{where} failed: {client_reason(exc)}")) from None
        except ValueError as exc:  # aiohttp refuses a header with CR/LF (injection) and such
            text = "a header name or value contains a line break (CR/LF)"
            if "header" not in str(exc).lower():
                text = plain(exc)
            raise PoisonMessageError(self.mask(f"{where} not sent: {text}")) from None

    async def _request(
        self, method: str, url: str | URL, headers: dict[str, str], query: dict[str, str], data: Any
    ) -> Response:
        async with self.session().request(
            method, url, headers=headers, params=query, data=data, timeout=self.timeout
        ) as resp:
            raw = await resp.read()
            nxt = resp.links.get("next")
            return Response(
                resp.status,
                {str(k): v for k, v in resp.headers.items()},
                parse_body(raw, resp.content_type),
                str(nxt.get("url")) if nxt is not None and nxt.get("url") else None,
                raw,
            )


def sigv4_request(
    auth: Mapping[str, Any],
    method: str,
    url: str,
    headers: dict[str, str],
    query: dict[str, str],
    data: Any,
) -> tuple[URL, dict[str, str], bytes | None]:
    """The request signed with AWS SigV4: the URL with its query (sent exactly as signed),
    the headers with the signature, the body as bytes (a form is encoded first)."""
    try:
        target = URL(url)
        if query:
            target = target.update_query(query)
    except (ValueError, TypeError) as exc:
        raise PoisonMessageError(f"invalid URL {safe_url(url)}: {exc}") from None
    body: bytes | None
    if isinstance(data, dict):
        body = urlencode(data).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    else:
        body = data
    signed = sigv4_headers(auth, method, str(target), headers, body)
    return URL(str(target), encoded=True), signed, body


def parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "json" in content_type:
        try:
            return exactjson.loads(raw)
        except exactjson.JSONDecodeError:
            pass
    try:
        return textio.decode(raw)
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None  # nan/inf: no advice
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


def client_reason(exc: aiohttp.ClientError) -> str:
    """Why a request got no answer, in words (no library class names, no addresses that
    could carry credentials): connection refused, name not found, TLS, cut off ..."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the host name does not resolve (DNS)"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "the server's TLS certificate is not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        strerror = getattr(exc.os_error, "strerror", None)
        return f"cannot connect ({strerror.lower()})" if strerror else "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off before its end"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"the answer could not be read ({exc.status or 'no status'})"
    if isinstance(exc, aiohttp.ClientOSError) and exc.strerror:
        return f"connection error ({exc.strerror.lower()})"
    return "connection error"
