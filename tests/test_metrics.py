"""`GET /metrics` read by Prometheus' own text parser, from a real agent after real work.

The agent delivers three tasks to a loopback receiver (a 200, a 404, and a 503 with Retry-After
that then succeeds) and runs one turn on the local llama.cpp route; the families must say so.
The registry and renderer also get fast unit tests.
"""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from support.agentproc import Receiver, wait_for
from support.inproc import InProcessAgent, inprocess_agent

from waystation.station.metrics import Metrics, render_metrics

# --- the registry -----------------------------------------------------------------------------------


def parse(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return float(found[0])


def test_every_family_is_listed_before_anything_happened() -> None:
    text = render_metrics({"pending": 0, "done": 0}, "unknown", Metrics())
    families = parse(text)
    # The parser drops a counter's _total suffix from the family name.
    ours = {name: f.type for name, f in families.items() if name.startswith("waystation_")}
    assert ours == {
        "waystation_queue_tasks": "gauge",
        "waystation_deliveries": "counter",
        "waystation_delivery_retries": "counter",
        "waystation_connectivity_state": "gauge",
        "waystation_connectivity_transitions": "counter",
        "waystation_turns": "counter",
        "waystation_tokens": "counter",
        "waystation_model_load_seconds": "gauge",
        "waystation_model_loads": "counter",
        "waystation_delivery_duration_seconds": "histogram",
        "waystation_turn_duration_seconds": "histogram",
        "waystation_build_info": "gauge",
        "waystation_queue_oldest_pending_age_seconds": "gauge",
        "waystation_model_draft_tokens": "gauge",
        "waystation_model_saved_state_bytes": "gauge",
        "waystation_model_saved_states": "gauge",
    }
    for family in families.values():
        assert family.documentation
    # prometheus_client's own collectors come along (process_* where /proc is, python_* always)
    assert "python_info" in families and "python_gc_objects_collected" in families
    if sys.platform == "linux":
        assert families["process_resident_memory_bytes"].type == "gauge"
    assert not [name for name in families if name.endswith("_created")]
    deliveries = families["waystation_deliveries"].samples
    for outcome in ("done", "retry", "dead", "unreachable"):
        assert value(deliveries, "waystation_deliveries_total", outcome=outcome) == 0
    state = families["waystation_connectivity_state"].samples
    assert value(state, "waystation_connectivity_state", state="unknown") == 1
    assert value(state, "waystation_connectivity_state", state="online") == 0
    assert not families["waystation_turns"].samples  # no route has run a turn yet


def test_counts_add_up_and_route_labels_stay_bounded() -> None:
    metrics = Metrics()
    metrics.delivered("done", False, 0.02)
    metrics.delivered("retry", False, 0.3)
    metrics.delivered("done", True, 40.0)
    metrics.turn_finished("nonesuch", "refused", 0, 0)
    metrics.turn_finished("openai", "ok", 10, 3)
    metrics.turn_finished("local", "ok", 5, 2)
    metrics.model_loaded(0.25)
    families = parse(metrics.render())
    deliveries = families["waystation_deliveries"].samples
    assert value(deliveries, "waystation_deliveries_total", outcome="done") == 2
    assert value(deliveries, "waystation_deliveries_total", outcome="retry") == 1
    assert value(families["waystation_delivery_retries"].samples, "waystation_delivery_retries_total") == 1
    tokens = families["waystation_tokens"].samples
    assert value(tokens, "waystation_tokens_total", route="openai", kind="prompt") == 10
    turns = families["waystation_turns"].samples
    assert value(turns, "waystation_turns_total", route="unknown", status="refused") == 1
    assert value(tokens, "waystation_tokens_total", route="local", kind="completion") == 2
    assert value(families["waystation_model_load_seconds"].samples, "waystation_model_load_seconds") == 0.25
    assert value(families["waystation_model_loads"].samples, "waystation_model_loads_total") == 1
    took = families["waystation_delivery_duration_seconds"].samples
    assert value(took, "waystation_delivery_duration_seconds_count") == 3
    assert value(took, "waystation_delivery_duration_seconds_bucket", le="0.025") == 1
    assert value(took, "waystation_delivery_duration_seconds_bucket", le="0.5") == 2
    assert value(took, "waystation_delivery_duration_seconds_bucket", le="+Inf") == 3
    assert value(took, "waystation_delivery_duration_seconds_sum") == 40.32


def test_label_values_are_escaped() -> None:
    text = render_metrics({'we"ird\\state\n': 7}, "online", Metrics())
    (sample,) = parse(text)["waystation_queue_tasks"].samples
    assert sample.labels == {"state": 'we"ird\\state\n'} and sample.value == 7


def test_registry_refuses_misuse() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="label"):
        metrics.families.turns.labels(route="local").inc()
    with pytest.raises(ValueError, match="non-negative"):
        metrics.families.deliveries.labels(outcome="done").inc(-1)


