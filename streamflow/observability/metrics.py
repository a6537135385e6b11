"""Every Prometheus metric StreamFlow exports, in one place.

Names end in ``_total``, ``_seconds`` or name a gauge; labels are ``integration``,
``flow``, ``step`` (plus what each documents). The hot path binds label children once per
agent (``StepMetrics``) and counts per batch, so a metric costs a few attribute lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

L = ("integration", "flow", "step")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

EVENTS_CONSUMED = Counter("streamflow_events_consumed_total", "Records consumed by agents", L)
EVENTS_PRODUCED = Counter(
    "streamflow_events_produced_total", "Envelopes produced to the next step", L
)
EVENTS_FILTERED = Counter("streamflow_events_filtered_total", "Executions ended by a filter", L)
EVENTS_FAILED = Counter(
    "streamflow_events_failed_total", "Step failures, by error class", (*L, "error")
)
EVENTS_RETRIED = Counter("streamflow_events_retried_total", "Retries scheduled", L)
EVENTS_DEAD_LETTERED = Counter(
    "streamflow_events_dead_lettered_total", "Envelopes dead-lettered", L
)
EVENTS_COMPENSATED = Counter("streamflow_events_compensated_total", "Compensations run", L)
EXECUTIONS_COMPLETED = Counter(
    "streamflow_executions_completed_total", "Executions completed", ("integration", "flow")
)
# status: completed, filtered, failed, compensated, compensation_failed; sf_instance: the
# customer instance ("" without one), not `instance`, which Prometheus sets to the target
EXECUTIONS_ENDED = Counter(
    "streamflow_executions_ended_total",
    "Executions that ended, by status and instance",
    ("integration", "flow", "status", "sf_instance"),
)
DEAD_LETTER_BACKLOG = Gauge(
    "streamflow_dead_letter_backlog",
    "Dead letters past what `streamflow dlq replay --all` has replayed, per flow",
    ("integration", "flow"),
)
STEP_DURATION = Histogram(
    "streamflow_step_duration_seconds", "Time a step took per event", L, buckets=LATENCY_BUCKETS
)
EXECUTION_LATENCY = Histogram(
    "streamflow_execution_latency_seconds",
    "Trigger to completion, end to end",
    ("integration", "flow"),
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("streamflow_events_in_flight", "Records being processed by an agent", L)
CONSUMER_LAG = Gauge(
    "streamflow_consumer_lag", "Records behind the log end", (*L, "topic", "partition")
)
TXN_COMMITS = Counter("streamflow_transaction_commits_total", "Kafka transactions committed", L)
TXN_ABORTS = Counter("streamflow_transaction_aborts_total", "Kafka transactions aborted", L)
TXN_COMMIT_SECONDS = Histogram(
    "streamflow_transaction_commit_seconds",
    "Commit duration (flush+commit or txn commit)",
    L,
    buckets=LATENCY_BUCKETS,
)
BREAKER_STATE = Gauge(
    "streamflow_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", (*L, "target")
)
GATEWAY_REQUESTS = Counter(
    "streamflow_gateway_requests_total", "Gateway requests", ("route", "status")
)
GATEWAY_SECONDS = Histogram(
    "streamflow_gateway_request_seconds",
    "Gateway request latency",
    ("route",),
    buckets=LATENCY_BUCKETS,
)
AGENT_RESTARTS = Counter(
    "streamflow_agent_restarts_total",
    "Agents restarted by the supervisor after an unexpected error",
    (*L, "agent", "error"),
)
TRIGGER_FIRINGS = Counter(
    "streamflow_trigger_firings_total", "Trigger firings", ("integration", "flow", "trigger")
)
TRIGGER_CONNECTED = Gauge(
    "streamflow_trigger_connected",
    "1 while this process holds a stream trigger's (sse, websocket) connection, else 0",
    ("integration", "flow", "trigger"),
)
TRIGGER_RECONNECTS = Counter(
    "streamflow_trigger_reconnects_total",
    "Stream trigger connections lost, refused or timed out",
    ("integration", "flow", "trigger"),
)


@dataclass
class StepMetrics:
    """Label children of one agent, bound once."""

    integration: str
    flow: str
    step: str

    def __post_init__(self) -> None:
        labels = (self.integration, self.flow, self.step)
        self.consumed = EVENTS_CONSUMED.labels(*labels)
        self.produced = EVENTS_PRODUCED.labels(*labels)
        self.in_flight = IN_FLIGHT.labels(*labels)
        self.commits = TXN_COMMITS.labels(*labels)
        self.aborts = TXN_ABORTS.labels(*labels)
        self.commit_seconds = TXN_COMMIT_SECONDS.labels(*labels)
        self.completed = EXECUTIONS_COMPLETED.labels(self.integration, self.flow)
        self.latency = EXECUTION_LATENCY.labels(self.integration, self.flow)

    def for_step(self, step: str) -> StepCounters:
        return StepCounters(self.integration, self.flow, step)

    def lag(self, topic: str, partition: int, value: int) -> None:
        CONSUMER_LAG.labels(self.integration, self.flow, self.step, topic, str(partition)).set(
            value
        )


@dataclass
class StepCounters:
    integration: str
    flow: str
    step: str

    def __post_init__(self) -> None:
        labels = (self.integration, self.flow, self.step)
        self.filtered = EVENTS_FILTERED.labels(*labels)
        self.retried = EVENTS_RETRIED.labels(*labels)
        self.dead_lettered = EVENTS_DEAD_LETTERED.labels(*labels)
        self.compensated = EVENTS_COMPENSATED.labels(*labels)
        self.duration = STEP_DURATION.labels(*labels)

    def failed(self, error: str) -> None:
        EVENTS_FAILED.labels(self.integration, self.flow, self.step, error).inc()
