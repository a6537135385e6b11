"""HTTP authentication for the ``http`` and ``graphql`` steps and ``http`` connections.

``bearer``, ``basic`` and ``api_key`` put a credential on each request. ``aws_sigv4``
signs each request (method, URL with its query, signed headers, body) with AWS Signature
Version 4 using botocore's signer, so any AWS API (Lambda, API Gateway, S3, ...) can be
called; the secret key never leaves the process. ``oauth2`` gets an
access token from ``token_url`` (grant ``client_credentials`` or ``refresh_token``) and
caches it in a ``TokenSource`` shared by every step of the App with the same token URL,
client id and scope (``StepContext.resources``), so one token serves them all. The token is
refreshed ``refresh_margin`` before it expires, and once more when an API answers 401.
Credentials and tokens are never logged and are masked in error messages.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import Field, model_validator

from streamflow.errors import RetriableError
from streamflow.steps.base import Resources
from streamflow.topology.models import Duration, Model
from streamflow.util.secrets import Masker

if TYPE_CHECKING:  # the models load with a topology; aiohttp only when a token is fetched
    import aiohttp

AUTH_SECRETS = (
    "token", "password", "value", "client_secret", "refresh_token",
    "access_key_id", "secret_access_key", "session_token",
)  # fmt: skip
_REQUIRED = {
    "bearer": ("token",),
    "basic": ("username",),
    "api_key": ("value",),
    "oauth2": ("token_url", "client_id"),
    "aws_sigv4": ("service", "region", "access_key_id", "secret_access_key"),
}


class HttpAuth(Model):
    """How a request authenticates: bearer, basic, api_key, oauth2 or aws_sigv4."""

    type: Literal["bearer", "basic", "api_key", "oauth2", "aws_sigv4"]
    token: str | None = Field(None, description="bearer token")
    username: str | None = None
    password: str | None = None
    name: str = Field("X-API-Key", description="api_key: header or query parameter name")
    value: str | None = Field(None, description="api_key: the key")
    in_: Literal["header", "query"] = Field("header", alias="in")
    token_url: str | None = Field(None, description="oauth2: the token endpoint")
    client_id: str | None = Field(None, description="oauth2 client id")
    client_secret: str | None = Field(None, description="oauth2 client secret")
    scope: str | None = Field(None, description="oauth2: space-separated scopes")
    audience: str | None = Field(None, description="oauth2: `audience` form field, if needed")
    grant: Literal["client_credentials", "refresh_token"] = "client_credentials"
    refresh_token: str | None = Field(None, description="oauth2 grant refresh_token: the token")
    client_auth: Literal["body", "basic"] = Field(
        "body", description="oauth2: client credentials in the form body or a Basic header"
    )
    refresh_margin: Duration = Field(30.0, description="oauth2: refresh this long before expiry")
    service: str | None = Field(None, description="aws_sigv4: e.g. lambda, execute-api, s3")
    region: str | None = Field(None, description="aws_sigv4: e.g. eu-west-1")
    access_key_id: str | None = Field(None, description="aws_sigv4")
    secret_access_key: str | None = Field(None, description="aws_sigv4")
    session_token: str | None = Field(None, description="aws_sigv4: temporary credentials")

    @model_validator(mode="after")
    def _complete(self) -> HttpAuth:
        missing = [f for f in _REQUIRED[self.type] if getattr(self, f) is None]
        if self.type == "oauth2" and self.grant == "refresh_token" and self.refresh_token is None:
            missing.append("refresh_token")
        if missing:
            raise ValueError(f"auth type {self.type} needs {', '.join(missing)}")
        return self


def auth_secrets(auth: dict[str, Any]) -> list[str | None]:
    return [auth.get(k) for k in AUTH_SECRETS]


def apply_static_auth(auth: dict[str, Any], headers: dict[str, str], query: dict[str, str]) -> None:
    """bearer, basic and api_key: put the rendered credential on the request."""
    kind = auth["type"]
    if kind == "bearer":
        headers["Authorization"] = f"Bearer {auth['token']}"
    elif kind == "basic":
        cred = f"{auth['username']}:{auth.get('password') or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
    elif kind == "api_key":
        if auth.get("in") == "query":
            query[auth["name"]] = str(auth["value"])
        else:
            headers[auth["name"]] = str(auth["value"])


class TokenSource:
    """One OAuth2 client: fetches, caches and refreshes its access token."""

    def __init__(self, auth: dict[str, Any], masker: Masker) -> None:
        self.url = str(auth["token_url"])
        self.client_id = str(auth["client_id"])
        self.client_secret = auth.get("client_secret")
        self.scope = auth.get("scope")
        self.audience = auth.get("audience")
        self.grant = str(auth.get("grant") or "client_credentials")
        self.refresh_token = auth.get("refresh_token")
        self.client_auth = auth.get("client_auth") or "body"
        self.margin = float(auth.get("refresh_margin") or 0.0)
        self.masker = masker
        self.requests = 0  # token requests made (for metrics and tests)
        self._token: str | None = None
        self._expires = 0.0  # time.monotonic() when the token stops being usable
        self._lock = asyncio.Lock()

    @staticmethod
    def key(auth: dict[str, Any]) -> str:
        return f"oauth2\x00{auth['token_url']}\x00{auth['client_id']}\x00{auth.get('scope') or ''}"

    def _fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._expires - self.margin

    async def token(self, session: aiohttp.ClientSession, timeout: float) -> str:
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:  # one request refreshes for every waiting caller
            if not self._fresh():
                await self._fetch(session, timeout)
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """The API refused ``token``: the next call fetches a new one."""
        if self._token == token:
            self._token = None

    async def _fetch(self, session: aiohttp.ClientSession, timeout: float) -> None:
        import aiohttp

        form: dict[str, str] = {"grant_type": self.grant}
        if self.grant == "refresh_token":
            form["refresh_token"] = str(self.refresh_token)
        if self.scope:
            form["scope"] = str(self.scope)
        if self.audience:
            form["audience"] = str(self.audience)
        headers = {"Accept": "application/json"}
        if self.client_auth == "basic":  # the derived credential is masked too
            cred = self.masker.add_basic(str(self.client_id), str(self.client_secret or ""))
            headers["Authorization"] = "Basic " + cred
        else:
            form["client_id"] = self.client_id
            if self.client_secret is not None:
                form["client_secret"] = str(self.client_secret)
        where = self.url.split("?", 1)[0]
        self.requests += 1
        try:
            async with session.post(
                self.url, data=form, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise RetriableError(f"OAuth2 token request to {where} timed out") from None
        except aiohttp.ClientError as exc:
            raise RetriableError(
                f"OAuth2 token request to {where} failed: {exc.__class__.__name__}"
            ) from None
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        if status != 200 or not isinstance(body, dict) or not body.get("access_token"):
            code = body.get("error", "") if isinstance(body, dict) else ""
            detail = f" ({self.masker.mask(str(code))})" if code else ""
            raise RetriableError(f"OAuth2 token endpoint {where} answered {status}{detail}")
        token = str(body["access_token"])
        self.masker.add(token)
        if body.get("refresh_token"):
            self.refresh_token = str(body["refresh_token"])  # rotated refresh token
            self.masker.add(self.refresh_token)
        try:
            lifetime = float(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        if not math.isfinite(lifetime) or lifetime <= 0:  # "nan", "inf", -1: not an answer
            lifetime = 3600.0
        self._token = token
        self._expires = time.monotonic() + lifetime


def token_source(resources: Resources, auth: dict[str, Any], masker: Masker) -> TokenSource:
    """The App-wide TokenSource of this client (created on first use)."""
    source = resources.get(TokenSource.key(auth), lambda: TokenSource(auth, masker))
    source.masker.add(*auth_secrets(auth))
    masker.add(*auth_secrets(auth))
    return source
