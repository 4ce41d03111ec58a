"""`GET /metrics`: the station's Prometheus registry, built on `prometheus_client`.

Each station owns one `CollectorRegistry` (no module-level global, so two stations in one
process never share a count). What happened (deliveries, turns, tokens, connectivity
transitions, model loads) is counted into the library's counters, gauges and histograms as it
happens; what is read at scrape time (the queue depth, the connectivity state, the oldest pending
task's age) comes from a custom collector over the snapshot the status op takes just before
rendering. The library's process_* and python_* collectors come along. No background work: a
scrape renders, nothing else ever runs, so an idle agent stays idle.

The registry is built on first use, and prometheus_client imported then (about 40 ms and 31
modules): a command run without an agent builds a station, and never counts or scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, get_args

from waystation import __version__
from waystation.config import ROUTE_NAMES
from waystation.contract import ConnectivityState, DeliveryOutcome

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import Metric

DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TURN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Scrape:
    """What the status op read from the store and the monitor for this scrape."""

    queue: Mapping[str, int] = field(default_factory=dict)
    connectivity: str = "unknown"
    oldest_pending_s: float = 0.0
    # Local models' n-gram draft tokens since they loaded: (drafted, accepted).
    drafts: tuple[int, int] = (0, 0)
    # Parked turns' model state: bytes on disk (every model's), prefixes saved and restored since
    # the local models loaded.
    saved_state: tuple[int, int, int] = (0, 0, 0)


def scrape_time_families(scrape: Scrape) -> Iterator[Metric]:
    """The gauges whose values are the station's state at scrape time, not counts kept."""
    from prometheus_client.core import GaugeMetricFamily

    queue = GaugeMetricFamily(
        "waystation_queue_tasks", "Tasks in the deferred queue by state.", labels=["state"]
    )
    for state, n in scrape.queue.items():
        queue.add_metric([state], n)
    yield queue
    connectivity = GaugeMetricFamily(
        "waystation_connectivity_state", "1 for the monitor's current connectivity state.", labels=["state"]
    )
    for known in get_args(ConnectivityState):
        connectivity.add_metric([known], int(known == scrape.connectivity))
    yield connectivity
    yield GaugeMetricFamily(
        "waystation_queue_oldest_pending_age_seconds",
        "How long the oldest pending task has waited (0 when none).",
        value=scrape.oldest_pending_s,
    )
    yield _by_kind(
        "waystation_model_draft_tokens",
        "Draft tokens of n-gram speculation ([model] speculative) since the local models loaded:"
        " drafted, and accepted (kept as the model's own pick).",
        {"drafted": scrape.drafts[0], "accepted": scrape.drafts[1]},
    )
    yield GaugeMetricFamily(
        "waystation_model_saved_state_bytes",
        "Bytes of parked turns' model state on disk ([model] saved_state_mb), every model's.",
        value=scrape.saved_state[0],
    )
    yield _by_kind(
        "waystation_model_saved_states",
        "Prompt prefixes whose model state was saved to disk, and restored from it, since the"
        " local models loaded.",
        {"saved": scrape.saved_state[1], "restored": scrape.saved_state[2]},
    )


