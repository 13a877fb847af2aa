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
from crossmodald.bus.jsonl import JsonlSink
from crossmodald.bus.sinks import Sink, SinkStats

__all__ = [
    "SCHEMA_VERSION",
    "BusStats",
    "Envelope",
    "Event",
    "EventBus",
    "EventFilter",
    "JsonlSink",
    "Phase",
    "Sink",
    "SinkStats",
    "SubscriberClosed",
    "SubscriberStats",
    "Subscription",
    "event_schema",
]
