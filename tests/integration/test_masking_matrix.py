"""F4: the masking matrix. Every auth type x every place a secret could land: stdout,
JSON logs, dead letters (`dlq list/show`), execution events, the store's files, /metrics
and CLI output. The target is a real HTTP server (loopback) that does what echo and debug
endpoints do: it answers 400 with the request's headers, URL and body, so each secret
comes back in the form it was sent (Basic base64(user:secret), URL-encoded in a query
string, in a JSON body, as a bearer or OAuth2 token).

No form derived from a secret may appear anywhere: as is, URL-encoded, JSON-escaped,
base64 (standard, URL-safe, unpadded) and the Basic credential.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from prometheus_client import REGISTRY, generate_latest

from streamflow.cli.main import main
from streamflow.envelope import decode_record

# characters that URL-encoding and JSON-escaping change, so every form differs
SECRETS = {
    "tok": 'bearer-Tok/+"é-1',
    "pw": 'basic-Pw/+"é-2',
    "key": 'apikey-K/+"é-3',
    "qkey": 'query-K/+"é-4',
    "csecret": 'client-S/+"é-5',
}
ACCESS_TOKEN = 'oauth-AT/+"é-6'  # what the token endpoint hands out: learnt at run time
USER = "bot"


def forms(secret: str) -> dict[str, str]:
    raw = secret.encode()
    out = {
        "plain": secret,
        "url": quote(secret, safe=""),
        "url+": quote_plus(secret),
        "url/": quote(secret),  # '/' kept, as in a query string
        "json": json.dumps(secret)[1:-1],
        "b64": base64.b64encode(raw).decode().rstrip("="),
        "b64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "latin-1": raw.decode("latin-1"),  # UTF-8 header bytes as a server decodes them
        "latin-1 json": json.dumps(raw.decode("latin-1"))[1:-1],
    }
    return out


def forbidden() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, secret in {**SECRETS, "access": ACCESS_TOKEN}.items():
        out.update({f"{name}:{kind}": text for kind, text in forms(secret).items()})
    for name, user, pw in (("basic", USER, SECRETS["pw"]), ("client", "cid", SECRETS["csecret"])):
        cred = base64.b64encode(f"{user}:{pw}".encode()).decode()
        out[f"{name}:credential"] = cred.rstrip("=")
    return out


class Echo(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/token"):
            answer = {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3600}
            self._send(200, json.dumps(answer).encode())
            return
        echo = {
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body.decode(errors="replace"),
        }  # fmt: skip
        self._send(400, json.dumps(echo, ensure_ascii=False).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


AUTHS = {
    "bearer": '{type: bearer, token: "${config.tok}"}',
    "basic": '{type: basic, username: bot, password: "${config.pw}"}',
    "api_key_header": '{type: api_key, name: X-Api-Key, value: "${config.key}"}',
    "api_key_query": '{type: api_key, in: query, name: api_key, value: "${config.qkey}"}',
    "oauth2_body": '{type: oauth2, token_url: "${config.url}/token", client_id: cid, '
    'client_secret: "${config.csecret}"}',
    "oauth2_basic": '{type: oauth2, token_url: "${config.url}/token2", client_id: cid, '
    'client_secret: "${config.csecret}", client_auth: basic}',
}


def topology(tmp_path: Path) -> Path:
    secret_vars = "".join(f"  {n}: {{type: string, secret: true}}\n" for n in SECRETS)
    flows = "".join(
        f"  - name: {name}\n    trigger: {{type: manual}}\n    steps:\n"
        f"      - {{id: call, type: http, method: POST, url: '${{config.url}}/api/{name}',\n"
        f"         auth: {auth}, json: {{about: '{name}'}}}}\n"
        for name, auth in AUTHS.items()
    )
    path = tmp_path / "masking.yaml"
    path.write_text(
        "apiVersion: streamflow/v1\nkind: Integration\nname: masking\nconfig:\n"
        f"  url: {{type: string}}\n{secret_vars}flows:\n{flows}"
    )
    return path


def test_no_secret_form_lands_anywhere(
    tmp_path: Path, echo_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = topology(tmp_path)
    store = tmp_path / "store"
    config = [a for n, v in {"url": echo_url, **SECRETS}.items() for a in ("--config", f"{n}={v}")]
    (tmp_path / "ev.json").write_text('{"n": 1}')
    places: dict[str, str] = {}
    for flow in AUTHS:
        code = main(
            ["--log-format", "json", "--log-level", "INFO", "run", str(path), "--flow", flow,
             "--input", str(tmp_path / "ev.json"), "--broker", f"local://{store}", *config]
        )  # fmt: skip
        assert code != 0  # the target refused: the execution failed
        out = capsys.readouterr()
        places[f"{flow} stdout"], places[f"{flow} JSON logs"] = out.out, out.err
        assert "answered 400" in out.out + out.err  # the echo was there to leak
    for command in (["dlq", "list", "--json"], ["dlq", "show"]):
        for flow in AUTHS:
            main([*command, str(path), "--flow", flow, "--broker", f"local://{store}"])
            places[f"{flow} {' '.join(command)}"] = capsys.readouterr().out
    places["store files"] = "\n".join(
        p.read_bytes().decode(errors="replace") for p in store.rglob("*") if p.is_file()
    )
    places["execution events"] = events_text(path, store)
    places["/metrics"] = generate_latest(REGISTRY).decode()
    leaks = [
        f"{form} in {place}"
        for place, text in places.items()
        for form, secret in forbidden().items()
        if secret in text
    ]
    assert not leaks, leaks
    # the matrix is not empty: every flow's failure is in the dead letters and the events
    for flow in AUTHS:
        assert "***" in places[f"{flow} dlq show"], flow
    assert places["execution events"].count('"failed"') >= len(AUTHS)


def events_text(path: Path, store: Path) -> str:
    """The execution events and the dead letters' headers and envelopes, decoded."""
    from streamflow.observability.events import decode_all
    from streamflow.topology.loader import load_integration
    from streamflow.topology.plan import compile_plan
    from streamflow.transport import open_transport

    plan = compile_plan(load_integration(path))
    transport = open_transport(f"local://{store}")
    try:
        lines = []
        for rec in transport.read_all(plan.executions_topic):
            for ev in decode_all(rec.value):
                lines.append(json.dumps({"event": ev.event, "error": ev.error}, ensure_ascii=False))
        for flow in plan.flows.values():
            for rec in transport.read_all(flow.dlq_topic):
                lines.append(str([(k, v.decode()) for k, v in rec.headers or []]))
                lines.append(str(decode_record(rec).to_dict()))
        return "\n".join(lines)
    finally:
        transport.close()


