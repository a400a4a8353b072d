"""The service's Prometheus metrics: names prefixed `distillery_`, base units (seconds, bytes), no id labels.

Counters and histograms are updated where things happen, after their transaction commits (a unit of work
that is re-run does not count twice). Queue and job gauges need a query: a background task refreshes them
(`app.observability.service`), never the scrape. A worker's in-flight figures and a registry's replica
health are read from memory at scrape time by the collectors below."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from app.teachers.service import TeacherRegistry
    from app.worker.load import ReplicaLoad

# Seconds from 1 ms to 10 min: claims and stores are milliseconds, a teacher request can take minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

QUEUE_ITEMS = Gauge("distillery_queue_items", "Items waiting or in flight, by teacher and state.", ["teacher", "state"])
QUEUE_OLDEST_AGE = Gauge(
    "distillery_queue_oldest_item_age_seconds",
    "Age of the oldest queued item (its job's creation), by teacher; 0 when nothing is queued.",
    ["teacher"],
)
JOBS = Gauge("distillery_jobs", "Jobs by state.", ["state"])
GAUGES_REFRESHED = Gauge(
    "distillery_gauges_refreshed_timestamp_seconds", "When the queue and job gauges were last read from the database."
)

TEACHER_REQUESTS = Counter(
    "distillery_teacher_requests_total",
    "Requests to teacher replicas by outcome: the status class (2xx, 4xx, 5xx), timeout or connection_error.",
    ["teacher", "replica", "outcome"],
)
TEACHER_REQUEST_SECONDS = Histogram(
    "distillery_teacher_request_seconds",
    "Generation and scoring requests to teachers, from sending to the whole answer read.",
    ["teacher"],
    buckets=LATENCY_BUCKETS,
)
GENERATED_TOKENS = Counter(
    "distillery_generated_tokens_total", "Generated (or scored) tokens stored, by teacher.", ["teacher"]
)
STORED_BYTES = Counter(
    "distillery_stored_bytes_total", "Bytes of packed token ids and top-k stored in results, by teacher.", ["teacher"]
)
CLAIM_SECONDS = Histogram("distillery_claim_seconds", "Claiming a batch (one transaction).", buckets=LATENCY_BUCKETS)
PARSE_SECONDS = Histogram(
    "distillery_parse_seconds", "Decoding one teacher answer into token ids and top-k.", buckets=LATENCY_BUCKETS
)
STORE_SECONDS = Histogram(
    "distillery_store_seconds", "Encoding and storing one batch's results (one transaction).", buckets=LATENCY_BUCKETS
)
ITEMS_FINISHED = Counter(
    "distillery_items_finished_total", "Items finished by workers, by result (done, or failed for good).", ["result"]
)
LEASES_EXPIRED = Gauge(
    "distillery_leases_expired_items", "Leased items whose lease has expired and which no reaper took back yet."
)
LEASES_REAPED = Counter(
    "distillery_leases_reaped_total", "Expired leases taken back, by what became of the item.", ["result"]
)
STALE_WRITES = Counter(
    "distillery_stale_writes_dropped_total", "Results dropped because their worker no longer held the lease."
)
DATABASE_RETRIES = Counter(
    "distillery_database_retries_total", "Units of work run again after a transient database error."
)
EXPORT_BYTES = Counter("distillery_export_bytes_total", "Bytes streamed by job exports, by format.", ["format"])
EXPORT_ROWS = Counter("distillery_export_rows_total", "Rows streamed by job exports, by format.", ["format"])
HTTP_REQUESTS = Counter(
    "distillery_http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "distillery_http_request_seconds",
    "HTTP request time until the response started, by route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)


def request_outcome(status: int | None, *, timeout: bool = False) -> str:
    """A teacher request's outcome label: the status class, or how the transport failed."""
    if timeout:
        return "timeout"
    if status is None:
        return "connection_error"
    return f"{status // 100}xx"


class DispatchCollector(Collector):
    """One worker's sequences in flight and their target on each replica, read at scrape time."""

    def __init__(self, loads: Iterable[tuple[str, ReplicaLoad]]) -> None:
        self._loads = list(loads)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        inflight = GaugeMetricFamily(
            "distillery_inflight_sequences",
            "Sequences this worker has in flight, by replica.",
            labels=["teacher", "replica"],
        )
        target = GaugeMetricFamily(
            "distillery_inflight_target_sequences",
            "The in-flight controller's target, by replica.",
            labels=["teacher", "replica"],
        )
        for teacher, load in self._loads:
            inflight.add_metric([teacher, load.replica.client.label], load.sequences)
            target.add_metric([teacher, load.replica.client.label], load.controller.target)
        yield inflight
        yield target


class ReplicaCollector(Collector):
    """Each replica's health and rotation as the teacher registry last saw them."""

    def __init__(self, registry: TeacherRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "distillery_replica_healthy", "1 while a replica answers its health check.", labels=["teacher", "replica"]
        )
        serving = GaugeMetricFamily(
            "distillery_replica_in_rotation",
            "1 while a replica is healthy and matches its teacher's identity (gets work).",
            labels=["teacher", "replica"],
        )
        for teacher, replicas in self._registry.replicas.items():
            for replica in replicas:
                display = replica.client.label
                up.add_metric([teacher, display], float(replica.healthy))
                serving.add_metric([teacher, display], float(self._registry.in_rotation(teacher, replica)))
        yield up
        yield serving


def register(collector: Collector) -> Collector:
    REGISTRY.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    with contextlib.suppress(KeyError):  # never registered, or already gone
        REGISTRY.unregister(collector)
