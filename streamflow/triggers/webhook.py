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
import math
import re
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from streamflow import exactjson
from streamflow.envelope import Envelope
from streamflow.ingress import FlowIngress
from streamflow.topology.expressions import compile_value
from streamflow.topology.triggers import WebhookTrigger

_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?", re.ASCII)
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
            if _UNIX_SECONDS.fullmatch(stamp) is None:  # not nan, inf, 1e9, -5, ' 1_0', ...
                raise Refusal(
                    401, f"missing or bad {sig.timestamp_header} header: expected Unix seconds"
                )
            if abs(time.time() - float(stamp)) > sig.tolerance:
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
        the query parameters). ``content_type`` is the media type without parameters
        ("" when the request has no Content-Type); see docs/triggers.md for the table."""
        if not body.strip():
            if method in ("GET", "DELETE"):
                return dict(query)
            raise Refusal(400, "empty body: send a JSON document")
        if content_type == "application/x-www-form-urlencoded":
            try:
                pairs = parse_qsl(body.decode(), keep_blank_values=True, errors="strict")
            except UnicodeDecodeError:
                raise Refusal(400, "form body is not UTF-8") from None
            return form_payload(pairs, self.trigger.schema_)
        if not _reads_json(content_type):
            refusal = Refusal(
                415,
                f"Content-Type {content_type or '(none)'} is not read: send application/json "
                "(or application/*+json, or application/x-www-form-urlencoded)",
            )
            refusal.headers["Accept-Post"] = "application/json, application/x-www-form-urlencoded"
            raise refusal
        try:
            return exactjson.loads(body)
        except exactjson.JSONDecodeError as exc:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as bad:  # the parser's words were "str is not valid"
                raise Refusal(
                    400, f"body is not UTF-8 (byte {bad.start}): JSON is read as UTF-8 only"
                ) from None
            raise Refusal(400, f"body is not JSON: {exc}") from None

    def validate(self, payload: Any) -> None:
        if self.validator is None:
            return
        errors = schema_errors(self.validator, payload)
        if errors:
            raise Refusal(422, "body does not match the schema", errors=errors)

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


def _reads_json(content_type: str) -> bool:
    ct = content_type.lower()
    return ct == "application/json" or (ct.startswith("application/") and ct.endswith("+json"))


def form_payload(pairs: list[tuple[str, str]], schema: Any) -> dict[str, Any]:
    """A form body as an object: a repeated key becomes a list (in order); with a JSON
    Schema, a value whose property is ``integer``/``number``/``boolean`` (or an ``array``
    of those) is converted, and an ``array`` property is always a list. A value that does
    not convert stays text, so the schema check then says which field is wrong (422)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return out
    for key, value in out.items():
        prop = props.get(key)
        if not isinstance(prop, dict):
            continue
        if "array" in _types(prop):
            items = prop.get("items")
            item = items if isinstance(items, dict) else {}
            values = value if isinstance(value, list) else [value]
            out[key] = [_typed(v, item) for v in values]
        elif not isinstance(value, list):
            out[key] = _typed(value, prop)
    return out


def _types(prop: dict[str, Any]) -> list[str]:
    t = prop.get("type")
    return [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if t else []


def _typed(value: str, prop: dict[str, Any]) -> Any:
    types = _types(prop)
    if "string" in types:
        return value
    v = value.strip()
    if "boolean" in types and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if "integer" in types and re.fullmatch(r"[-+]?[0-9]{1,4300}", v):
        return int(v)
    if "number" in types and re.fullmatch(r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?", v):
        # not JSON's grammar: ".5", "007" and "1e400" raised (a 500) instead of converting
        d = Decimal(v)
        if len(v) > 4300 or not math.isfinite(float(d)):
            return value  # beyond a double: stays text, and the schema check says so (422)
        return exactjson.number(d)
    if "null" in types and v == "":
        return None
    return value


def _text(value: Any) -> str:
    return "" if value is None else str(value)


_DECIMAL_REPR = re.compile(r"Decimal\('(-?[0-9.eE+-]+|-?NaN|-?Infinity)'\)")


def schema_errors(validator: Any, payload: Any) -> list[dict[str, str]]:
    """The first MAX_ERRORS schema errors of ``payload`` as ``{path, message}`` (path a JSON
    pointer); the offending value is quoted as JSON, never as a Python repr (an exact
    decimal showed as ``Decimal('19.90')``, an object as ``{'a': 1}``)."""
    out = []
    for e in sorted(validator.iter_errors(payload), key=lambda e: list(e.path))[:MAX_ERRORS]:
        message, shown = str(e.message), repr(e.instance)
        if message.startswith(shown) and not isinstance(e.instance, str):
            try:
                text = exactjson.dumps_text(e.instance)
            except (TypeError, ValueError):
                text = shown
            text = text if len(text) <= 200 else text[:197] + "..."
            message = text + message[len(shown) :]
        message = _DECIMAL_REPR.sub(r"\1", message)
        out.append({"path": "/" + "/".join(str(p) for p in e.path), "message": message})
    return out
