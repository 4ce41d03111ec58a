"""`GET /metrics`: the station's Prometheus registry, built on `prometheus_client`.

Each station owns one `CollectorRegistry` (no module-level global, so two stations in one
process never share a count). What happened (deliveries, turns, tokens, connectivity
transitions, model loads) is counted into the library's counters, gauges and histograms as it
happens; what is read at scrape time (the queue depth, the connectivity state, the oldest pending
task's age) comes from a custom collector over the snapshot the status op takes just before
rendering. The library's process_* and python_* collectors come along. No background work: a
scrape renders, nothing else ever runs, so an idle agent stays idle.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import get_args

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from waystation import __version__
from waystation.config import ROUTE_NAMES
from waystation.contract import ConnectivityState, DeliveryOutcome

DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TURN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# The families exposed since before prometheus_client have no `_created` series; the library's
# switch for them is process-wide (a flag read at scrape), and waystation is its only user here.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass
class Scrape:
    """What the status op read from the store and the monitor for this scrape."""

    queue: Mapping[str, int] = field(default_factory=dict)
    connectivity: str = "unknown"
    oldest_pending_s: float = 0.0


class ScrapeTimeCollector(Collector):
    """The gauges whose values are the station's state at scrape time, not counts kept."""

    def __init__(self) -> None:
        self.scrape = Scrape()

    def describe(self) -> Iterator[Metric]:
        return self._families(Scrape())

    def collect(self) -> Iterator[Metric]:
        return self._families(self.scrape)

    @staticmethod
    def _families(scrape: Scrape) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "waystation_queue_tasks", "Tasks in the deferred queue by state.", labels=["state"]
        )
        for state, n in scrape.queue.items():
            queue.add_metric([state], n)
        yield queue
        connectivity = GaugeMetricFamily(
            "waystation_connectivity_state",
            "1 for the monitor's current connectivity state.",
            labels=["state"],
        )
        for known in get_args(ConnectivityState):
            connectivity.add_metric([known], int(known == scrape.connectivity))
        yield connectivity
        yield GaugeMetricFamily(
            "waystation_queue_oldest_pending_age_seconds",
            "How long the oldest pending task has waited (0 when none).",
            value=scrape.oldest_pending_s,
        )


class Metrics:
    """Every family the agent exposes, created up front so a scrape always lists all of them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.scrape_time = ScrapeTimeCollector()
        registry.register(self.scrape_time)
        self.deliveries = Counter(
            "waystation_deliveries",
            "Deliveries of queued tasks since the agent started, by outcome "
            "(done, retry, dead, unreachable).",
            ["outcome"],
            registry=registry,
        )
        self.delivery_retries = Counter(
            "waystation_delivery_retries",
            "Deliveries that repeated an earlier attempt of the same task.",
            registry=registry,
        )
        self.connectivity_transitions = Counter(
            "waystation_connectivity_transitions",
            "Connectivity state changes since the agent started, by the state entered.",
            ["to"],
            registry=registry,
        )
        self.turns = Counter(
            "waystation_turns",
            "Turns finished since the agent started, by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self.tokens = Counter(
            "waystation_tokens",
            "Model tokens used by turns, by route and kind (prompt, completion).",
            ["route", "kind"],
            registry=registry,
        )
        self.model_load_seconds = Gauge(
            "waystation_model_load_seconds", "How long the last model load took.", registry=registry
        )
        self.model_loads = Counter(
            "waystation_model_loads", "Model loads since the agent started.", registry=registry
        )
        self.delivery_seconds = Histogram(
            "waystation_delivery_duration_seconds",
            "How long deliveries took, answer or not.",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.turn_seconds = Histogram(
            "waystation_turn_duration_seconds",
            "How long turns took, from start to receipt.",
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.build_info = Gauge(
            "waystation_build_info", "1, labelled with the running version.", ["version"], registry=registry
        )
        prometheus_client.ProcessCollector(registry=registry)
        prometheus_client.PlatformCollector(registry=registry)
        prometheus_client.GCCollector(registry=registry)
        for outcome in get_args(DeliveryOutcome):
            self.deliveries.labels(outcome=outcome)
        for state in get_args(ConnectivityState):
            self.connectivity_transitions.labels(to=state)
        self.build_info.labels(version=__version__).set(1)

    # --- what the agent reports -----------------------------------------------------------------

    def delivered(self, outcome: str, repeated: bool, seconds: float) -> None:
        self.deliveries.labels(outcome=outcome).inc()
        self.delivery_seconds.observe(seconds)
        if repeated:
            self.delivery_retries.inc()

    def turn_finished(self, route: str, status: str, prompt_tokens: int, completion_tokens: int) -> None:
        # A refused turn may name any route at all: label it "unknown" so clients cannot grow
        # the label set (and the agent's memory) without bound.
        route = route if route in ROUTE_NAMES else "unknown"
        self.turns.labels(route=route, status=status).inc()
        self.tokens.labels(route=route, kind="prompt").inc(prompt_tokens)
        self.tokens.labels(route=route, kind="completion").inc(completion_tokens)

    def connectivity_entered(self, state: str) -> None:
        self.connectivity_transitions.labels(to=state).inc()

    def model_loaded(self, seconds: float) -> None:
        self.model_load_seconds.set(seconds)
        self.model_loads.inc()

    def render(self, scrape: Scrape | None = None) -> str:
        if scrape is not None:
            self.scrape_time.scrape = scrape
        return prometheus_client.generate_latest(self.registry).decode()


def render_metrics(
    queue: Mapping[str, int], connectivity: str, metrics: Metrics | None = None, oldest_pending_s: float = 0.0
) -> str:
    """The exposition text (format 0.0.4), with the scrape-time gauges (queue depth,
    connectivity, the oldest pending task's age) read from what the caller just took."""
    return (metrics or Metrics()).render(Scrape(queue, connectivity, oldest_pending_s))
