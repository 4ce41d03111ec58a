"""`GET /metrics`: a small in-process registry of counters and gauges, and its Prometheus text.

The agent counts what happened (deliveries, turns, tokens, connectivity transitions, model loads)
into one `Metrics` object that lives as long as the agent; values read at scrape time (the queue
depth, the connectivity state) are set just before rendering. No background work: a scrape
renders, nothing else ever runs, so an idle agent stays idle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from waystation import __version__
from waystation.config import ROUTE_NAMES

CONNECTIVITY_STATES = ("online", "offline", "portal", "unknown")

Kind = Literal["counter", "gauge"]
Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric family: a name, its help, its type, and a value per label set."""

    name: str
    help: str
    kind: Kind
    label_names: tuple[str, ...] = ()
    samples: dict[Labels, float] = field(default_factory=dict)

    def _key(self, labels: Mapping[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, not {tuple(labels)}")
        return tuple((name, str(labels[name])) for name in self.label_names)

    def inc(self, amount: float = 1, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        key = self._key(labels)
        self.samples[key] = self.samples.get(key, 0) + amount

    def set(self, value: float, **labels: str) -> None:
        if self.kind != "gauge":
            raise ValueError(f"{self.name} is a counter; only gauges are set")
        self.samples[self._key(labels)] = value

    def value(self, **labels: str) -> float:
        return self.samples.get(self._key(labels), 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in sorted(self.samples.items()):
            lines.append(f"{self.name}{_labels(labels)} {_number(value)}")
        return lines


@dataclass
class Histogram:
    """Durations in seconds as Prometheus histograms them: cumulative buckets, a sum, a count."""

    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
        self.total += seconds
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} histogram"]
        for bound, n in zip(self.buckets, self.counts, strict=True):
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {n}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {_number(self.total)}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TURN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Every family the agent exposes, created up front so a scrape always lists all of them."""

    def __init__(self) -> None:
        self._families: dict[str, Family | Histogram] = {}
        self.queue_tasks = self._add(
            "waystation_queue_tasks", "Tasks in the deferred queue by state.", "gauge", "state"
        )
        self.deliveries = self._add(
            "waystation_deliveries_total",
            "Deliveries of queued tasks since the agent started, by outcome "
            "(done, retry, dead, unreachable).",
            "counter",
            "outcome",
        )
        self.delivery_retries = self._add(
            "waystation_delivery_retries_total",
            "Deliveries that repeated an earlier attempt of the same task.",
            "counter",
        )
        self.connectivity_state = self._add(
            "waystation_connectivity_state",
            "1 for the monitor's current connectivity state.",
            "gauge",
            "state",
        )
        self.connectivity_transitions = self._add(
            "waystation_connectivity_transitions_total",
            "Connectivity state changes since the agent started, by the state entered.",
            "counter",
            "to",
        )
        self.turns = self._add(
            "waystation_turns_total",
            "Turns finished since the agent started, by route and status.",
            "counter",
            "route",
            "status",
        )
        self.tokens = self._add(
            "waystation_tokens_total",
            "Model tokens used by turns, by route and kind (prompt, completion).",
            "counter",
            "route",
            "kind",
        )
        self.model_load_seconds = self._add(
            "waystation_model_load_seconds", "How long the last model load took.", "gauge"
        )
        self.model_loads = self._add(
            "waystation_model_loads_total", "Model loads since the agent started.", "counter"
        )
        self.delivery_seconds = self._histogram(
            "waystation_delivery_duration_seconds",
            "How long deliveries took, answer or not.",
            DELIVERY_BUCKETS,
        )
        self.turn_seconds = self._histogram(
            "waystation_turn_duration_seconds", "How long turns took, from start to receipt.", TURN_BUCKETS
        )
        self.build_info = self._add(
            "waystation_build_info", "1, labelled with the running version.", "gauge", "version"
        )
        self.oldest_pending = self._add(
            "waystation_queue_oldest_pending_age_seconds",
            "How long the oldest pending task has waited (0 when none).",
            "gauge",
        )
        for outcome in ("done", "retry", "dead", "unreachable"):
            self.deliveries.inc(0, outcome=outcome)
        for state in CONNECTIVITY_STATES:
            self.connectivity_transitions.inc(0, to=state)
        self.delivery_retries.inc(0)
        self.model_loads.inc(0)
        self.build_info.set(1, version=__version__)

    def _add(self, name: str, help: str, kind: Kind, *label_names: str) -> Family:
        family = Family(name, help, kind, label_names)
        self._families[name] = family
        return family

    def _histogram(self, name: str, help: str, buckets: tuple[float, ...]) -> Histogram:
        histogram = Histogram(name, help, buckets)
        self._families[name] = histogram
        return histogram

    def families(self) -> list[Family | Histogram]:
        return list(self._families.values())

    # --- what the agent reports -----------------------------------------------------------------

    def observe_queue(self, counts: Mapping[str, int]) -> None:
        for state, n in counts.items():
            self.queue_tasks.set(n, state=state)

    def observe_connectivity(self, state: str) -> None:
        for known in CONNECTIVITY_STATES:
            self.connectivity_state.set(int(known == state), state=known)

    def delivered(self, outcome: str, repeated: bool, seconds: float) -> None:
        self.deliveries.inc(outcome=outcome)
        self.delivery_seconds.observe(seconds)
        if repeated:
            self.delivery_retries.inc()

    def turn_finished(self, route: str, status: str, prompt_tokens: int, completion_tokens: int) -> None:
        # A refused turn may name any route at all: label it "unknown" so clients cannot grow
        # the label set (and the agent's memory) without bound.
        route = route if route in ROUTE_NAMES else "unknown"
        self.turns.inc(route=route, status=status)
        self.tokens.inc(prompt_tokens, route=route, kind="prompt")
        self.tokens.inc(completion_tokens, route=route, kind="completion")

    def model_loaded(self, seconds: float) -> None:
        self.model_load_seconds.set(seconds)
        self.model_loads.inc()

    def render(self) -> str:
        lines = [line for family in self.families() for line in family.render()]
        return "\n".join(lines) + "\n"


def render_metrics(
    queue: Mapping[str, int], connectivity: str, metrics: Metrics | None = None, oldest_pending_s: float = 0.0
) -> str:
    """The exposition text, with the scrape-time gauges (queue depth, connectivity, the oldest
    pending task's age) brought up to date."""
    metrics = metrics or Metrics()
    metrics.observe_queue(queue)
    metrics.observe_connectivity(connectivity)
    metrics.oldest_pending.set(oldest_pending_s)
    return metrics.render()


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape_value(value)}"' for name, value in labels)
    return "{" + inner + "}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
