"""The email step against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from streamflow.errors import PoisonMessageError, RetriableError, ValidationFailed

SMTP = {
    "smtp_port": {"type": "integer"},
    "smtp_user": {"type": "string", "secret": True, "required": False},
    "smtp_password": {"type": "string", "secret": True, "required": False},
}


def mail_step(**extra: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": "mail",
        "type": "email",
        "host": "127.0.0.1",
        "port": "${config.smtp_port}",
        "security": "none",
        "from": "StreamFlow <bot@example.com>",
        "to": "${payload.email}",
        "cc": ["${payload.manager}"],
        "bcc": "audit@example.com, Ops <ops@example.com>",
        "subject": "Welcome, ${payload.name}",
        "text": "Hello ${payload.name}, you are customer ${payload.id}.",
        "html": "<p>Hello <b>${payload.name}</b></p>",
    }
    step.update(extra)
    return step


async def test_plain_send_records_recipients_subject_and_bodies(
    step_runner: Any, smtp_server_factory: Any
) -> None:
    server = smtp_server_factory()
    runner = await step_runner([mail_step()], config=SMTP, values={"smtp_port": server.port})
    payload = {"id": 42, "name": "Ann", "email": "ann@example.org", "manager": "boss@example.org"}
    out = await runner.run("mail", payload)
    assert out.payload == payload
    assert out.result["accepted"] == 4
    [got] = server.received
    assert got.sender == "bot@example.com"
    assert sorted(got.recipients) == sorted(
        ["ann@example.org", "boss@example.org", "audit@example.com", "ops@example.com"]
    )
    msg = got.message
    assert msg["Subject"] == "Welcome, Ann"
    assert msg["To"] == "ann@example.org"
    assert msg["Cc"] == "boss@example.org"
    assert msg["Bcc"] is None  # bcc recipients get the mail but are not shown
    assert got.text("plain").strip() == "Hello Ann, you are customer 42."
    assert got.text("html").strip() == "<p>Hello <b>Ann</b></p>"
    assert got.login is None


async def test_message_id_is_stable_per_execution_and_step(
    step_runner: Any, smtp_server_factory: Any
) -> None:
    server = smtp_server_factory()
    runner = await step_runner([mail_step()], config=SMTP, values={"smtp_port": server.port})
    out = await runner.run("mail", {"id": 1, "name": "A", "email": "a@x.io", "manager": "m@x.io"})
    assert out.result["message_id"] == server.received[0].message["Message-ID"]
    assert out.result["message_id"].endswith(".mail@streamflow>")


async def test_starttls_with_login(
    step_runner: Any, smtp_server_factory: Any, certificate: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = smtp_server_factory(auth=True, tls_context=certificate.server_context())
    step = mail_step(
        security="starttls",
        username="${config.smtp_user}",
        password="${config.smtp_password}",
        ca_file=str(certificate.cert),
    )
    runner = await step_runner(
        [step],
        config=SMTP,
        values={
            "smtp_port": server.port,
            "smtp_user": server.username,
            "smtp_password": server.password,
        },
    )
    caplog.set_level(logging.DEBUG, logger="streamflow")
    caplog.set_level(logging.DEBUG, logger="aiosmtplib")
    await runner.run("mail", {"id": 1, "name": "Bo", "email": "bo@x.io", "manager": "m@x.io"})
    [got] = server.received
    assert got.login == server.username
    assert got.message["Subject"] == "Welcome, Bo"
    assert server.password not in caplog.text


async def test_implicit_tls(step_runner: Any, smtp_server_factory: Any, certificate: Any) -> None:
    server = smtp_server_factory(tls_context=certificate.server_context(), implicit_tls=True)
    step = mail_step(security="tls", ca_file=str(certificate.cert))
    runner = await step_runner([step], config=SMTP, values={"smtp_port": server.port})
    await runner.run("mail", {"id": 1, "name": "Cy", "email": "cy@x.io", "manager": "m@x.io"})
    assert [m.message["Subject"] for m in server.received] == ["Welcome, Cy"]


async def test_untrusted_certificate_is_refused(
    step_runner: Any, smtp_server_factory: Any, certificate: Any
) -> None:
    server = smtp_server_factory(tls_context=certificate.server_context(), implicit_tls=True)
    runner = await step_runner(
        [mail_step(security="tls", timeout="5s")], config=SMTP, values={"smtp_port": server.port}
    )
    with pytest.raises(RetriableError, match=r"CERTIFICATE|certificate|SSL"):
        await runner.run("mail", {"id": 1, "name": "D", "email": "d@x.io", "manager": "m@x.io"})
    assert server.received == []


async def test_wrong_password_is_retriable_and_masked(
    step_runner: Any, smtp_server_factory: Any, certificate: Any
) -> None:
    server = smtp_server_factory(auth=True, tls_context=certificate.server_context())
    step = mail_step(
        security="starttls",
        username="${config.smtp_user}",
        password="${config.smtp_password}",
        ca_file=str(certificate.cert),
    )
    runner = await step_runner(
        [step],
        config=SMTP,
        values={"smtp_port": server.port, "smtp_user": "mailer", "smtp_password": "wrong-pw-123"},
    )
    with pytest.raises(RetriableError, match="535") as info:
        await runner.run("mail", {"id": 1, "name": "E", "email": "e@x.io", "manager": "m@x.io"})
    assert "wrong-pw-123" not in str(info.value)
    assert server.received == []


async def test_bad_messages_fail_for_good(step_runner: Any, smtp_server_factory: Any) -> None:
    server = smtp_server_factory()
    runner = await step_runner(
        [mail_step(cc=None, bcc=None)], config=SMTP, values={"smtp_port": server.port}
    )
    with pytest.raises(PoisonMessageError, match="no recipient"):
        await runner.run("mail", {"name": "x", "email": None})
    with pytest.raises(PoisonMessageError, match="not an email address"):
        await runner.run("mail", {"name": "x", "email": "nobody"})
    with pytest.raises(PoisonMessageError, match=r"linefeed|line break"):
        await runner.run("mail", {"name": "x\r\nBcc: victim@x.io", "email": "a@x.io"})
    assert server.received == []


async def test_unreachable_server_is_retriable(step_runner: Any) -> None:
    from tests.integration.conftest import free_port

    runner = await step_runner(
        [mail_step(timeout="3s")], config=SMTP, values={"smtp_port": free_port()}
    )
    with pytest.raises(RetriableError, match=r"smtp 127\.0\.0\.1"):
        await runner.run("mail", {"name": "x", "email": "a@x.io", "manager": "m@x.io"})


async def test_smtp_connection(step_runner: Any, smtp_server_factory: Any) -> None:
    server = smtp_server_factory()
    runner = await step_runner(
        [{"id": "mail", "type": "email", "connection": "mail", "to": "a@x.io",
          "subject": "s", "text": "t"}],
        config=SMTP,
        values={"smtp_port": server.port},
        connections={"mail": {"type": "smtp", "host": "127.0.0.1", "port": server.port,
                              "security": "none", "from": "bot@example.com"}},
    )  # fmt: skip
    await runner.run("mail", {})
    assert [m.sender for m in server.received] == ["bot@example.com"]


async def test_validation(step_runner: Any) -> None:
    with pytest.raises(ValidationFailed, match=r"set at least one of to, cc, bcc"):
        await step_runner([mail_step(to=None, cc=None, bcc=None)], config=SMTP)
    with pytest.raises(ValidationFailed, match="set host"):
        await step_runner([mail_step(host=None)], config=SMTP)
    with pytest.raises(ValidationFailed, match="connection 'db' is of type postgres"):
        await step_runner(
            [{"id": "m", "type": "email", "connection": "db", "to": "a@x.io", "subject": "s",
              "text": "t"}],
            connections={"db": {"type": "postgres", "dsn": "postgresql://h/db"}},
        )  # fmt: skip
    with pytest.raises(ValidationFailed, match="secret config variable 'smtp_password'"):
        await step_runner([mail_step(subject="${config.smtp_password}")], config=SMTP)
