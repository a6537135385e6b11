"""The ``s3`` trigger: new objects under a prefix become events, each object once.

The leader of ``sf.<integration>.<flow>.s3`` (see ``lease.py``) lists the prefix every
``every`` (ListObjectsV2, all pages). The state topic holds one record per emitted key,
``o:<key>`` = ``{etag}``, committed in the same transaction as the object's envelope, so a
restart or a new leader (another gateway process) neither emits an object again nor
misses one. A key whose ETag changed (the object was overwritten) is a new event.

Listing by key, not by time, is deliberate: S3's ``LastModified`` of a multipart upload
is when it started, so a time cursor would miss large objects that finish late.

The payload of an event is ``{bucket, key, size, etag, last_modified}``; the execution
id is ``<flow>-<hash of key and etag>``. A listing that fails (throttling, connection,
access denied) is logged (credentials masked) and tried again at the next interval; it
never changes the state. At most ``max_per_poll`` objects are emitted per listing (the
rest at once after), in transactions of up to 100.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
from typing import Any

import orjson

from streamflow.connectors.aws import aws_masker, s3_client, s3_failure
from streamflow.connectors.s3 import S3Trigger, object_facts
from streamflow.steps.base import Resources
from streamflow.topology.expressions import compile_value
from streamflow.transport.base import Record
from streamflow.triggers.lease import LeaderTrigger, Outgoing, envelope_messages

log = logging.getLogger("streamflow.trigger")
OBJECT_PREFIX = b"o:"
LISTED = b"listed"
BATCH = 100
_SETTINGS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "session_token",
             "addressing_style", "bucket", "prefix")  # fmt: skip


class S3Runner(LeaderTrigger):
    kind = "s3"

    def setup(self) -> None:
        self.trigger = trigger = self.config(S3Trigger)
        self.settings: dict[str, Any] = compile_value(
            {k: getattr(trigger, k) for k in _SETTINGS}
        ).render(self.scope)
        self.bucket = str(self.settings["bucket"])
        self.prefix = str(self.settings["prefix"] or "")
        self.masker = aws_masker(self.settings)
        self.resources = Resources()
        self.next_poll = 0.0
        self.reset()

    def reset(self) -> None:
        self.done: dict[str, str] = {}  # key -> etag emitted
        self.listed = False

    def apply(self, rec: Record) -> None:
        if rec.key == LISTED:
            self.listed = True
        elif rec.key is not None and rec.key.startswith(OBJECT_PREFIX):
            key = rec.key[len(OBJECT_PREFIX) :].decode()
            self.done[key] = str(orjson.loads(rec.value)["etag"])

    def on_term(self) -> None:
        self.next_poll = 0.0

    def matches(self, key: str) -> bool:
        rest = key[len(self.prefix) :]
        return key.startswith(self.prefix) and fnmatch.fnmatchcase(rest, self.trigger.pattern)

    async def work(self) -> float:
        now = self.clock.now_ms() / 1000
        if now < self.next_poll:
            return self.next_poll - now
        self.next_poll = now + self.trigger.every
        try:
            objects = await asyncio.to_thread(self.list)
        except Exception as exc:
            where = f"s3 list s3://{self.bucket}/{self.prefix}"
            log.warning("%s: listing failed: %s", self.topic, s3_failure(exc, where, self.masker))
            return self.trigger.every
        fresh = [o for o in objects if self.done.get(o["key"]) != o["etag"]]
        baseline = self.trigger.skip_existing and not self.listed
        if not fresh and self.listed:
            return max(0.0, self.next_poll - self.clock.now_ms() / 1000)
        more = len(fresh) > self.trigger.max_per_poll
        fresh = fresh[: self.trigger.max_per_poll]
        for start in range(0, max(len(fresh), 1), BATCH):
            if not await self.commit(fresh[start : start + BATCH], emit=not baseline):
                self.next_poll = 0.0  # the transaction did not commit: list again soon
                return 1.0
        if more:
            self.next_poll = 0.0
            return 0.0
        return max(0.0, self.next_poll - self.clock.now_ms() / 1000)

    async def commit(self, objects: list[dict[str, Any]], *, emit: bool) -> bool:
        messages: list[Outgoing] = []
        for obj in objects:
            if emit:
                ident = hashlib.sha256(f"{obj['key']}\x00{obj['etag']}".encode()).hexdigest()
                payload = {"bucket": self.bucket, **obj}
                trigger = {"type": "s3", "bucket": self.bucket, "key": obj["key"],
                           "etag": obj["etag"]}  # fmt: skip
                env = self.ingress.envelope(
                    payload, trigger=trigger, execution_id=f"{self.flow}-{ident[:24]}"
                )
                messages.extend(envelope_messages(self.ingress, env))
            value = {"etag": obj["etag"], "ts": self.clock.now_ms()}
            messages.append(self.state_record(OBJECT_PREFIX + obj["key"].encode(), value))
        messages.append(self.state_record(LISTED, {"ts": self.clock.now_ms()}))
        if not await self.lease.commit(messages):
            return False
        self.done.update({o["key"]: o["etag"] for o in objects})
        self.listed = True
        if emit and objects:
            self.firings.inc(len(objects))
            log.info("%s: emitted %d object(s)", self.topic, len(objects))
        return True

    def list(self) -> list[dict[str, Any]]:
        """Every matching object under the prefix, in key order (on a worker thread)."""
        client = s3_client(self.resources, self.settings, self.trigger.timeout)
        out: list[dict[str, Any]] = []
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/") and self.matches(obj["Key"]):
                    out.append(object_facts(obj))
        return out

    async def aclose(self) -> None:
        await self.resources.aclose()
