"""Events, fan-out to subscribers, replay buffer and sinks."""
