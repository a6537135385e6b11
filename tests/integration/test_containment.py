"""No payload, however hostile, stops a service (issue #12).

A real ``streamflow serve`` process (gateway + agents) runs a webhook -> transform -> http
-> kafka_publish flow against a real HTTP server on loopback, on the embedded transport and
on Kafka. Hypothesis generates hostile request bodies - integers beyond 64 bits, NaN and
Infinity, deep nesting, huge strings and arrays, invalid surrogates, odd keys - and every
run also sends one of each named kind. The properties:

* the process stays up and no agent restarts (``/readyz`` lists none);
* every request is answered 202 (accepted) or 4xx with a reason, never 5xx;
* every accepted execution ends ``completed`` or ``failed`` - none is lost;
* each completed one published its message to the outside topic;
* each failed one is dead-lettered, and ``streamflow dlq show`` explains it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamflow.observability.events import ExecutionEvent, decode_all, is_terminal
from streamflow.transport import open_transport
from streamflow.transport.base import TopicSpec, Transport

REPO = Path(__file__).resolve().parents[2]
SF = str(Path(sys.executable).parent / "streamflow")

TOPOLOGY = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
config:
  echo_url: {{type: string}}
  out_topic: {{type: string}}
flows:
  - name: ingest
    trigger: {{type: webhook}}
    partitions: 2
    steps:
      - id: shape
        type: transform
        output:
          original: "${{payload}}"
          nested:
            a: {{b: "${{payload}}"}}
          twice: "${{[payload, payload]}}"
          text: "got ${{payload}}"
      - id: call
        type: http
        method: POST
        url: ${{config.echo_url}}/echo
        json: ${{payload}}
        replace_payload: true
        retry: {{max_attempts: 1}}
      - id: publish
        type: kafka_publish
        topic: ${{config.out_topic}}
        key: ${{meta.execution_id}}
"""


