"""The ``email`` step: send a message over SMTP (aiosmtplib).

``security`` is ``starttls`` (default; port 587), ``tls`` (implicit TLS; port 465) or
``none`` (port 25, for relays on a trusted network). Subject, text and HTML bodies are
templates; ``to``/``cc``/``bcc`` are a template giving one address, a comma-separated
string or a list. The Message-ID is derived from the execution and step ids, so a retried
send carries the same id (receivers that deduplicate on it see one message).

Failures: connection problems, timeouts, 4xx replies and refused logins are retriable;
5xx refusals of the sender or every recipient and a malformed message (no recipient, a
line break in a header) fail the event. The password never appears in a message.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Annotated, Any, ClassVar, Literal

import aiosmtplib
from pydantic import Field, ValidationInfo, model_validator

from streamflow.connectors.connections import ConnectedStep, FieldsOf, smtp_fields
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Duration, Secret
from streamflow.topology.registry import step_type
from streamflow.util.secrets import Masker

_KINDS = ("smtp",)
_DEFAULT_PORT = {"starttls": 587, "tls": 465, "none": 25}


class EmailConfig(ConnectedStep):
    """Send an email over SMTP (STARTTLS, TLS or plain; optional login)."""

    type: Literal["email"]
    connection: str | None = Field(None, description="a `connections:` entry of type smtp")
    host: str | None = Field(None, description="SMTP server (required without connection)")
    port: int | str | None = Field(
        None, description="default 587, 465 (tls), 25 (none); may be a template"
    )
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: Annotated[str | None, Secret] = Field(
        None, description="login user (omit for no AUTH)"
    )
    password: Annotated[str | None, Secret] = None
    ca_file: str | None = Field(None, description="PEM file of CAs to trust (default: system's)")
    verify: bool = Field(True, description="verify the server's TLS certificate")
    from_: str | None = Field(None, alias="from", description="sender, e.g. 'Bot <bot@x.io>'")
    to: Any = Field(None, description="address, comma-separated addresses or a list")
    cc: Any = None
    bcc: Any = Field(None, description="recipients not shown in the headers")
    reply_to: str | None = None
    subject: str = Field(description="a template")
    text: str | None = Field(None, description="plain-text body (a template)")
    html: str | None = Field(None, description="HTML body (a template)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers")
    timeout: Duration = Field(30.0, description="connect, and each SMTP command")

    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return smtp_fields

    @model_validator(mode="after")
    def _complete(self) -> EmailConfig:
        missing = [n for n in ("host", "from_") if getattr(self, n) is None]
        if missing:
            names = ", ".join("from" if n == "from_" else n for n in missing)
            raise ValueError(f"set {names} (or a connection that has them)")
        if self.to is None and self.cc is None and self.bcc is None:
            raise ValueError("set at least one of to, cc, bcc")
        if self.text is None and self.html is None:
            raise ValueError("set text, html or both")
        return self


def addresses(value: Any) -> list[str]:
    """A rendered to/cc/bcc -> addresses ('Name <a@x>' kept as written)."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for item in items:
        if item is None or item == "":
            continue
        text = str(item)
        if "\n" in text or "\r" in text:
            raise PoisonMessageError("an address contains a line break")
        for name, addr in getaddresses([text]):
            if not addr or "@" not in addr:
                raise PoisonMessageError(f"{text!r} is not an email address")
            out.append(f"{name} <{addr}>" if name else addr)
    return out


