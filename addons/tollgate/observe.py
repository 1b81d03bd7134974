"""Which observers (metrics, alerts) listen to the engine, chosen from the options."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine, Options


def attach_observers(engine: "Engine", options: "Options") -> None:
    """Attach the metrics exporter and the alert dispatcher the options ask for."""
    return None
