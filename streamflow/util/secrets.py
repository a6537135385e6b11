"""Keep secrets out of error messages and logs.

A connector collects the secret values it renders (tokens, passwords, the password in a
DSN) in a ``Masker`` and passes every message it raises or logs through ``mask``. Error
messages travel on topics (dead-letter headers, execution events), so a message that
quoted a secret would leak it; masking is done where the message is made.

A secret is masked in every form StreamFlow or a target may write it: as is,
URL-encoded (``%2F``, ``+``), JSON-escaped (``\"``, ``\u00e9``), its UTF-8 bytes read
as Latin-1 (how many servers decode header values), base64 (standard and
URL-safe, with or without padding), and - for Basic auth - the whole
``base64(user:password)`` credential (``add_basic``). ``PROCESS`` is the process-wide
masker that logs, execution events and dead letters pass through as a last line.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"
_MIN_SECRET = 3  # shorter strings would mask ordinary text; they are not secrets anyway
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<pw>[^@/\s]*)@", re.I)
_KEY_VALUE = re.compile(r"(?P<head>\b(?:password|passwd|pwd)\s*=\s*)(?P<pw>'[^']*'|\S+)", re.I)


class Masker:
    """The secret strings one step may put into a message, and how to hide them."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *values: str | None) -> None:
        for value in values:
            if isinstance(value, str) and len(value) >= _MIN_SECRET:
                self._secrets.update(derived_forms(value))
                # a DSN's password may also appear on its own (e.g. in a driver's message)
                pw = dsn_password(value)
                # as written (percent-encoded) and as the driver sends it (decoded)
                for form in {pw, unquote(pw)} if pw else ():
                    if len(form) >= _MIN_SECRET:
                        self._secrets.update(derived_forms(form))
                if self is not PROCESS:
                    PROCESS.add(value)

    def add_dsn(self, *urls: str | None) -> None:
        """The password of each connection URL (``scheme://user:password@host/...``), in
        every form; not the whole URL: its host and database are what an error must name
        (a URL that is a secret config value is masked whole by the process masker)."""
        for url in urls:
            pw = dsn_password(url) if isinstance(url, str) else None
            if pw:
                self.add(pw, unquote(pw))
            elif isinstance(url, str) and "://" not in url:
                self.add(url)  # not a URL: treat it as the secret it may be

    def add_basic(self, username: str, password: str) -> str:
        """The Basic credential ``base64(username:password)`` (returned) and its forms."""
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        if password:
            self.add(token)
        return token

    def mask(self, text: str) -> str:
        out = mask_urls(text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in out:
                out = out.replace(secret, MASK)
        return out

    def __bool__(self) -> bool:
        return bool(self._secrets)


def derived_forms(secret: str) -> set[str]:
    """``secret`` as written raw, URL-encoded, JSON-escaped and base64-encoded."""
    forms = {secret, quote_plus(secret), json.dumps(secret)[1:-1]}
    # percent-encoded as URL paths and query strings keep different characters (yarl, curl)
    forms.update(quote(secret, safe=safe) for safe in _URL_SAFE)
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    raw = secret.encode()
    # UTF-8 bytes read back as Latin-1 (HTTP header values are Latin-1 to many servers)
    latin = raw.decode("latin-1")
    forms.update((latin, json.dumps(latin)[1:-1], json.dumps(latin, ensure_ascii=False)[1:-1]))
    for enc in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms.update((enc, enc.rstrip("=")))
    return {f for f in forms if len(f) >= _MIN_SECRET}


_URL_SAFE = ("", "/", "/:@", "/?:@!$'()*,;", "/?:@!$'()*,;=+&")
PROCESS = Masker()  # every secret any masker of this process learnt: logs, events, DLQ


def mask_urls(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host``; ``password=x`` -> ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group('head')}{MASK}", text)


def dsn_password(dsn: str) -> str | None:
    if "://" not in dsn:
        return None
    try:
        return urlsplit(dsn).password
    except ValueError:
        return None


def safe_dsn(dsn: str) -> str:
    """A DSN fit for messages: scheme, host, port and database, never the password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return mask_urls(dsn)
    if parts.scheme.startswith("sqlite"):
        return f"{parts.scheme}://{parts.path}"
    return f"{parts.scheme}://{host}{port}{parts.path}"
