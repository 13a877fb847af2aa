"""The HTTP API (events over SSE/WebSocket, streams, health) and its events client."""

from crossmodald.api.app import API_STATE, ApiState, StreamsView, bound_port, build_app, serve
from crossmodald.api.client import (
    EventsClientError,
    FollowedEvent,
    events_command,
    follow_events,
    run_events,
)

__all__ = [
    "API_STATE",
    "ApiState",
    "EventsClientError",
    "FollowedEvent",
    "StreamsView",
    "bound_port",
    "build_app",
    "events_command",
    "follow_events",
    "run_events",
    "serve",
]