def _by_kind(name: str, documentation: str, values: Mapping[str, float]) -> Metric:
    """A gauge family with one sample per `kind` label."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, documentation, labels=["kind"])
    for kind, value in values.items():
        family.add_metric([kind], value)
    return family


@dataclass
class Families:
    """The registry and the families counted into it."""

    registry: CollectorRegistry
    deliveries: Counter
    delivery_retries: Counter
    connectivity_transitions: Counter
    turns: Counter
    tokens: Counter
    model_load_seconds: Gauge
    model_loads: Counter
    delivery_seconds: Histogram
    turn_seconds: Histogram


def build_families(metrics: Metrics) -> Families:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.registry import Collector

    # The families exposed since before prometheus_client have no `_created` series; the
    # library's switch for them is process-wide (a flag read at scrape), and waystation is its
    # only user in the process.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

    class ScrapeTime(Collector):
        def describe(self) -> Iterator[Metric]:
            return scrape_time_families(Scrape())

        def collect(self) -> Iterator[Metric]:
            return scrape_time_families(metrics.scrape)

    registry = CollectorRegistry()
    registry.register(ScrapeTime())
    families = Families(
        registry,
        deliveries=Counter(
            "waystation_deliveries",
            "Deliveries of queued tasks since the agent started, by outcome "
            "(done, retry, dead, unreachable).",
            ["outcome"],
            registry=registry,
        ),
        delivery_retries=Counter(
            "waystation_delivery_retries",
            "Deliveries that repeated an earlier attempt of the same task.",
            registry=registry,
        ),
        connectivity_transitions=Counter(
            "waystation_connectivity_transitions",
            "Connectivity state changes since the agent started, by the state entered.",
            ["to"],
            registry=registry,
        ),
        turns=Counter(
            "waystation_turns",
            "Turns finished since the agent started, by route and status.",
            ["route", "status"],
            registry=registry,
        ),
        tokens=Counter(
            "waystation_tokens",
            "Model tokens used by turns, by route and kind (prompt, completion).",
            ["route", "kind"],
            registry=registry,
        ),
        model_load_seconds=Gauge(
            "waystation_model_load_seconds", "How long the last model load took.", registry=registry
        ),
        model_loads=Counter(
            "waystation_model_loads", "Model loads since the agent started.", registry=registry
        ),
        delivery_seconds=Histogram(
            "waystation_delivery_duration_seconds",
            "How long deliveries took, answer or not.",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        ),
        turn_seconds=Histogram(
            "waystation_turn_duration_seconds",
            "How long turns took, from start to receipt.",
            buckets=TURN_BUCKETS,
            registry=registry,
        ),
    )
    build_info = Gauge(
        "waystation_build_info", "1, labelled with the running version.", ["version"], registry=registry
    )
    build_info.labels(version=__version__).set(1)
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    for outcome in get_args(DeliveryOutcome):
        families.deliveries.labels(outcome=outcome)
    for state in get_args(ConnectivityState):
        families.connectivity_transitions.labels(to=state)
    return families


class Metrics:
    """Every family the agent exposes, all listed from the first scrape on."""

    def __init__(self) -> None:
        self.scrape = Scrape()
        self._families: Families | None = None

    @property
    def families(self) -> Families:
        if self._families is None:
            self._families = build_families(self)
        return self._families

    # --- what the agent reports -----------------------------------------------------------------

    def delivered(self, outcome: str, repeated: bool, seconds: float) -> None:
        self.families.deliveries.labels(outcome=outcome).inc()
        self.families.delivery_seconds.observe(seconds)
        if repeated:
            self.families.delivery_retries.inc()

    def turn_finished(self, route: str, status: str, prompt_tokens: int, completion_tokens: int) -> None:
        # A refused turn may name any route at all: label it "unknown" so clients cannot grow
        # the label set (and the agent's memory) without bound.
        route = route if route in ROUTE_NAMES else "unknown"
        self.families.turns.labels(route=route, status=status).inc()
        self.families.tokens.labels(route=route, kind="prompt").inc(prompt_tokens)
        self.families.tokens.labels(route=route, kind="completion").inc(completion_tokens)

    def turn_took(self, seconds: float) -> None:
        self.families.turn_seconds.observe(seconds)

    def connectivity_entered(self, state: str) -> None:
        self.families.connectivity_transitions.labels(to=state).inc()

    def model_loaded(self, seconds: float) -> None:
        self.families.model_load_seconds.set(seconds)
        self.families.model_loads.inc()

    def render(self, scrape: Scrape | None = None) -> str:
        """The exposition text (format 0.0.4), the scrape-time gauges from `scrape` when given."""
        from prometheus_client import generate_latest

        if scrape is not None:
            self.scrape = scrape
        return generate_latest(self.families.registry).decode()


def render_metrics(
    queue: Mapping[str, int],
    connectivity: str,
    metrics: Metrics | None = None,
    oldest_pending_s: float = 0.0,
    drafts: tuple[int, int] = (0, 0),
    saved_state: tuple[int, int, int] = (0, 0, 0),
) -> str:
    """The exposition text, with the scrape-time gauges (queue depth, connectivity, the oldest
    pending task's age, draft tokens, saved model state) read from what the caller just took."""
    scrape = Scrape(queue, connectivity, oldest_pending_s, drafts, saved_state)
    return (metrics or Metrics()).render(scrape)
