"""The ``rabbitmq`` trigger: consume a queue; each message becomes one event.

Every gateway (and ``serve``) process consumes the queue: there is no leader, RabbitMQ
spreads the messages over the consumers (``prefetch`` unacknowledged messages each).

Delivery (at least once)::

    1. take the messages the broker delivered (up to ``prefetch``, as one batch)
    2. each message -> its envelope and ``started`` event; a message that cannot be parsed
       (not JSON, not UTF-8, an integer beyond 64 bits) or encoded (nested too deep) -> the
       raw body on the flow's dead-letter topic, with ``sf-error*`` headers and
       ``sf-origin-topic: amqp:<queue>``
    3. send them all to the flow's broker and flush: the events are durably there
    4. only then acknowledge the messages to RabbitMQ (``basic.ack``)

If the broker does not confirm (step 3 fails) and does not answer a metadata request
either, it is down: the batch is given back to RabbitMQ (``basic.nack`` with requeue) and
the consumer backs off (1 s doubling to 30 s); nothing is acknowledged that is not on the
flow's topic (some of a failed batch may have reached it: they are emitted again when
redelivered). If the broker answers, the batch's messages are sent one at a time and the
one it refuses (e.g. larger than the topic's limit) is dead-lettered (with its first
64 KiB and ``sf-truncated: <size>`` when the whole body is refused too); if even that fails
it is rejected without requeue (RabbitMQ drops it or routes it to the queue's own
dead-letter exchange, if one is configured): no message is requeued forever.

What can be duplicated: a process that dies (or loses its AMQP connection) after step 3
and before RabbitMQ received the ack gets its messages redelivered to a consumer, which
emits them again (``trigger.redelivered`` is true); so do the messages of a batch the
broker confirmed only in part. An execution's id is derived from the
message's ``message_id`` (``<flow>-<hash>``) when the publisher set one, so downstream
steps can recognise such a duplicate; without a ``message_id`` it is a fresh id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from streamflow import exactjson
from streamflow.connectors.rabbitmq import RabbitMQTrigger, amqp_value, connect
from streamflow.envelope import new_execution_id
from streamflow.errors import PoisonMessageError
from streamflow.ingress import FlowIngress
from streamflow.observability.metrics import TRIGGER_FIRINGS
from streamflow.runtime.processor import dlq_headers
from streamflow.topology.expressions import compile_value
from streamflow.transport.base import Producer, Record, Transport
from streamflow.triggers.lease import Outgoing, envelope_messages
from streamflow.util.secrets import Masker, safe_dsn

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger("streamflow.trigger")
MAX_BACKOFF = 30.0
TRUNCATE = 65536  # bytes of a body kept in a dead letter the broker refused whole


def parse_body(body: bytes, fmt: str) -> Any:
    """The payload of a message body; PoisonMessageError when it does not parse."""
    if fmt == "bytes":
        return body.hex()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"message is not UTF-8 text: {exc}") from None
    if fmt == "text":
        return text
    try:
        return exactjson.loads(body)  # integers of any size and long decimals stay exact
    except exactjson.JSONDecodeError as exc:
        raise PoisonMessageError(f"message is not valid JSON: {exc}") from None


def truncated(letter: Outgoing) -> Outgoing:
    """A dead letter whose body the broker refused: its first 64 KiB, marked."""
    headers = [*(letter.headers or []), ("sf-truncated", str(len(letter.value)).encode())]
    return Outgoing(letter.topic, letter.value[:TRUNCATE], letter.key, headers)


class RabbitMQRunner:
    """Consumes one flow's queue in this process until ``stop`` (see the module docstring)."""

    def __init__(
        self,
        ingress: FlowIngress,
        transport: Transport,
        env: Mapping[str, str] | None = None,
        producer: Callable[[Transport, float], Producer] | None = None,
    ) -> None:
        trigger = ingress.flow.trigger
        assert isinstance(trigger, RabbitMQTrigger)
        self.trigger = trigger
        self.ingress = ingress
        self.transport = transport
        self.flow = ingress.flow.name
        fplan = ingress.plan.flows[self.flow]
        self.dlq = fplan.dlq_topic
        self.first_topic = fplan.first_topic
        scope = {"config": ingress.config, "env": dict(env or {})}
        self.url = str(compile_value(trigger.url).render(scope) or "")
        self.queue = str(compile_value(trigger.queue).render(scope) or "")
        self.bindings = [
            (str(b["exchange"]), str(b["routing_key"]))
            for b in compile_value([b.model_dump() for b in trigger.bindings]).render(scope)
        ]
        self.masker = Masker()
        self.masker.add_dsn(self.url)
        self.where = f"{safe_dsn(self.url)} queue {self.queue!r}"
        self.make_producer = producer
        self.firings = TRIGGER_FIRINGS.labels(ingress.integration.name, self.flow, "rabbitmq")
        self.producer: Producer | None = None
        self.io: Any = None
        self.probe_io: Any = None
        self.emitted = 0  # events this runner delivered to the flow
        self.given_back = 0  # messages handed back to RabbitMQ (the flow's broker failed)

    # -- messages ----------------------------------------------------------------------

    def outgoing(self, msg: AbstractIncomingMessage) -> tuple[list[Outgoing], bool]:
        """The messages for the flow's broker, and whether it is an event (else a DLQ)."""
        try:
            payload = parse_body(msg.body, self.trigger.format)
        except PoisonMessageError as exc:
            return [self._dead_letter(msg, exc)], False
        headers = {str(k): amqp_value(v) for k, v in (msg.headers or {}).items()}
        trigger = {
            "type": "rabbitmq",
            "queue": self.queue,
            "exchange": msg.exchange or "",
            "routing_key": msg.routing_key or "",
            "message_id": msg.message_id,
            "correlation_id": msg.correlation_id,
            "content_type": msg.content_type,
            "headers": headers,
            "redelivered": bool(msg.redelivered),
            "timestamp": msg.timestamp.isoformat() if msg.timestamp else None,
        }
        execution_id = new_execution_id()
        if msg.message_id:
            ident = f"{self.queue}\x00{msg.message_id}".encode()
            execution_id = f"{self.flow}-{hashlib.sha256(ident).hexdigest()[:24]}"
        try:
            env = self.ingress.envelope(payload, trigger=trigger, execution_id=execution_id)
            return envelope_messages(self.ingress, env), True
        except Exception as exc:  # e.g. nested deeper than the envelope encoder allows
            error = PoisonMessageError(f"message cannot become an event: {exc}")
            return [self._dead_letter(msg, error)], False

    def _dead_letter(self, msg: AbstractIncomingMessage, exc: BaseException) -> Outgoing:
        error = self.masker.mask(str(exc))
        log.warning("%s: dead-lettered message %s: %s", self.where, msg.message_id or "", error)
        origin = Record(f"amqp:{self.queue}", 0, msg.delivery_tag or 0, None, msg.body)
        return Outgoing(self.dlq, msg.body, None, dlq_headers(origin, exc, error, "trigger", 0, ""))

    def _deliver(self, batch: list[list[Outgoing]]) -> list[Exception | None]:
        """On the I/O thread: send each message's records, then flush them all."""
        assert self.producer is not None
        errors: list[Exception | None] = []
        for messages in batch:
            try:
                for m in messages:
                    self.producer.send(m.topic, m.value, m.key, m.headers, m.partition)
                errors.append(None)
            except Exception as exc:  # refused at once (e.g. too large): this one only
                errors.append(exc)
        self.producer.flush(self.trigger.timeout)
        return errors

    async def handle(self, batch: list[AbstractIncomingMessage]) -> bool:
        """Deliver ``batch`` to the flow's broker and acknowledge it; False: given back."""
        loop = asyncio.get_running_loop()
        planned = [self.outgoing(m) for m in batch]
        try:
            errors = await loop.run_in_executor(self.io, self._deliver, [p for p, _ in planned])
        except Exception as exc:
            if not await self._broker_answers():
                log.warning(
                    "%s: %d message(s) given back, the flow's broker did not confirm: %s",
                    self.where,
                    len(batch),
                    self.masker.mask(str(exc)),
                )
                for m in batch:
                    with contextlib.suppress(Exception):
                        await m.nack(requeue=True)
                self.given_back += len(batch)
                return False
            # the broker answers, yet refused the batch: find the message(s) it refuses
            errors = [await self._deliver_alone(p) for p, _ in planned]
        for msg, (sent, is_event), error in zip(batch, planned, errors, strict=True):
            if error is None:
                self.firings.inc(int(is_event))
                self.emitted += int(is_event)
                await self._settle(msg, ack=True)
                continue
            # refused by the flow's broker: a dead letter, else a truncated one, else reject
            letter = self._dead_letter(msg, error) if is_event else sent[0]
            delivered = await self._deliver_alone([letter]) is None
            if not delivered:
                delivered = await self._deliver_alone([truncated(letter)]) is None
            await self._settle(msg, ack=delivered)
        return True

    async def _deliver_alone(self, messages: list[Outgoing]) -> Exception | None:
        loop = asyncio.get_running_loop()
        try:
            [error] = await loop.run_in_executor(self.io, self._deliver, [messages])
        except Exception as exc:
            return exc
        return error

    async def _broker_answers(self) -> bool:
        """The flow's broker answers a metadata request (so a refusal is the message's)."""
        try:
            loop = asyncio.get_running_loop()
            probe = loop.run_in_executor(self.probe_io, self.transport.partitions, self.first_topic)
            n = await asyncio.wait_for(probe, self.trigger.timeout)
        except Exception:
            return False
        return n > 0

    async def _settle(self, msg: AbstractIncomingMessage, *, ack: bool) -> None:
        """Ack; or reject without requeue (it could never be delivered)."""
        try:
            if ack:
                await msg.ack()
            else:
                log.error("%s: message %s rejected (dropped)", self.where, msg.delivery_tag)
                await msg.reject(requeue=False)
        except Exception as exc:  # the channel is gone: RabbitMQ redelivers the message
            log.warning("%s: could not settle a message: %s", self.where, exc)

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if self.make_producer is None:
            from streamflow.triggers.publish import gateway_producer

            self.make_producer = gateway_producer
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sf-amqp-{self.flow}")
        # a metadata probe of a broker that is down may outlive its wait: never joined
        self.probe_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-amqp-probe")
        loop = asyncio.get_running_loop()
        connection = None
        try:
            self.producer = await loop.run_in_executor(
                self.io, self.make_producer, self.transport, self.trigger.timeout
            )
            connection = await connect(
                self.url, self.trigger.heartbeat, self.trigger.timeout, self.masker
            )
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self.trigger.prefetch)
            queue = await channel.declare_queue(
                self.queue, durable=True, passive=not self.trigger.declare
            )
            for exchange, routing_key in self.bindings:
                await queue.bind(exchange, routing_key)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            await queue.consume(inbox.put)
            log.info("%s: consuming (prefetch %d)", self.where, self.trigger.prefetch)
            await self._consume(inbox, stop)
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
            if self.producer is not None:
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(self.io, self.producer.close)
            self.io.shutdown(wait=True)
            self.probe_io.shutdown(wait=False, cancel_futures=True)

    async def _consume(
        self, inbox: asyncio.Queue[AbstractIncomingMessage], stop: asyncio.Event
    ) -> None:
        backoff = 1.0
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                getter = asyncio.create_task(inbox.get())
                done, _ = await asyncio.wait(
                    [getter, stopping], return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    return  # unacknowledged messages go back to the queue on close
                batch = [getter.result()]
                while not inbox.empty() and len(batch) < self.trigger.prefetch:
                    batch.append(inbox.get_nowait())
                if await self.handle(batch):
                    backoff = 1.0
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopping), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            stopping.cancel()
