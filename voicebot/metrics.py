"""Prometheus metrics, one registry per application (so tests can run several servers in one process)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class PoolStats(Protocol):
    """What the metrics read of a provider client's pool (``voicebot.providers.pools.PoolUse`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def limit(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def waited(self) -> int: ...


RejectReason = Literal[
    "capacity", "draining", "not_configured", "bad_signature", "bad_token", "no_start", "bad_request"
]

# Seconds; fine-grained at the low end where the server's own hops live.
_HOP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_TURN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the event loop
        return 0.0


class _PoolCollector(Collector):
    """The provider clients' pools (:mod:`voicebot.providers.pools`), read at scrape time."""

    def __init__(self) -> None:
        self.pools: Sequence[PoolStats] = ()

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily(
            "voicebot_provider_pool_limit", "Connections a provider client may open", labels=["pool"]
        )
        in_use = GaugeMetricFamily(
            "voicebot_provider_pool_in_use", "Provider requests holding a pooled connection", labels=["pool"]
        )
        waiting = GaugeMetricFamily(
            "voicebot_provider_pool_waiting", "Provider requests waiting for a pooled connection", labels=["pool"]
        )
        waited = CounterMetricFamily(
            "voicebot_provider_pool_waits", "Provider requests that waited for a pooled connection", labels=["pool"]
        )
        for pool in self.pools:
            limit.add_metric([pool.name], pool.limit)
            in_use.add_metric([pool.name], pool.in_use)
            waiting.add_metric([pool.name], pool.waiting)
            waited.add_metric([pool.name], pool.waited)
        yield from (limit, in_use, waiting, waited)


class Metrics:
    """The server's counters, gauges and latency histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.active_calls = Gauge("voicebot_active_calls", "Calls with an open media stream", registry=self.registry)
        self.calls_total = Counter(
            "voicebot_calls", "Media streams accepted, by how they ended", ["end_reason"], registry=self.registry
        )
        self.calls_rejected = Counter(
            "voicebot_calls_rejected", "Calls refused, by reason", ["reason"], registry=self.registry
        )
        self.turn_stage = Histogram(
            "voicebot_turn_stage_seconds",
            "Time from the end of the caller's speech to each stage of the bot's reply",
            ["stage"],
            buckets=_TURN_BUCKETS,
            registry=self.registry,
        )
        self.server_hop = Histogram(
            "voicebot_server_hop_seconds",
            "Time the server itself adds on the critical path, per hop",
            ["hop"],
            buckets=_HOP_BUCKETS,
            registry=self.registry,
        )
        self.speculations = Counter(
            "voicebot_speculations",
            "Preemptive (speculative) replies, by outcome: started, adopted, discarded",
            ["outcome"],
            registry=self.registry,
        )
        self.speculation_gain = Histogram(
            "voicebot_speculation_gain_seconds",
            "Per adopted speculation: how long its LLM stream had been running when the turn was confirmed",
            buckets=_HOP_BUCKETS,
            registry=self.registry,
        )
        for outcome in ("started", "adopted", "discarded"):
            self.speculations.labels(outcome)
        self.barge_ins = Counter("voicebot_barge_ins", "Barge-ins, by outcome", ["outcome"], registry=self.registry)
        self.provider_errors = Counter(
            "voicebot_provider_errors", "Provider failures", ["provider", "kind"], registry=self.registry
        )
        self.protocol_errors = Counter(
            "voicebot_protocol_errors", "Malformed or unexpected Twilio messages", ["kind"], registry=self.registry
        )
        self.tool_calls = Counter(
            "voicebot_tool_calls", "Tool calls, by tool and outcome", ["tool", "outcome"], registry=self.registry
        )
        self.tool_seconds = Histogram(
            "voicebot_tool_seconds",
            "How long a tool call took (answer, failure or timeout), per tool",
            ["tool"],
            buckets=_TURN_BUCKETS,
            registry=self.registry,
        )
        self.twilio_status = Counter(
            "voicebot_twilio_status_callbacks",
            "Twilio call status callbacks, by CallStatus (forbidden: bad or missing signature)",
            ["status"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "voicebot_event_loop_lag_seconds",
            "How late the event loop ran a timer due every LOOP_LAG_PERIOD_S (a busy loop delays every call)",
            buckets=_HOP_BUCKETS,
            registry=self.registry,
        )
        self.gc_pause = Histogram(
            "voicebot_gc_pause_seconds",
            "How long each garbage collection stopped the process (every call waits), by generation",
            ["generation"],
            buckets=_HOP_BUCKETS,
            registry=self.registry,
        )
        self.tasks = Gauge(
            "voicebot_asyncio_tasks", "asyncio tasks alive in this process (leak check)", registry=self.registry
        )
        self.tasks.set_function(_task_count)
        for reason in get_args(RejectReason):
            self.calls_rejected.labels(reason)
        self._pools = _PoolCollector()
        self.registry.register(self._pools)

    def watch_pools(self, pools: Sequence[PoolStats]) -> None:
        """Export these provider pools' limit, use and waits from now on."""
        self._pools.pools = pools

    def reject(self, reason: RejectReason) -> None:
        self.calls_rejected.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
