"""``auth: {type: aws_sigv4}`` on the ``http`` step.

Two real servers: moto's S3 (the request shape an AWS API accepts: an object written and
read back through plain ``http`` steps), and a loopback aiohttp server that recomputes
each request's SigV4 signature from the bytes it received, with botocore and the known
secret, and refuses a mismatch with 403 — because moto does not check signatures."""

from __future__ import annotations

import hmac
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from streamflow.errors import PoisonMessageError
from tests.integration.cloud import S3Server, moto_s3  # noqa: F401

KEY_ID = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "session-token-example"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), "
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)


def expected_signature(request: web.Request, body: bytes, secret: str) -> str | None:
    """The signature botocore computes for what was received (None: no usable header)."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    m = _AUTH.match(request.headers.get("Authorization", ""))
    if m is None:
        return None
    signed = m["signed"].split(";")
    headers = {k: v for k, v in request.headers.items() if k.lower() in signed}
    url = f"http://{request.host}{request.raw_path}"
    aws = AWSRequest(method=request.method, url=url, headers=headers, data=body)
    aws.context["timestamp"] = request.headers["X-Amz-Date"]
    token = request.headers.get("X-Amz-Security-Token")
    creds = Credentials(m["key"], secret, token)
    signer = (S3SigV4Auth if m["service"] == "s3" else SigV4Auth)(creds, m["service"], m["region"])
    canonical = signer.canonical_request(aws)
    return str(signer.signature(signer.string_to_sign(aws, canonical), aws))


@dataclass
class Checker:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def sigv4_checker() -> AsyncIterator[Checker]:
    """An AWS-style API on loopback that verifies SigV4 (403 SignatureDoesNotMatch)."""
    checker = Checker("")

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        m = _AUTH.match(request.headers.get("Authorization", ""))
        want = expected_signature(request, body, SECRET_KEY)
        ok = m is not None and want is not None and hmac.compare_digest(want, m["sig"])
        checker.seen.append({"ok": ok, "path": request.raw_path, "body": body,
                             "headers": dict(request.headers)})  # fmt: skip
        if not ok:
            return web.json_response({"message": "SignatureDoesNotMatch"}, status=403)
        return web.json_response({"ok": True, "path": request.path, "query": dict(request.query)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    checker.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield checker
    await runner.cleanup()


def sigv4(service: str, secret: str = SECRET_KEY, **extra: Any) -> dict[str, Any]:
    return {"type": "aws_sigv4", "service": service, "region": "eu-west-1",
            "access_key_id": KEY_ID, "secret_access_key": secret, **extra}  # fmt: skip


async def test_signatures_verify_for_every_request_shape(
    sigv4_checker: Checker, step_runner: Any
) -> None:
    url = sigv4_checker.url
    runner = await step_runner(
        [
            {"id": "invoke", "type": "http", "method": "POST",
             "url": url + "/2015-03-31/functions/my-fn/invocations",
             "auth": sigv4("lambda"), "json": "${payload}"},
            {"id": "query", "type": "http", "url": url + "/prod/items",
             "query": {"q": "a b/c", "limit": "${payload.n}", "z": "é"},
             "auth": sigv4("execute-api", session_token=TOKEN)},
            {"id": "form", "type": "http", "method": "POST", "url": url + "/",
             "form": {"Action": "SendMessage", "MessageBody": "hi & bye"},
             "auth": sigv4("sqs")},
            {"id": "wrong", "type": "http", "url": url + "/x", "retry_on": [],
             "auth": sigv4("lambda", secret="not-the-secret-key")},
        ],
    )  # fmt: skip
    out = await runner.run("invoke", {"order": 7, "name": "Zoë"})
    assert out.result["status"] == 200
    out = await runner.run("query", {"n": 5})
    assert out.result["body"]["query"] == {"q": "a b/c", "limit": "5", "z": "é"}
    assert sigv4_checker.seen[-1]["headers"]["X-Amz-Security-Token"] == TOKEN
    out = await runner.run("form", {})
    assert sigv4_checker.seen[-1]["body"] == b"Action=SendMessage&MessageBody=hi+%26+bye"
    assert [s["ok"] for s in sigv4_checker.seen] == [True, True, True]
    # the checker really checks: a wrong secret gives a signature it refuses
    with pytest.raises(PoisonMessageError, match="answered 403") as info:
        await runner.run("wrong", {})
    assert sigv4_checker.seen[-1]["ok"] is False
    assert "not-the-secret-key" not in str(info.value)


async def test_sigv4_http_step_reads_and_writes_s3(
    moto_s3: S3Server,  # noqa: F811
    step_runner: Any,
) -> None:
    bucket = moto_s3.bucket()
    auth = {"type": "aws_sigv4", "service": "s3", "region": "us-east-1",
            "access_key_id": "testing", "secret_access_key": "testing"}  # fmt: skip
    runner = await step_runner(
        [
            {"id": "put", "type": "http", "method": "PUT", "idempotency_key": False,
             "url": f"{moto_s3.url}/{bucket}/notes/${{payload.name}}",
             "headers": {"Content-Type": "text/plain"}, "body": "${payload.text}", "auth": auth},
            {"id": "get", "type": "http", "url": f"{moto_s3.url}/{bucket}/notes/${{payload.name}}",
             "auth": auth},
            {"id": "list", "type": "http", "url": f"{moto_s3.url}/{bucket}",
             "query": {"list-type": "2", "prefix": "notes/"}, "auth": auth},
        ]
    )  # fmt: skip
    put = await runner.run("put", {"name": "a b.txt", "text": "hello S3"})
    assert put.result["status"] == 200
    got = await runner.run("get", {"name": "a b.txt"})
    assert got.result["body"] == "hello S3"
    listed = await runner.run("list", {})
    assert "<Key>notes/a b.txt</Key>" in listed.result["body"]
    obj = moto_s3.client().get_object(Bucket=bucket, Key="notes/a b.txt")
    assert obj["Body"].read() == b"hello S3"
