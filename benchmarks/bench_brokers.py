"""Benchmark: events per second through the broker sinks, and publish-to-acknowledgement latency.

Starts ``nats-server`` (JetStream, file storage) and ``mosquitto`` on loopback ports of their
own, and measures in this process, on one event loop, as the daemon runs them:

- burst: ``--events`` ``sync.offset``-sized events published on the bus as fast as the loop
  allows; events/s = events / (first publish .. last acknowledgement), and the ack latency
  (a publish handed to the client .. the broker's acknowledgement: JetStream's PubAck, MQTT's
  PUBACK at QoS 1) p50/p99 over every event;
- paced: ``--rate`` events/s for ``--seconds``, the latency a live daemon sees (no queue of
  its own in front of the window);
- baseline in the same run: the JSONL sink (one file, no fsync) under the same burst, and each
  sink's events/s as a ratio of it.

    python benchmarks/bench_brokers.py [--events 20000] [--rate 500] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "bus"))

from brokerkit import BrokerProcess

from crossmodald.bus import Event, EventBus
from crossmodald.bus.broker import BrokerSink
from crossmodald.bus.jsonl import JsonlSink, JsonlSinkConfig
from crossmodald.bus.mqtt_sink import MqttSinkConfig, MqttSinkFactory
from crossmodald.bus.nats_sink import NatsSinkConfig, NatsSinkFactory
from crossmodald.bus.sinks import Sink


def event(n: int, stream: str) -> Event:
    # The size of a real avsync sync.offset (about 450 bytes of JSON).
    return Event(
        "sync.offset",
        stream,
        n * 500_000_000,
        n * 500_000_000 + 2_000_000_000,
        {
            "audio_lead_ms": 39.95976544793234,
            "confidence": 0.7,
            "method": "flash",
            "smoothed_audio_lead_ms": 39.95976544793242,
            "drift_ppm": None,
            "drift_uncertainty_ppm": None,
            "reason": None,
            "pairs": [
                {
                    "video_onset_ns": 1700000000,
                    "audio_onset_ns": 1660040235,
                    "audio_lead_ms": 39.95976544793234,
                }
            ],
        },
        closed_ns=time.monotonic_ns(),
    )


def new_bus() -> EventBus:
    return EventBus(replay_size=4096, subscriber_queue=1_000_000, slow_subscriber_s=600.0)


def keep_every_ack(sink: Sink) -> None:
    """The benchmark's quantiles are over every acknowledgement, not the recent 1024."""
    if isinstance(sink, BrokerSink):
        sink._acks = deque()  # type: ignore[assignment]


def acks_ms(sink: Sink) -> list[float]:
    if isinstance(sink, BrokerSink):
        return sorted(1000 * s for s in sink._acks)
    return []


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


async def wait_connected(sink: Sink) -> None:
    async with asyncio.timeout(20):
        while sink.stats.connected is False:  # noqa: ASYNC110 - a benchmark watches a flag
            await asyncio.sleep(0.02)


async def burst(sink: Sink, events: int) -> dict[str, Any]:
    bus = new_bus()
    task = asyncio.create_task(sink.run(bus, 0))
    await asyncio.sleep(0.05)
    await wait_connected(sink)
    keep_every_ack(sink)
    started = time.perf_counter()
    for n in range(1, events + 1):
        bus.publish(event(n, f"cam{n % 100}"))
        if n % 256 == 0:
            await asyncio.sleep(0)  # let the sink work, as the daemon's loop would
    while sink.stats.written < events:
        await sink.flush()
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    lat = acks_ms(sink)
    stats = sink.stats
    await sink.aclose()
    await task
    return {
        "events_per_s": events / elapsed,
        "p50_ms": quantile(lat, 0.5),
        "p99_ms": quantile(lat, 0.99),
        "dropped": stats.dropped,
    }


async def paced(sink: Sink, rate: float, seconds: float) -> dict[str, Any]:
    bus = new_bus()
    task = asyncio.create_task(sink.run(bus, 0))
    await asyncio.sleep(0.05)
    await wait_connected(sink)
    keep_every_ack(sink)
    total = int(rate * seconds)
    started = time.perf_counter()
    for n in range(1, total + 1):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        bus.publish(event(n, f"cam{n % 100}"))
    await sink.flush()
    lat = acks_ms(sink)
    stats = sink.stats
    await sink.aclose()
    await task
    return {
        "p50_ms": quantile(lat, 0.5),
        "p99_ms": quantile(lat, 0.99),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "written": stats.written,
        "dropped": stats.dropped,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-brokers-") as tmp:
        folder = Path(tmp)
        nats_server = BrokerProcess("nats", folder / "nats")
        mqtt_server = BrokerProcess("mqtt", folder / "mqtt")
        nats_server.start()
        mqtt_server.start()
        try:
            common: dict[str, Any] = {"daemon": "bench", "buffer": 1_000_000}

            def jsonl() -> Sink:
                return JsonlSink(JsonlSinkConfig(type="jsonl", path=folder / "events.jsonl"))

            def nats() -> Sink:
                return NatsSinkFactory.create(
                    NatsSinkConfig(type="nats", url=nats_server.url, **common)
                )

            def mqtt() -> Sink:
                return MqttSinkFactory.create(
                    MqttSinkConfig(type="mqtt", url=mqtt_server.url, homeassistant=False, **common)
                )

            results: dict[str, dict[str, Any]] = {}
            for name, make in (("jsonl", jsonl), ("nats", nats), ("mqtt", mqtt)):
                results[name] = await burst(make(), args.events)
                if name != "jsonl":
                    results[name]["paced"] = await paced(make(), args.rate, args.seconds)
        finally:
            nats_server.stop()
            mqtt_server.stop()
    base = results["jsonl"]["events_per_s"]
    print(
        f"burst of {args.events} events (~450 B JSON each); paced at {args.rate:g}/s for {args.seconds:g} s"
    )
    print(
        f"{'sink':<6} {'events/s':>10} {'vs jsonl':>9} {'ack p50':>9} {'ack p99':>9} | paced: {'p50':>7} {'p99':>7}"
    )
    for name, r in results.items():
        p = r.get("paced")
        line = f"{name:<6} {r['events_per_s']:>10.0f} {r['events_per_s'] / base:>8.2f}x"
        if p is None:
            line += f" {'-':>9} {'-':>9}"  # a file has no acknowledgement
        else:
            line += f" {r['p50_ms']:>7.2f}ms {r['p99_ms']:>7.2f}ms"
        if p is not None:
            line += f" |        {p['p50_ms']:>5.2f}ms {p['p99_ms']:>5.2f}ms"
            if r["dropped"] or p["dropped"]:
                line += f"  (dropped {r['dropped']} / {p['dropped']})"
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
