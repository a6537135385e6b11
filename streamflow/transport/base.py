"""The broker seam: what the runtime needs from Kafka or from the embedded store.

Every method here is synchronous and thread-safe enough to be called from one worker
thread per agent; the runtime runs them off the event loop. Offsets follow Kafka's
convention: a committed offset is the *next* offset to read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

TopicPartition = tuple[str, int]
Headers = list[tuple[str, bytes]]


@dataclass(slots=True)  # not frozen: a frozen init costs 4x, and one is made per message
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicChange:
    name: str
    action: str  # "create" | "grow" | "unchanged"
    partitions: int
    previous: int = 0


DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""Kafka's producer default (librdkafka ``message.max.bytes``); both transports enforce it."""
MAX_MESSAGE_ENV = "STREAMFLOW_MAX_MESSAGE_BYTES"
_RECORD_OVERHEAD = 64  # bytes a record costs in a v2 batch besides key, value and headers
_HEADER_OVERHEAD = 10  # per header: its two length varints


def max_message_bytes(environ: Mapping[str, str]) -> int:
    """The largest message a producer accepts: ``STREAMFLOW_MAX_MESSAGE_BYTES`` or Kafka's
    default (1,000,000 bytes). Raises ValueError on a value that is not a positive int."""
    raw = environ.get(MAX_MESSAGE_ENV, "")
    if not raw:
        return DEFAULT_MAX_MESSAGE_BYTES
    value = int(raw)
    if value < 1024:
        raise ValueError(f"{MAX_MESSAGE_ENV}={raw}: at least 1024 bytes")
    return value


def wire_size(key: bytes | None, value: bytes, headers: Headers | None) -> int:
    """A message's size as a Kafka producer counts it against ``message.max.bytes``
    (an upper bound: key, value, headers and the record's framing)."""
    size = _RECORD_OVERHEAD + len(value) + (len(key) if key else 0)
    if headers:
        for k, v in headers:  # a loop, not sum(generator): once per message produced
            size += len(k) + len(v) + _HEADER_OVERHEAD
    return size


def too_large(topic: str, size: int, limit: int) -> str:
    return (
        f"message to {topic} is {size:,} bytes, over the {limit:,}-byte limit "
        f"(message.max.bytes; set {MAX_MESSAGE_ENV} to change it)"
    )


class MessageRejected(Exception):
    """The producer refused this one message at once (too large, invalid); other messages
    are unaffected. The runtime dead-letters the record that produced it."""


class DeliveryError(Exception):
    """The broker did not confirm a produced message; nothing may be committed."""


class TransactionAborted(Exception):
    """The transaction was aborted (abortable error): rewind the consumer and redo."""


RevokeHook = Callable[[list[TopicPartition]], None]


class Consumer(Protocol):
    group: str
    """The consumer group (``""``: a reader that belongs to no group)."""
    on_revoke: RevokeHook | None
    """Called inside ``poll`` before partitions are taken away: commit what is done."""

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds for the first."""

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit next-offsets to read, synchronously (at-least-once path)."""

    def assignment(self) -> list[TopicPartition]: ...

    def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (after an abort)."""

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        """Stop fetching these partitions (their position is kept) until ``resume``."""

    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (a record not processed now is read again)."""

    def lag(self) -> dict[TopicPartition, int]:
        """Records between this consumer's position and the log end, per assigned partition."""

    def group_metadata(self) -> object:
        """What a transaction commits this member's offsets against: on Kafka the group's
        ``ConsumerGroupMetadata`` (generation and member id, so a member whose partitions
        moved is fenced), on the embedded transport the group name. Opaque to callers:
        only ``commit_transaction`` of the same transport reads it."""

    def close(self) -> None: ...


class Producer(Protocol):
    atomic_offsets: bool
    """True when ``commit_transaction`` makes outputs and offsets visible together even
    without a ``transactional_id`` (the embedded transport: one SQLite transaction)."""

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue a message; with a key and no partition, murmur2(key) picks the partition.
        Raises MessageRejected when this message can never be sent (too large)."""

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued message is confirmed; raise DeliveryError if any failed."""

    def begin(self) -> None:
        """Start a transaction (transactional producers only)."""

    def commit_transaction(self, consumer: Consumer, offsets: Mapping[TopicPartition, int]) -> None:
        """Atomically make queued messages visible and commit the consumer's offsets."""

    def abort(self) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    url: str
    max_message_bytes: int
    """Largest message ``send`` accepts (``wire_size``); larger ones raise MessageRejected."""

    def ensure_topics(
        self, specs: Sequence[TopicSpec], *, dry_run: bool = False
    ) -> list[TopicChange]:
        """Create missing topics, grow partitions; refuse (ConfigError) to shrink."""

    def partitions(self, topic: str) -> int:
        """Partition count of an existing topic (0 when it does not exist)."""

    def consumer(self, group: str, topics: Sequence[str], *, from_end: bool = False) -> Consumer:
        """A member of consumer ``group``; with group ``""`` a reader of every partition
        that belongs to no group and commits nothing (from the beginning, or ``from_end``)."""

    def producer(
        self, *, transactional_id: str | None = None, delivery_timeout: float | None = None
    ) -> Producer:
        """A producer; transactional with ``transactional_id``. With ``delivery_timeout``
        (seconds) every message is confirmed or failed (``flush`` raises) within it."""

    def group_lock(self, group: str) -> Path | None:
        """A file whose exclusive ``flock`` makes this process the one reader of ``group``
        where the transport does not share a group's partitions between processes (the
        embedded one: ``DIR/locks/<group>.lock``); None where the broker does (Kafka)."""

    def end_offsets(self, topic: str) -> dict[int, int]: ...

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offsets on ``topic`` (partitions without one are absent)."""

    def commit_group(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Set a group's committed offsets (the group must have no active members)."""

    def read_all(self, topic: str) -> list[Record]:
        """Every record now in ``topic``, partition by partition (no consumer group)."""

    def close(self) -> None: ...
