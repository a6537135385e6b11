"""Instances: one deployment of an integration for one customer.

An instance record lives on the compacted topic ``sf.instances``, keyed
``<integration>/<instance>``: the integration version it pins, its config values (secret
ones sealed by the Vault) and when it was deployed. Removing an instance writes a
tombstone (an empty value). Agents keep an ``InstanceTable`` that follows the topic, and
resolve ``${config.…}`` for each envelope's instance; an envelope for an unknown or
removed instance is dead-lettered, never run with another instance's config.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamflow import exactjson
from streamflow.errors import ConfigError, PoisonMessageError
from streamflow.instances.vault import Vault, is_sealed
from streamflow.observability.logs import register_secrets
from streamflow.topology.models import Integration
from streamflow.topology.values import resolve_config
from streamflow.transport.base import Consumer, TopicSpec, Transport

INSTANCES_TOPIC = "sf.instances"
INSTANCES_SPEC = TopicSpec(INSTANCES_TOPIC, 3, {"cleanup.policy": "compact"})
INSTANCE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MASK = "********"


@dataclass
class InstanceRecord:
    integration: str
    instance: str
    version: str
    config: dict[str, Any]  # secret values sealed
    deployed_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    removed_ms: int | None = None  # removed: kept so removal flows still see its config

    @property
    def key(self) -> str:
        return f"{self.integration}/{self.instance}"

    def encode(self) -> bytes:
        return exactjson.dumps(self.__dict__)

    @classmethod
    def decode(cls, data: bytes) -> InstanceRecord:
        return cls(**exactjson.loads(data))

    def masked(self) -> dict[str, Any]:
        return {k: MASK if is_sealed(v) else v for k, v in self.config.items()}


def seal_config(
    integration: Integration, values: Mapping[str, Any], vault: Vault | None
) -> dict[str, Any]:
    sealed: dict[str, Any] = {}
    for name, value in values.items():
        var = integration.config.get(name)
        if var is not None and var.secret and value is not None:
            if vault is None:
                raise ConfigError(
                    f"config variable '{name}' is secret: set STREAMFLOW_SECRET_KEY "
                    "to store it encrypted (secrets are never stored in clear)"
                )
            sealed[name] = vault.encrypt(value)
        else:
            sealed[name] = value
    return sealed


def unseal_config(record: InstanceRecord, vault: Vault | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in record.config.items():
        if is_sealed(value):
            if vault is None:
                raise ConfigError(
                    f"instance {record.instance} has secrets; set STREAMFLOW_SECRET_KEY"
                )
            out[name] = vault.decrypt(value)
        else:
            out[name] = value
    return out


def read_instances(transport: Transport) -> dict[str, InstanceRecord]:
    """The latest record per key (removed ones included, see ``live``; tombstones drop)."""
    if not transport.partitions(INSTANCES_TOPIC):
        return {}
    table: dict[str, InstanceRecord] = {}
    for rec in transport.read_all(INSTANCES_TOPIC):
        _apply(table, rec.key, rec.value)
    return table


def _apply(table: dict[str, InstanceRecord], key: bytes | None, value: bytes) -> None:
    if key is None:
        return
    k = key.decode()
    if not value:
        table.pop(k, None)
    else:
        table[k] = InstanceRecord.decode(value)


def deploy_instance(
    transport: Transport,
    integration: Integration,
    instance: str,
    supplied: Mapping[str, Any],
    *,
    upgrade: bool = False,
) -> tuple[InstanceRecord, bool]:
    """Validate, seal and record an instance; returns (record, created)."""
    if not INSTANCE_ID.match(instance):
        raise ConfigError(f"instance id {instance!r}: use lowercase letters, digits, '-' and '_'")
    values = resolve_config(integration.config, supplied)
    needs_key = any(v.secret and values.get(n) is not None for n, v in integration.config.items())
    vault = Vault.from_env(required=needs_key)
    transport.ensure_topics([INSTANCES_SPEC])
    existing = read_instances(transport).get(f"{integration.name}/{instance}")
    if existing is not None and existing.removed_ms is not None:
        existing = None  # deploying a removed instance again starts it afresh
    version = integration.doc.version
    if existing is not None and existing.version != version and not upgrade:
        raise ConfigError(
            f"instance {instance} runs version {existing.version} of "
            f"{integration.name}; deploying version {version} is an upgrade: "
            "add --upgrade"
        )
    record = InstanceRecord(
        integration.name, instance, version, seal_config(integration, values, vault)
    )
    producer = transport.producer()
    producer.send(INSTANCES_TOPIC, record.encode(), record.key.encode())
    producer.flush()
    producer.close()
    return record, existing is None


def remove_instance(
    transport: Transport, integration: Integration, instance: str
) -> InstanceRecord:
    existing = read_instances(transport).get(f"{integration.name}/{instance}")
    if existing is None or existing.removed_ms is not None:
        raise ConfigError(f"no instance {instance} of {integration.name}")
    existing.removed_ms = time.time_ns() // 1_000_000
    producer = transport.producer()
    producer.send(INSTANCES_TOPIC, existing.encode(), existing.key.encode())
    producer.flush()
    producer.close()
    return existing


def live(table: Mapping[str, InstanceRecord]) -> dict[str, InstanceRecord]:
    """The instances that are deployed (not removed)."""
    return {k: r for k, r in table.items() if r.removed_ms is None}


class InstanceTable:
    """A live view of ``sf.instances`` for one integration, refreshed in the background."""

    def __init__(self, transport: Transport, integration: Integration) -> None:
        self.transport = transport
        self.integration = integration
        self.vault = Vault.from_env(required=False)
        self.records: dict[str, InstanceRecord] = {}
        self.resolved: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.poll_lock = threading.Lock()
        self.seen: dict[int, int] = {}  # partition -> offset after the last record applied
        transport.ensure_topics([INSTANCES_SPEC])
        self.consumer: Consumer = transport.consumer("", [INSTANCES_TOPIC])
        self.refresh(timeout=0.0)

    def refresh(self, timeout: float = 0.5) -> None:
        """Apply what arrived on the topic since the last call."""
        with self.poll_lock:
            while True:
                records = self.consumer.poll(1000, timeout)
                if not records:
                    return
                with self.lock:
                    table = dict(self.records)
                    for rec in records:
                        _apply(table, rec.key, rec.value)
                        self.seen[rec.partition] = rec.offset + 1
                    self.records = table
                    self.resolved = {}
                timeout = 0.0

    def catch_up(self, timeout: float = 5.0) -> None:
        """Read the topic up to its end as of now: an event may name an instance whose
        record was written just before it (deploy flows do), before the background
        refresh saw it."""
        ends = self.transport.end_offsets(INSTANCES_TOPIC)
        deadline = time.monotonic() + timeout
        while any(self.seen.get(p, 0) < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                return
            self.refresh(0.1)

    def config(self, instance: str, *, removing: bool = False) -> dict[str, Any]:
        """The config of an instance of this integration, decrypted, defaults applied.
        A removed instance has none, except for the flows its removal triggers."""
        key = f"{self.integration.name}/{instance}"
        if key not in self.records:
            self.catch_up()
        record = self.records.get(key)
        if record is not None and record.removed_ms is not None and not removing:
            record = None
        resolved = self.resolved.get(instance)
        if resolved is not None and record is not None:
            return resolved
        if record is None:
            raise PoisonMessageError(
                f"unknown or removed instance '{instance}' of {self.integration.name}"
            )
        unsealed = unseal_config(record, self.vault)
        register_secrets(
            unsealed[n] for n, v in self.integration.config.items() if v.secret and n in unsealed
        )
        values = resolve_config(self.integration.config, unsealed, strict=False)
        with self.lock:
            self.resolved[instance] = values
        return values

    def close(self) -> None:
        self.consumer.close()


PUBLIC_URL_ENV = "STREAMFLOW_PUBLIC_URL"


def webhook_urls(integration: Integration, instance: str, public_url: str) -> dict[str, str]:
    """The instance's webhook URL of every flow with a webhook trigger, by flow name."""
    base = public_url.rstrip("/")
    return {
        name: f"{base}/webhooks/{instance}/{integration.name}/{name}"
        for name, flow in integration.flows.items()
        if flow.trigger.type == "webhook"
    }


def start_lifecycle_flows(
    transport: Transport,
    integration: Integration,
    record: InstanceRecord,
    kind: str,
    public_url: str,
) -> list[str]:
    """Start every flow triggered by the instance's ``deploy`` or ``remove``; returns the
    execution ids. The payload carries the instance's webhook URLs and its config (secrets
    masked: flows read them through ``${config.…}``)."""
    from streamflow.ingress import FlowIngress
    from streamflow.topology.plan import compile_plan

    flows = [f for f in integration.flows.values() if f.trigger.type == kind]
    if not flows:
        return []
    plan = compile_plan(integration)
    transport.ensure_topics([TopicSpec(t.name, t.partitions, t.config) for t in plan.topics])
    payload = {
        "instance": record.instance,
        "integration": record.integration,
        "version": record.version,
        "event": kind,
        "config": record.masked(),
        "webhook_urls": webhook_urls(integration, record.instance, public_url),
    }
    producer = transport.producer()
    ids = []
    for flow in flows:
        ingress = FlowIngress(integration, flow, plan, {})
        env = ingress.envelope(dict(payload), trigger={"type": kind}, instance=record.instance)
        ingress.send(producer, env)
        ids.append(env.execution_id)
    producer.flush()
    producer.close()
    return ids