@pytest.mark.parametrize(
    "dsn",
    [
        "amqp://bot:p%40ss%2Fw0rd%21@127.0.0.1:5672/",
        "mongodb://bot:p%40ss%2Fw0rd%21@127.0.0.1:27017/db",
        "mysql://bot:p%40ss%2Fw0rd%21@127.0.0.1:3306/db",
        "redis://:p%40ss%2Fw0rd%21@127.0.0.1:6379/0",
    ],
)
def test_a_percent_encoded_dsn_password_is_masked_in_every_form(dsn: str) -> None:
    """A password with @ / ! must be percent-encoded in a connection URL; the driver sends
    (and may quote) it decoded: that form and its derived forms were not masked."""
    from streamflow.util.secrets import Masker

    masker = Masker([dsn])
    for kind, text in forms("p@ss/w0rd!").items():
        assert "p@ss" not in masker.mask(f"login refused for {text}: x"), kind
        assert masker.mask(text) == "***", kind
    assert masker.mask("p%40ss%2Fw0rd%21") == "***"


def test_a_connection_url_masks_its_password_not_its_host() -> None:
    from streamflow.util.secrets import Masker

    masker = Masker()
    masker.add_dsn("mongodb://127.0.0.1:27017/db", "amqp://bot:p%40ss%2Fw0rd%21@mq.local:5672/")
    assert masker.mask("mongodb://127.0.0.1:27017/db: refused") == (
        "mongodb://127.0.0.1:27017/db: refused"
    )
    assert masker.mask("amqp://mq.local:5672/ refused p@ss/w0rd! (bot)") == (
        "amqp://mq.local:5672/ refused *** (bot)"
    )
