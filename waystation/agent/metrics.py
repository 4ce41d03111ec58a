"""`GET /metrics` in the Prometheus text exposition format."""

from __future__ import annotations

from collections.abc import Mapping

CONNECTIVITY_STATES = ("online", "offline", "portal", "unknown")


def render_metrics(queue: Mapping[str, int], connectivity: str, deliveries: int) -> str:
    lines = [
        "# HELP waystation_queue_tasks Tasks in the deferred queue by state.",
        "# TYPE waystation_queue_tasks gauge",
        *(f'waystation_queue_tasks{{state="{state}"}} {n}' for state, n in sorted(queue.items())),
        "# HELP waystation_connectivity_state 1 for the monitor's current connectivity state.",
        "# TYPE waystation_connectivity_state gauge",
        *(
            f'waystation_connectivity_state{{state="{state}"}} {int(state == connectivity)}'
            for state in CONNECTIVITY_STATES
        ),
        "# HELP waystation_deliveries_total Deliveries attempted since the agent started.",
        "# TYPE waystation_deliveries_total counter",
        f"waystation_deliveries_total {deliveries}",
    ]
    return "\n".join(lines) + "\n"
