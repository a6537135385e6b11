"""The ``webhook`` trigger's checks: method, auth, body size, signature, JSON, schema.

``WebhookEndpoint`` is pure request logic (no server, no broker): the gateway hands it
the method, headers, query and body, and it either builds the envelope or raises
``Refusal`` with the HTTP status and a JSON body to answer. Checks run in this order,
cheapest first, and stop at the first failure::

    405 method not allowed      -> 401 bearer token / API key      -> 413 body too large
    -> 401 signature (and timestamp) -> 400 not JSON  -> 422 JSON Schema

Signatures: ``hex(hmac(secret, content))`` (or base64), after ``prefix``; ``content`` is
the raw body, or ``"<timestamp>.<body>"`` when ``timestamp_header`` is set (the header
holds Unix seconds; requests further than ``tolerance`` from now are refused, so a
captured request cannot be replayed later). Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from streamflow.envelope import Envelope
from streamflow.runtime.ingest import FlowIngress
from streamflow.topology.expressions import compile_value
from streamflow.topology.triggers import WebhookTrigger

_ALGORITHMS = {"hmac-sha256": hashlib.sha256, "hmac-sha1": hashlib.sha1}
ALWAYS_HIDDEN = frozenset({"authorization", "proxy-authorization", "cookie"})
MAX_ERRORS = 20


class Refusal(Exception):
    """The request is refused: answer ``status`` with ``body``; nothing is produced."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": message, **extra}
        self.headers: dict[str, str] = {}


class WebhookEndpoint:
    """One flow's webhook, with the secrets of one config (the integration's, or an
    instance's) rendered once."""

    def __init__(
        self,
        ingress: FlowIngress,
        env: Mapping[str, str] | None = None,
        *,
        instance: str = "",
    ) -> None:
        trigger = ingress.flow.trigger
        assert isinstance(trigger, WebhookTrigger)
        self.ingress = ingress
        self.trigger = trigger
        self.instance = instance
        self.path = (
            f"/webhooks/{instance + '/' if instance else ''}"
            f"{ingress.integration.name}/{ingress.flow.name}"
        )
        scope = {"config": ingress.config, "env": dict(env or {})}
        hidden = set(ALWAYS_HIDDEN)
        self.secret = b""
        sig = trigger.signature
        if sig is not None:
            self.secret = _text(compile_value(sig.secret).render(scope)).encode()
            if not self.secret:
                raise ValueError(f"flow {ingress.flow.name}: the webhook secret is empty")
            hidden.add(sig.header.lower())
        self.expected_auth = ""
        if trigger.auth is not None:
            raw = trigger.auth.token if trigger.auth.type == "bearer" else trigger.auth.value
            self.expected_auth = _text(compile_value(raw).render(scope))
            if not self.expected_auth:
                raise ValueError(f"flow {ingress.flow.name}: the webhook token is empty")
            if trigger.auth.type == "api_key":
                hidden.add(trigger.auth.header.lower())
        self.hidden = frozenset(hidden)
        self.validator: Any = None
        if isinstance(trigger.schema_, dict):
            from jsonschema import validators

            cls = validators.validator_for(trigger.schema_)
            self.validator = cls(trigger.schema_, format_checker=cls.FORMAT_CHECKER)

    # -- checks, in order -------------------------------------------------------------

    def check_method(self, method: str) -> None:
        if method not in self.trigger.methods:
            refusal = Refusal(405, f"method {method} not allowed")
            refusal.headers["Allow"] = ", ".join(self.trigger.methods)
            raise refusal

    def check_auth(self, headers: Mapping[str, str]) -> None:
        auth = self.trigger.auth
        if auth is None:
            return
        if auth.type == "bearer":
            scheme, _, token = headers.get("Authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else ""
        else:
            given = headers.get(auth.header, "")
        if not given or not hmac.compare_digest(given.encode(), self.expected_auth.encode()):
            refusal = Refusal(401, "missing or wrong credentials")
            if auth.type == "bearer":
                refusal.headers["WWW-Authenticate"] = 'Bearer realm="streamflow"'
            raise refusal

    def check_size(self, length: int) -> None:
        if length > self.trigger.max_body:
            raise Refusal(413, f"body larger than {self.trigger.max_body} bytes")

    def check_signature(self, headers: Mapping[str, str], body: bytes) -> None:
        sig = self.trigger.signature
        if sig is None:
            return
        content = body
        if sig.timestamp_header is not None:
            stamp = headers.get(sig.timestamp_header, "").strip()
            try:
                sent = float(stamp)
            except ValueError:
                raise Refusal(401, f"missing or bad {sig.timestamp_header} header") from None
            if abs(time.time() - sent) > sig.tolerance:
                raise Refusal(401, "timestamp outside the accepted window")
            content = stamp.encode() + b"." + body
        given = headers.get(sig.header, "").strip()
        if not given.startswith(sig.prefix):
            raise Refusal(401, "missing or invalid signature")
        given = given[len(sig.prefix) :]
        mac = hmac.new(self.secret, content, _ALGORITHMS[sig.algorithm]).digest()
        expected = mac.hex() if sig.encoding == "hex" else base64.b64encode(mac).decode()
        if sig.encoding == "hex":
            given = given.lower()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Refusal(401, "missing or invalid signature")

    def parse(self, method: str, content_type: str, body: bytes, query: Mapping[str, str]) -> Any:
        """The payload: the JSON body (a form body as an object; no body on GET/DELETE:
        the query parameters)."""
        if not body.strip():
            if method in ("GET", "DELETE"):
                return dict(query)
            raise Refusal(400, "empty body: send a JSON document")
        if content_type == "application/x-www-form-urlencoded":
            try:
                return dict(parse_qsl(body.decode(), keep_blank_values=True))
            except UnicodeDecodeError:
                raise Refusal(400, "form body is not UTF-8") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refusal(400, f"body is not JSON: {exc}") from None

    def validate(self, payload: Any) -> None:
        if self.validator is None:
            return
        errors = sorted(self.validator.iter_errors(payload), key=lambda e: list(e.path))
        if errors:
            raise Refusal(
                422,
                "body does not match the schema",
                errors=[
                    {"path": "/" + "/".join(str(p) for p in e.path), "message": e.message}
                    for e in errors[:MAX_ERRORS]
                ],
            )

    # -- the envelope -----------------------------------------------------------------

    def envelope(
        self,
        payload: Any,
        *,
        method: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> Envelope:
        trigger = {
            "type": "webhook",
            "method": method,
            "path": self.path,
            "headers": {k.lower(): v for k, v in headers.items() if k.lower() not in self.hidden},
            "query": dict(query),
        }
        execution_id = None
        key = headers.get("Idempotency-Key")
        if key:  # a retried request keeps its execution id: duplicates are visible
            digest = hashlib.sha256(f"{self.path}\x00{key}".encode()).hexdigest()[:24]
            execution_id = f"{self.ingress.flow.name}-{digest}"
        return self.ingress.envelope(
            payload,
            trigger=trigger,
            instance=self.instance,
            execution_id=execution_id,
            trace=headers.get("traceparent", ""),  # continue the caller's W3C trace
        )


def _text(value: Any) -> str:
    return "" if value is None else str(value)