def test_each_station_counts_alone() -> None:
    one, two = Metrics(), Metrics()
    one.delivered("done", False, 0.1)
    counted = parse(two.render())["waystation_deliveries"].samples
    assert value(counted, "waystation_deliveries_total", outcome="done") == 0


# --- a real agent ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recv() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def agent(recv: Receiver) -> Iterator[InProcessAgent]:
    with inprocess_agent(
        {
            "WAYSTATION_CONNECTIVITY__MODE": "offline",
            "WAYSTATION_CONNECTIVITY__PROBE_URL": recv.url("/generate_204"),
            "WAYSTATION_QUEUE__BACKOFF_BASE_S": "0.5",
        }
    ) as a:
        yield a


def scrape(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_metrics_reflect_deliveries_turns_and_connectivity(agent: InProcessAgent, recv: Receiver) -> None:
    run = uuid.uuid4().hex[:8]
    with agent.client(timeout=120) as client:
        before = scrape(client)
        assert value(
            before["waystation_connectivity_state"].samples, "waystation_connectivity_state", state="offline"
        )
        assert (
            value(before["waystation_deliveries"].samples, "waystation_deliveries_total", outcome="done") == 0
        )

        ids = []
        for path in (f"/ok/{run}", f"/status/404/{run}", f"/flaky/1/{run}"):
            made = client.post(
                "/v1/tasks", json={"tool": "http_request", "args": {"method": "POST", "url": recv.url(path)}}
            )
            assert made.status_code == 201, made.text
            ids.append(made.json()["id"])
        parked = scrape(client)
        assert value(parked["waystation_queue_tasks"].samples, "waystation_queue_tasks", state="pending") == 3

        agent.set_mode("online")

        def settled() -> bool:
            states = [client.get(f"/v1/tasks/{i}").json()["state"] for i in ids]
            return states == ["done", "dead", "done"]

        wait_for(settled, timeout=20, what="the three tasks to settle")

        answer = client.post(
            "/v1/turns",
            json={"prompt": "Say hello.", "route": "local", "tool_choice": "none", "max_tokens": 8},
        )
        assert answer.status_code == 200, answer.text
        turn = answer.json()
        receipt = client.get(f"/v1/receipts/{turn['receipt_id']}").json()
        agent.set_mode("offline")

        after = scrape(client)

    deliveries = after["waystation_deliveries"].samples
    assert value(deliveries, "waystation_deliveries_total", outcome="done") == 2
    assert value(deliveries, "waystation_deliveries_total", outcome="dead") == 1
    assert value(deliveries, "waystation_deliveries_total", outcome="retry") == 1
    assert value(deliveries, "waystation_deliveries_total", outcome="unreachable") == 0
    assert value(after["waystation_delivery_retries"].samples, "waystation_delivery_retries_total") == 1
    assert len(recv.hits(f"/flaky/1/{run}")) == 2

    queue = after["waystation_queue_tasks"].samples
    assert value(queue, "waystation_queue_tasks", state="pending") == 0
    assert value(queue, "waystation_queue_tasks", state="done") == 2
    assert value(queue, "waystation_queue_tasks", state="dead") == 1

    # forced offline -> online -> offline
    transitions = after["waystation_connectivity_transitions"].samples
    assert value(transitions, "waystation_connectivity_transitions_total", to="online") == 1
    assert value(transitions, "waystation_connectivity_transitions_total", to="offline") == 1
    state = after["waystation_connectivity_state"].samples
    assert value(state, "waystation_connectivity_state", state="offline") == 1
    assert value(state, "waystation_connectivity_state", state="online") == 0

    status = turn["status"]
    assert (
        value(after["waystation_turns"].samples, "waystation_turns_total", route="local", status=status) == 1
    )
    usage = receipt["usage"]
    assert usage["completion_tokens"] > 0
    tokens = after["waystation_tokens"].samples
    assert value(tokens, "waystation_tokens_total", route="local", kind="prompt") == usage["prompt_tokens"]
    assert (
        value(tokens, "waystation_tokens_total", route="local", kind="completion")
        == usage["completion_tokens"]
    )

    assert value(after["waystation_model_loads"].samples, "waystation_model_loads_total") == 1
    load_s = value(after["waystation_model_load_seconds"].samples, "waystation_model_load_seconds")
    assert math.isclose(load_s, receipt["cold_load_ms"] / 1000) and load_s > 0