class Echo(BaseHTTPRequestHandler):
    """The outside service: answers every JSON body inside one more object."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = b'{"echo":' + (body or b"null") + b"}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: Any) -> None:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    url: str
    name: str
    topology: Path
    broker: str
    transport: Transport
    out_topic: str
    proc: subprocess.Popen[bytes]
    log: Path
    accepted: dict[str, bytes] = field(default_factory=dict)  # execution id -> body
    refused: list[tuple[int, str]] = field(default_factory=list)
    sent = 0

    def post(self, body: bytes) -> None:
        req = urllib.request.Request(
            f"{self.url}/webhooks/{self.name}/ingest",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        self.sent += 1
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                answer = json.loads(resp.read())
                assert resp.status == 202, answer
                self.accepted[answer["execution_id"]] = body
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            assert 400 <= exc.code < 500, f"{exc.code} for a {len(body)}-byte body: {text}"
            assert json.loads(text)["error"], text  # a reason a person can read
            self.refused.append((exc.code, text))

    def readyz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=10) as resp:
            return dict(json.loads(resp.read()))


@pytest.fixture(scope="module", params=["local", "kafka"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("containment")
    if request.param == "local":
        broker = f"local://{tmp / 'broker'}"
    else:
        broker = f"kafka://{request.getfixturevalue('kafka_bootstrap')}"
    name = f"hostile{uuid.uuid4().hex[:8]}"
    out_topic = f"{name}.out"
    topology = tmp / "hostile.yaml"
    topology.write_text(TOPOLOGY.format(name=name))
    transport = open_transport(broker)
    transport.ensure_topics([TopicSpec(out_topic, 1)])  # the outside topic exists
    echo = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    port = free_port()
    log = tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                SF,
                "serve",
                str(topology),
                "--broker",
                broker,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--config",
                f"echo_url=http://127.0.0.1:{echo.server_address[1]}",
                "--config",
                f"out_topic={out_topic}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    svc = Service(
        f"http://127.0.0.1:{port}", name, topology, broker, transport, out_topic, proc, log
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if svc.readyz()["status"] == "ready":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    try:
        yield svc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        echo.shutdown()
        transport.close()


# -- hostile bodies, as the raw bytes a client sends --------------------------------------
def dump(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, allow_nan=True)  # NaN/Infinity tokens pass


ODD_KEYS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "__proto__", "constructor", "a.b", "${payload}", "$", "k" * 300]),
)
LEAVES = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),  # beyond 64 bits, both signs
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
).map(dump)


def _object(items: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{dump(k)}:{v}" for k, v in items) + "}"


JSON_TEXT = st.recursive(
    LEAVES | st.sampled_from(['"\\ud800"', '"a\\udfff"', '"\\u0000"']),  # lone surrogates
    lambda inner: (
        st.lists(inner, max_size=5).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.lists(st.tuples(ODD_KEYS, inner), max_size=5).map(_object)
    ),
    max_leaves=25,
)
DEEP = st.integers(min_value=240, max_value=1100).map(lambda d: "[" * d + "1" + "]" * d)
DEEP_OBJECT = st.integers(min_value=240, max_value=300).map(lambda d: '{"a":' * d + "0" + "}" * d)
HUGE_STRING = st.integers(min_value=200_000, max_value=1_100_000).map(
    lambda n: dump({"s": "x" * n})
)
HUGE_ARRAY = st.integers(min_value=20_000, max_value=150_000).map(lambda n: dump(list(range(n))))
BODIES = st.one_of(JSON_TEXT, JSON_TEXT, JSON_TEXT, DEEP, DEEP_OBJECT, HUGE_STRING, HUGE_ARRAY)

# one of each kind in every run, whatever hypothesis draws
NAMED = [
    dump({"amount": 2**70, "neg": -(2**80)}),
    '{"x": NaN, "y": Infinity, "z": -Infinity}',
    "[" * 250 + "]" * 250,  # accepted; the transform nests it deeper than the encoder goes
    "[" * 300 + "]" * 300,  # refused at the door: deeper than the encoder goes
    dump({"s": "x" * 600_000}),  # accepted; `twice` makes the envelope over 1 MB
    dump({"s": "x" * 1_100_000}),  # over the webhook's max_body: 413
    dump(list(range(120_000))),
    '{"bad": "\\ud800"}',
    _object([("", "1"), ("__proto__", "{}"), ("k" * 300, "null"), ("${payload}", "2")]),
    dump({"ok": 1}),
]


def _terminal(transport: Transport, topic: str, ids: set[str]) -> dict[str, ExecutionEvent]:
    ended: dict[str, ExecutionEvent] = {}
    for rec in transport.read_all(topic):
        for ev in decode_all(rec.value):
            if ev.execution_id in ids and is_terminal(ev.event, ev.note):
                ended[ev.execution_id] = ev
    return ended


def _dlq_show(svc: Service, ids: list[str]) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [SF, "dlq", "show", str(svc.topology), *ids, "--broker", svc.broker],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    shown: dict[str, dict[str, Any]] = {}
    decoder, text, pos = json.JSONDecoder(), out.stdout, 0
    while (start := text.find('{\n  "id"', pos)) >= 0:
        doc, pos = decoder.raw_decode(text, start)
        shown[doc["execution_id"]] = doc
    return shown


TOTALS: dict[str, int] = {}


@settings(
    max_examples=int(os.environ.get("SF_HOSTILE_EXAMPLES", "4")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    database=None,
)
@given(bodies=st.lists(BODIES, min_size=3, max_size=8))
def test_hostile_payloads_never_stop_the_service(service: Service, bodies: list[str]) -> None:
    svc = service
    before = set(svc.accepted)
    for body in [*bodies, *NAMED]:
        svc.post(body.encode("utf-8", "surrogatepass"))
    new = set(svc.accepted) - before
    assert new, "every body was refused: the test would prove nothing"
    plan_topic = f"sf.{svc.name}.executions"
    deadline = time.monotonic() + 90
    while True:
        assert svc.proc.poll() is None, svc.log.read_text()[-5000:]
        ended = _terminal(svc.transport, plan_topic, new)
        if len(ended) == len(new):
            break
        assert time.monotonic() < deadline, f"{len(new) - len(ended)} execution(s) never ended"
        time.sleep(1)
    status = {i: ev.event for i, ev in ended.items()}
    assert set(status.values()) <= {"completed", "failed"}, status
    completed = {i for i, s in status.items() if s == "completed"}
    failed = sorted(i for i, s in status.items() if s == "failed")
    published = {r.key.decode() for r in svc.transport.read_all(svc.out_topic) if r.key}
    assert completed <= published, "a completed execution did not publish"
    if failed:
        shown = _dlq_show(svc, failed)
        for ex in failed:
            assert ex in shown, f"execution {ex} failed but has no dead letter"
            assert shown[ex]["error"], shown[ex]
            assert f"{svc.name}/ingest step" in shown[ex]["error"], shown[ex]  # its place
    ready = svc.readyz()
    assert ready["status"] == "ready" and ready.get("agents") == {}, ready
    assert svc.proc.poll() is None
    for k, n in (
        ("sent", svc.sent),
        ("accepted", len(svc.accepted)),
        ("refused", len(svc.refused)),
    ):
        TOTALS[f"{svc.broker.split(':')[0]}.{k}"] = n
    TOTALS[f"{svc.broker.split(':')[0]}.completed"] = TOTALS.get(
        f"{svc.broker.split(':')[0]}.completed", 0
    ) + len(completed)
    TOTALS[f"{svc.broker.split(':')[0]}.failed"] = TOTALS.get(
        f"{svc.broker.split(':')[0]}.failed", 0
    ) + len(failed)
    print(f"\nhostile payloads: {TOTALS}")