@step_type(
    "email",
    EmailConfig,
    category="messaging",
    since="0.1.0",
    example="""- id: notify
  type: email
  host: ${config.smtp_host}
  port: 587
  security: starttls
  username: ${config.smtp_user}
  password: ${config.smtp_password}
  from: "StreamFlow <bot@example.com>"
  to: ${payload.email}
  bcc: [audit@example.com]
  subject: "Welcome, ${payload.first_name}"
  text: "Hello ${payload.first_name}, your account ${payload.id} is ready."
  html: "<p>Hello <b>${payload.first_name}</b>, your account is ready.</p>\"""",
)
class EmailStep(AsyncStep):
    def __init__(self, config: EmailConfig, ctx: StepContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.t = {
            name: compile_value(getattr(config, name))
            for name in (
                "host", "port", "username", "password", "from_", "to", "cc", "bcc", "reply_to",
                "subject", "text", "html", "headers",
            )
        }  # fmt: skip
        self.masker = Masker()
        self.tls: ssl.SSLContext | None = None
        if config.security != "none":
            self.tls = ssl.create_default_context(cafile=config.ca_file)
            if not config.verify:
                self.tls.check_hostname = False
                self.tls.verify_mode = ssl.CERT_NONE

    def render(self, scope: dict[str, Any]) -> dict[str, Any]:
        return {name: t.render(scope) for name, t in self.t.items()}

    def message(self, v: dict[str, Any], env: Envelope) -> tuple[EmailMessage, list[str]]:
        to, cc, bcc = addresses(v["to"]), addresses(v["cc"]), addresses(v["bcc"])
        recipients = [*to, *cc, *bcc]
        if not recipients:
            raise PoisonMessageError("no recipient (to, cc, bcc are empty)")
        msg = EmailMessage()
        try:
            msg["From"] = str(v["from_"])
            if to:
                msg["To"] = ", ".join(to)
            if cc:
                msg["Cc"] = ", ".join(cc)
            if v["reply_to"]:
                msg["Reply-To"] = str(v["reply_to"])
            msg["Subject"] = "" if v["subject"] is None else str(v["subject"])
            msg["Date"] = formatdate(localtime=False)
            msg["Message-ID"] = f"<{env.execution_id}.{self.cfg.id}@streamflow>"
            for name, value in (v["headers"] or {}).items():
                msg[name] = str(value)
        except (ValueError, TypeError) as exc:  # a line break in a header, and the like
            raise PoisonMessageError(f"bad header: {exc}") from None
        text, html = v["text"], v["html"]
        if text is not None:
            msg.set_content(str(text))
            if html is not None:
                msg.add_alternative(str(html), subtype="html")
        else:
            msg.set_content(str(html), subtype="html")
        return msg, [a for _, a in getaddresses(recipients)]

    async def process(self, env: Envelope) -> Outcome:
        v = self.render(self.ctx.scope(env))
        self.masker.add(v["username"], v["password"])
        msg, recipients = self.message(v, env)
        host = str(v["host"])
        try:
            port = int(v["port"] or _DEFAULT_PORT[self.cfg.security])
        except (TypeError, ValueError):
            raise PoisonMessageError(f"port {v['port']!r} is not a number") from None
        where = f"smtp {host}:{port}"
        try:
            errors, _ = await aiosmtplib.send(
                msg,
                recipients=recipients,
                hostname=host,
                port=port,
                username=v["username"] or None,
                password=v["password"] or None,
                use_tls=self.cfg.security == "tls",
                start_tls=self.cfg.security == "starttls",
                tls_context=self.tls,
                timeout=self.cfg.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = {r.code for r in exc.recipients}
            text = self.masker.mask(f"{where} refused every recipient ({sorted(codes)})")
            if all(c >= 500 for c in codes):
                raise PoisonMessageError(text) from None
            raise RetriableError(text) from None
        except aiosmtplib.SMTPResponseException as exc:
            text = self.masker.mask(f"{where} answered {exc.code}: {exc.message}")
            if exc.code >= 500 and not isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                raise PoisonMessageError(text) from None
            raise RetriableError(text) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            text = self.masker.mask(f"{where} failed: {exc.__class__.__name__}: {exc}")
            raise RetriableError(text) from None
        result = {
            "message_id": msg["Message-ID"],
            "accepted": len(recipients) - len(errors),
            "refused": sorted(errors),
        }
        return Outcome(env.payload, result, note=f"sent to {result['accepted']}")
