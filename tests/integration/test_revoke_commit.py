"""A commit that fails inside a partition revocation never escapes it (issue #12).

A rebalance calls the agent's revoke hook from inside ``consumer.poll`` - on the event
loop's thread in the lean loop - and the hook commits. When that commit raises (here the
worst kind, ``FatalError``, as a fatally failed transactional producer did), the work is
aborted instead: nothing of it is visible, the agent restarts from its committed offsets
and redoes it - every event is published exactly once, nothing is lost, the process
stays up. The revocation is played on the embedded transport by the consumer itself (a
``local://`` group never rebalances); the commit error by its producer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamflow.errors import FatalError
from streamflow.runtime.app import AppOptions
from streamflow.runtime.runner import run_events
from streamflow.topology.loader import load_integration
from streamflow.transport.base import Record, TopicSpec
from streamflow.transport.local import LocalConsumer, LocalProducer, LocalTransport

N = 60
TOPOLOGY = """\
apiVersion: streamflow/v1
kind: Integration
name: revoke
config:
  api: {{type: string}}
flows:
  - name: f
    trigger: {{type: manual}}
    partitions: 2
    key: ${{payload.n}}
    max_batch: 5
    commit_interval: 60s
    steps:
{steps}      - {{id: out, type: kafka_publish, topic: revoke-out, key: "${{payload.n}}"}}
"""
LEAN = '      - {id: sq, type: transform, output: {n: "${payload.n}"}}\n'
FLOWING = "      - {id: call, type: http, url: '${config.api}/n/${payload.n}'}\n"


class RevokingTransport(LocalTransport):
    """The embedded transport whose agent consumer, from its ``at``-th poll on, calls its
    revoke hook as a rebalance would (from inside ``poll``) until one revocation had work to
    commit, while its producer's commit raises ``FatalError`` (polls of the step's agent are
    counted, not of its retry agent): how long a record takes does not decide whether the
    revocation has something to commit (a slow one was revoked with nothing to commit)."""

    def __init__(self, directory: Path, at: int) -> None:
        super().__init__(directory)
        self.at = at
        self.polls = 0
        self.revoking = False
        self.failed = 0

    def consumer(self, group: str, topics: Sequence[str], *, from_end: bool = False) -> Any:
        consumer = super().consumer(group, topics, from_end=from_end)
        # the step's agent only: how often its retry agent polls meanwhile is its own affair
        if from_end or not group.startswith("sf.revoke.") or group.endswith(".retry"):
            return consumer
        poll = consumer.poll

        def revoking_poll(max_records: int, timeout: float) -> list[Record]:
            self.polls += 1
            if self.polls >= self.at and not self.failed and consumer.on_revoke is not None:
                self.revoking = True
                try:
                    consumer.on_revoke(consumer.assignment())
                finally:
                    self.revoking = False
            return poll(max_records, timeout)

        consumer.poll = revoking_poll  # type: ignore[method-assign]
        return consumer

    def producer(self, *, transactional_id: str | None = None) -> Any:
        producer = super().producer(transactional_id=transactional_id)
        commit = producer.commit_transaction

        def failing_commit(consumer: LocalConsumer, offsets: Any) -> None:
            if self.revoking:
                self.failed += 1
                raise FatalError("producer fatally failed (played by the test)")
            commit(consumer, offsets)

        assert isinstance(producer, LocalProducer)
        producer.commit_transaction = failing_commit  # type: ignore[method-assign]
        return producer


@pytest.mark.parametrize("steps", [LEAN, FLOWING], ids=["lean", "flowing"])
async def test_a_commit_failing_inside_a_revocation_is_aborted_and_redone(
    steps: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"n": int(request.match_info["n"])})

    app = web.Application()
    app.router.add_get("/n/{n}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    path = tmp_path / "revoke.yaml"
    path.write_text(TOPOLOGY.format(steps=steps))
    transport = RevokingTransport(tmp_path / "broker", at=2)
    transport.ensure_topics([TopicSpec("revoke-out", 2)])
    caplog.set_level(logging.WARNING)
    try:
        result = await run_events(
            load_integration(path),
            transport,
            {"api": f"http://127.0.0.1:{port}"},
            [{"n": n} for n in range(N)],
            timeout=90,
            options=AppOptions(trace_payloads=True),
        )
        published = Counter(orjson.loads(r.value)["n"] for r in transport.read_all("revoke-out"))
    finally:
        transport.close()
        await runner.cleanup()
    assert transport.failed == 1  # the revocation's commit did fail
    assert any("commit on revoking" in r.message for r in caplog.records)
    assert result.by_status() == {"completed": N}
    assert published == Counter(range(N)), published  # none lost, none doubled
