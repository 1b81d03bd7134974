"""Which observers (metrics, alerts) listen to the engine, chosen from the options.

Both are always attached: counters cost little and alerts need no option (the policy
names the webhooks). Only the /metrics listener depends on `budget_metrics_port`.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from .alerts import AlertWatcher, Delivery, SentAlerts
from .metrics import Metrics

if TYPE_CHECKING:
    from .engine import Engine, Options


def alerts_path(db: Path) -> Path:
    """Where delivered alerts are recorded: beside the DuckDB file."""
    return Path(f"{db}.alerts")


def attach_observers(engine: "Engine", options: "Options") -> None:
    """Attach the metrics exporter and the alert dispatcher the options ask for."""
    metrics = Metrics(engine, CollectorRegistry())
    engine.observers.append(metrics)
    if options.budget_metrics_port:
        metrics.serve(
            options.budget_metrics_host or "127.0.0.1", options.budget_metrics_port
        )

    sent = SentAlerts(alerts_path(engine.ledger.path))
    watcher = AlertWatcher(engine, sent, Delivery(sent, engine.clock.now))
    engine.observers.append(watcher)
    watcher.start()
