"""Events, fan-out to subscribers, replay buffer and sinks."""

from crossmodald.bus.bus import (
    BusStats,
    EventBus,
    EventFilter,
    SubscriberClosed,
    SubscriberStats,
    Subscription,
    event_schema,
)
from crossmodald.bus.events import SCHEMA_VERSION, Envelope, Event, Phase
from crossmodald.bus.sinks import JsonlSink, SinkStats

__all__ = [
    "SCHEMA_VERSION",
    "BusStats",
    "Envelope",
    "Event",
    "EventBus",
    "EventFilter",
    "JsonlSink",
    "Phase",
    "SinkStats",
    "SubscriberClosed",
    "SubscriberStats",
    "Subscription",
    "event_schema",
]
