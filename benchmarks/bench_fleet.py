"""Benchmark: fleet failover. Three daemons, twelve pattern sources, one ``nats-server -js``.

Starts a real NATS server with JetStream on a free loopback port and three ``crossmodald run``
processes in fleet mode (``[fleet]``, default lease TTL 5 s, avsync on small pattern sources),
adds twelve sources through one daemon's API. Each daemon also has a ``nats`` event sink to the
same server (``[[sinks]] type = "nats"``; in fleet mode its subject's daemon token is the
``daemon_id``), and the events are consumed twice: from every daemon's own SSE, and by one
JetStream consumer of nats-py (an ordered push consumer of the ``CROSSMODALD`` stream, from its
first message) that reads every event all the daemons published. Then:

1. Baseline, same run: for each source, the time from ``POST /v1/sources`` to its first event
   (``stream.start``) and to its first ``sync.offset`` (a cold start on a fresh daemon).
2. ``kill -9`` of one daemon: for each of its sources, the time until it produces events again
   on another daemon (first event, first ``sync.offset``); the target is at most 10 s. The
   ratio to the cold start shows what the failover itself costs (the lease TTL, mostly).
3. The other streams through the kill: every ``sync.offset`` window of theirs, by media time,
   seen exactly once (no id twice, no hop missing) on the daemon that runs them; for the
   moved ones, the gap between the last event from the dead daemon and the first from the
   new one, and that no event came from two daemons at once. Both views: the SSE's, and the
   JetStream consumer's, which must also hold exactly the events the SSE saw (by id, per
   daemon up to the last ``seq`` both have), each once, on a subject naming the daemon
   that produced it; for the moved streams it shows what the dead daemon's sink never got
   out (what its SSE saw and JetStream did not), one switch of daemon, and the gap by
   JetStream's store time.
4. A clean stop (SIGTERM) of a second daemon: its sources are handed over without waiting for
   the TTL.
5. For sizing on paper: what one daemon's scan costs with ``--scan-keys`` sources and leases in
   the buckets (the three bucket reads a scan makes, as :mod:`crossmodald.service.fleet` does
   them) and what one lease renewal (a compare-and-set ``update``) costs, against this server.

    python benchmarks/bench_fleet.py [--sources 12] [--ttl 5] [--settle 6] [--scan-keys 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

try:
    import nats
    import nats.aio.msg
    import nats.js.errors
except ModuleNotFoundError:
    raise SystemExit("the benchmark needs nats-py: pip install -e '.[brokers]'") from None

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from natskit import MISSING, nats_server, nats_server_binary  # noqa: E402

SOURCE = {
    "type": "pattern",
    "width": 32,
    "height": 32,
    "fps": 10,
    "sample_rate": 8000,
    "period_s": 0.5,
    "flash_ms": 50,
    "beep_ms": 50,
    "audio_lead_ms": 40.0,
}
HOP_NS = 500_000_000
#: The JetStream stream and subject prefix of the ``nats`` sinks (their defaults).
JS_STREAM = "CROSSMODALD"
JS_PREFIX = "crossmodald"


@dataclass
class Proc:
    daemon_id: str
    proc: asyncio.subprocess.Process
    port: int | None = None
    log: list[str] = field(default_factory=list)
    #: (arrival monotonic, event) for every event of this daemon's SSE.
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stored:
    """One message the JetStream consumer read."""

    arrived: float  # monotonic, in this process
    stored: datetime  # JetStream's store time (the server's clock)
    stream_seq: int  # its sequence number in the JetStream stream
    subject_daemon: str  # the subject's daemon token
    event: dict[str, Any]


@dataclass
class Consumer:
    """nats-py's ordered push consumer of the sinks' JetStream stream, from its first message."""

    messages: list[Stored] = field(default_factory=list)

    async def run(self, url: str, ready: asyncio.Event) -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            async with asyncio.timeout(60):  # the first sink to connect creates the stream
                while True:
                    try:
                        await js.stream_info(JS_STREAM)
                        break
                    except nats.js.errors.NotFoundError:
                        await asyncio.sleep(0.1)

            async def on_message(msg: nats.aio.msg.Msg) -> None:
                meta = msg.metadata
                self.messages.append(
                    Stored(
                        time.monotonic(),
                        meta.timestamp,
                        meta.sequence.stream,
                        msg.subject.split(".")[1],
                        json.loads(msg.data),
                    )
                )

            sub = await js.subscribe(
                f"{JS_PREFIX}.>", stream=JS_STREAM, cb=on_message, ordered_consumer=True
            )
            ready.set()
            try:
                await asyncio.Event().wait()
            finally:
                await sub.unsubscribe()
        finally:
            await nc.close()

    async def caught_up(self, url: str) -> int:
        """Wait until every message the stream holds now has been read; the count."""
        nc = await nats.connect(url)
        try:
            last = (await nc.jetstream().stream_info(JS_STREAM)).state.last_seq
        finally:
            await nc.close()
        await wait_for(
            lambda: bool(self.messages) and self.messages[-1].stream_seq >= last,
            30,
            "the JetStream consumer catching up",
        )
        return last


async def start(daemon_id: str, nats_url: str, ttl_s: float, home: Path) -> Proc:
    config = home / f"{daemon_id}.toml"
    config.write_text(
        "[api]\nport = 0\n"
        '[[plugins]]\ntype = "avsync"\ndevice = "cpu"\n'
        "[window]\nlength_s = 1.0\nhop_s = 0.5\nlateness_s = 0.1\n"
        f'[fleet]\nnats_url = "{nats_url}"\nbucket = "bench"\ndaemon_id = "{daemon_id}"\n'
        f"lease_ttl_s = {ttl_s}\nscan_interval_s = {min(1.0, ttl_s / 3)}\n"
        # Every event also to JetStream; `daemon` (the subject's token) is the fleet's id.
        f'[[sinks]]\ntype = "nats"\nurl = "{nats_url}"\nreconnect_min_s = 0.1\n'
        "reconnect_max_s = 1.0\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crossmodald", "run", "--config", str(config),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    out = Proc(daemon_id, proc)

    async def read() -> None:
        assert proc.stderr is not None
        while line := (await proc.stderr.readline()).decode():
            out.log.append(line)
            found = re.search(r"API listening on http://127\.0\.0\.1:(\d+)", line)
            if found:
                out.port = int(found.group(1))

    asyncio.get_running_loop().create_task(read())
    async with asyncio.timeout(120):
        while out.port is None:
            if proc.returncode is not None:
                raise RuntimeError(f"{daemon_id} exited:\n{''.join(out.log)}")
            await asyncio.sleep(0.05)
    return out


async def subscribe(http: aiohttp.ClientSession, proc: Proc) -> None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async with http.get(f"{proc.url}/v1/events") as response:
            kind = ""
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind not in ("close", "gap"):
                    proc.events.append((time.monotonic(), json.loads(line[5:])))


def first(procs: list[Proc], stream: str, after: float, kind: str | None = None) -> float | None:
    times = [
        t
        for p in procs
        for t, e in p.events
        if t >= after and e["stream"] == stream and (kind is None or e["type"] == kind)
    ]
    return min(times) if times else None


async def wait_for(pred: Any, timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not pred():  # noqa: ASYNC110 -- polls what the SSE readers recorded
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise SystemExit(f"not within {timeout_s} s: {what}") from None


async def streams_of(http: aiohttp.ClientSession, proc: Proc) -> set[str]:
    async with http.get(f"{proc.url}/v1/streams") as response:
        body = await response.json()
    return {s["name"] for s in body["streams"] if s["state"] in ("starting", "running")}


def fmt(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):5.2f} s  max {max(values):5.2f} s  "
        f"min {min(values):5.2f} s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=12)
    parser.add_argument("--ttl", type=float, default=5.0, help="[fleet] lease_ttl_s")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds before each step")
    parser.add_argument("--scan-keys", type=int, default=1000, help="sources for step 5 (0: skip)")
    args = parser.parse_args()
    if nats_server_binary() is None:
        raise SystemExit(MISSING)
    names = [f"p{i:02d}" for i in range(args.sources)]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        async with nats_server(home / "js") as server, aiohttp.ClientSession() as http:
            procs = [await start(d, server.url, args.ttl, home) for d in ("a", "b", "c")]
            readers = [asyncio.create_task(subscribe(http, p)) for p in procs]
            consumer = Consumer()
            ready = asyncio.Event()
            readers.append(asyncio.create_task(consumer.run(server.url, ready)))
            try:
                async with asyncio.timeout(60):
                    await ready.wait()
                await run(http, procs, names, args, consumer, server.url)
            finally:
                for p in procs:
                    if p.proc.returncode is None:
                        p.proc.kill()
                        await p.proc.wait()
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
            if args.scan_keys:
                await scan_cost(server.url, args.scan_keys)


async def scan_cost(url: str, keys: int) -> None:
    """Step 5: a scan's bucket reads and a renewal, with ``keys`` sources and leases."""
    from nats.js.api import KeyValueConfig

    from crossmodald.service.fleet import _entries

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sources = await js.create_key_value(KeyValueConfig(bucket="size", history=1))
        leases = await js.create_key_value(KeyValueConfig(bucket="size_leases", history=1, ttl=60))
        daemons = await js.create_key_value(
            KeyValueConfig(bucket="size_daemons", history=1, ttl=60)
        )
        table = json.dumps({**SOURCE, "name": "p0000"}).encode()
        lease = json.dumps({"daemon": "d000", "instance": "0" * 32, "state": "running",
                            "error": None, "since": time.time()}).encode()  # fmt: skip
        revisions = {}
        for i in range(keys):
            await sources.put(f"p{i:04d}", table)
            revisions[i] = await leases.create(f"p{i:04d}", lease)
        for i in range(max(1, keys // 10)):
            await daemons.put(f"d{i:03d}", b'{"daemon": "d", "load": 10, "streams": []}')
        reads = []
        for _ in range(5):
            started = time.perf_counter()
            for kv in (sources, leases, daemons):
                await _entries(kv)
            reads.append(time.perf_counter() - started)
        renewals = []
        for i in range(min(keys, 500)):
            started = time.perf_counter()
            revisions[i] = await leases.update(f"p{i:04d}", lease, last=revisions[i])
            renewals.append(time.perf_counter() - started)
        renewals.sort()
        print(
            f"\nscan cost with {keys} sources, {keys} leases, {max(1, keys // 10)} daemons: "
            f"reading the three buckets {statistics.median(reads) * 1000:.0f} ms (median of 5), "
            f"{(len(table) + len(lease)) * keys / 1024:.0f} KiB"
        )
        print(
            f"lease renewal (CAS update): p50 {renewals[len(renewals) // 2] * 1000:.2f} ms, "
            f"p99 {renewals[int(len(renewals) * 0.99)] * 1000:.2f} ms "
            f"({1 / statistics.mean(renewals):.0f}/s one at a time)"
        )
    finally:
        await nc.close()


def windows(timeline: list[dict[str, Any]]) -> tuple[int, int]:
    """``sync.offset`` windows missing and repeated in events in the order they came, by media
    time; a ``stream.start`` begins a new run of the stream (media time from 0)."""
    runs: list[list[int]] = [[]]
    for e in timeline:
        if e["type"] == "stream.start":
            runs.append([])
        elif e["type"] == "sync.offset":
            runs[-1].append(e["media"]["start_ns"])
    missing = repeated = 0
    for run_starts in runs:
        for a_, b_ in itertools.pairwise(sorted(run_starts)):
            missing += max(0, (b_ - a_) // HOP_NS - 1)
            repeated += a_ == b_
    return missing, repeated


def seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


async def run(
    http: aiohttp.ClientSession,
    procs: list[Proc],
    names: list[str],
    args: Any,
    consumer: Consumer,
    nats_url: str,
) -> None:
    a, b, c = procs

    async def fleet_size() -> int:
        async with http.get(f"{a.url}/v1/fleet") as response:
            return len((await response.json())["daemons"])

    async with asyncio.timeout(30):
        while await fleet_size() < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.2)

    # 1. Baseline: cold starts.
    posted: dict[str, float] = {}
    for name in names:
        posted[name] = time.monotonic()
        async with http.post(f"{a.url}/v1/sources", json={**SOURCE, "name": name}) as response:
            assert response.status == 201, await response.text()
    await wait_for(
        lambda: all(first(procs, n, posted[n], "sync.offset") for n in names),
        60,
        "every source's first sync.offset",
    )
    cold_event = [first(procs, n, posted[n]) - posted[n] for n in names]  # type: ignore[operator]
    cold_offset = [first(procs, n, posted[n], "sync.offset") - posted[n] for n in names]  # type: ignore[operator]
    placement = {p.daemon_id: await streams_of(http, p) for p in procs}
    print(f"fleet: 3 daemons, {len(names)} pattern sources, lease TTL {args.ttl:g} s")
    print("placement: " + ", ".join(f"{d}={len(s)}" for d, s in placement.items()))
    print(f"cold start, POST -> first event:       {fmt(cold_event)}")
    print(f"cold start, POST -> first sync.offset: {fmt(cold_offset)}")
    await asyncio.sleep(args.settle)

    # 2. kill -9 one daemon.
    victim = c
    moved = sorted(placement[victim.daemon_id])
    others = sorted(set(names) - set(moved))
    killed = time.monotonic()
    killed_wall = datetime.now().astimezone()
    victim.proc.send_signal(signal.SIGKILL)
    await victim.proc.wait()
    survivors = [a, b]
    await wait_for(
        lambda: all(first(survivors, n, killed, "sync.offset") for n in moved),
        60,
        "the moved sources' sync.offset elsewhere",
    )
    fail_event = {n: first(survivors, n, killed) - killed for n in moved}  # type: ignore[operator]
    fail_offset = {n: first(survivors, n, killed, "sync.offset") - killed for n in moved}  # type: ignore[operator]
    print(f"\nkill -9 {victim.daemon_id} ({len(moved)} sources):")
    for n in moved:
        where = next(
            p.daemon_id for p in survivors for t, e in p.events if t >= killed and e["stream"] == n
        )
        print(
            f"  {n}: events again on {where} after {fail_event[n]:5.2f} s "
            f"(first sync.offset {fail_offset[n]:5.2f} s)"
        )
    worst = max(fail_event.values())
    print(
        f"failover, kill -> first event:       {fmt(list(fail_event.values()))}  "
        f"target <= 10 s: {'met' if worst <= 10 else 'MISSED'}"
    )
    print(f"failover, kill -> first sync.offset: {fmt(list(fail_offset.values()))}")
    print(
        "ratio failover / cold start (first sync.offset, median): "
        f"{statistics.median(fail_offset.values()) / statistics.median(cold_offset):.2f}"
    )
    await asyncio.sleep(args.settle)

    # 3. Exactly once, no gap, for the streams that did not move; the moved ones' gap.
    ids: dict[str, int] = {}
    for p in procs:
        for _t, e in p.events:
            ids[e["id"]] = ids.get(e["id"], 0) + 1
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    missing = 0
    repeated = 0
    restarts = 0
    for n in others:
        # By arrival.
        timeline = sorted(
            ((t, e) for p in procs for t, e in p.events if e["stream"] == n),
            key=lambda item: item[0],
        )
        restarts += sum(t > killed and e["type"] == "stream.start" for t, e in timeline)
        gone, again = windows([e for _t, e in timeline])
        missing += gone
        repeated += again
    overlap = 0
    gaps = []
    for n in moved:
        last_old = max(t for t, e in victim.events if e["stream"] == n)
        first_new = first(survivors, n, killed)
        assert first_new is not None
        gaps.append(first_new - last_old)
        overlap += first_new < last_old
    print(
        f"\nunmoved streams ({len(others)}): events seen twice {duplicates}; sync.offset "
        f"windows missing {missing}, repeated {repeated} (by media time, hop 0.5 s); "
        f"restarted after the kill {restarts}"
    )
    print(
        f"moved streams ({len(moved)}): gap between the dead daemon's last event and the "
        f"new daemon's first {fmt(gaps)}; overlapping {overlap}"
    )
    js = await jetstream_view(consumer, nats_url, procs, victim, others, moved, killed_wall)

    # 4. A clean stop hands over at once.
    left = sorted(await streams_of(http, b))
    stopped = time.monotonic()
    b.proc.send_signal(signal.SIGTERM)
    await wait_for(
        lambda: all(first([a], n, stopped) for n in left), 60, "the clean stop's hand-over"
    )
    handover = [first([a], n, stopped) - stopped for n in left]  # type: ignore[operator]
    print(f"\nclean stop (SIGTERM) of b ({len(left)} sources): on a after {fmt(handover)}")
    print(
        json.dumps(
            {
                "ttl_s": args.ttl,
                "cold_first_offset_s": statistics.median(cold_offset),
                "failover_first_event_s": fail_event,
                "failover_first_offset_s": fail_offset,
                "unmoved_duplicates": duplicates,
                "unmoved_missing_windows": missing,
                "unmoved_repeated_windows": repeated,
                "unmoved_restarts": restarts,
                "moved_overlap": overlap,
                "clean_handover_max_s": max(handover),
                "jetstream": js,
            }
        )
    )


async def jetstream_view(
    consumer: Consumer,
    nats_url: str,
    procs: list[Proc],
    victim: Proc,
    others: list[str],
    moved: list[str],
    killed_wall: datetime,
) -> dict[str, Any]:
    """Step 3 as the JetStream consumer saw it (every daemon's ``nats`` sink, one stream)."""
    total = await consumer.caught_up(nats_url)
    messages = list(consumer.messages)  # in the stream's order
    counts: dict[str, int] = {}
    for m in messages:
        counts[m.event["id"]] = counts.get(m.event["id"], 0) + 1
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    wrong_subject = sum(m.subject_daemon != m.event.get("daemon") for m in messages)
    # Against the SSE, per daemon, up to the last seq both views have (they go on arriving).
    compared = absent = extra = 0  # unmoved streams' events: on the SSE not in JetStream, and back
    for p in procs:
        if p is victim:
            continue
        sse = {e["seq"]: e["id"] for _t, e in p.events if e["stream"] in others}
        mine = [m.event for m in messages if m.event.get("daemon") == p.daemon_id]
        cut = min(
            max((e["seq"] for _t, e in p.events), default=0),
            max((e["seq"] for e in mine), default=0),
        )
        on_js = {e["id"] for e in mine if e["stream"] in others and e["seq"] <= cut}
        on_sse = {i for seq, i in sse.items() if seq <= cut}
        compared += len(on_sse)
        absent += len(on_sse - on_js)
        extra += len(on_js - on_sse)
    missing = repeated = restarts = 0
    for n in others:
        timeline = [m for m in messages if m.event["stream"] == n]
        restarts += sum(
            m.stored > killed_wall and m.event["type"] == "stream.start" for m in timeline
        )
        gone, again = windows([m.event for m in timeline])
        missing += gone
        repeated += again
    print(
        f"JetStream consumer, {total} messages from the three daemons' nats sinks: "
        f"duplicates {duplicates}, subject's daemon not the producer {wrong_subject}"
    )
    print(
        f"  unmoved streams ({len(others)}): of the {compared} events their SSE saw (up to "
        f"the last seq both views have), not in JetStream "
        f"{absent}, the other way {extra}; sync.offset windows missing {missing}, repeated "
        f"{repeated}; restarted after the kill {restarts}"
    )
    # The moved streams: the dead daemon's events, then the new daemon's, nothing between.
    victim_ids = {e["id"] for _t, e in victim.events}
    lost = len(victim_ids - {m.event["id"] for m in messages})
    overlap = switches = moved_missing = moved_repeated = 0
    gaps: list[float] = []
    failover: list[float] = []
    for n in moved:
        timeline = [m for m in messages if m.event["stream"] == n]
        owners = [d for d, _ in itertools.groupby(m.event.get("daemon") for m in timeline)]
        switches += len(owners) - 1
        old = [m for m in timeline if m.event.get("daemon") == victim.daemon_id]
        new = [m for m in timeline if m.event.get("daemon") != victim.daemon_id]
        if not old or not new:
            raise SystemExit(
                f"{n}: JetStream holds no events of it from {'before' if not old else 'after'} the kill"
            )
        overlap += max(m.stored for m in old) > min(m.stored for m in new)
        gaps.append(seconds(min(m.stored for m in new), max(m.stored for m in old)))
        failover.append(seconds(min(m.stored for m in new), killed_wall))
        for part in (old, new):
            gone, again = windows([m.event for m in part])
            moved_missing += gone
            moved_repeated += again
    print(
        f"  moved streams ({len(moved)}): owners in order {switches} switches (one each "
        f"expected); overlapping {overlap}; sync.offset windows missing {moved_missing}, "
        f"repeated {moved_repeated} (within each daemon's part); the dead daemon's events "
        f"its SSE saw that never reached JetStream {lost}"
    )
    print(f"  gap by store time, dead daemon's last -> new daemon's first: {fmt(gaps)}")
    print(f"  kill -> new daemon's first event stored: {fmt(failover)}")
    return {
        "messages": total,
        "duplicates": duplicates,
        "wrong_subject": wrong_subject,
        "unmoved_compared": compared,
        "unmoved_absent": absent,
        "unmoved_extra": extra,
        "unmoved_missing_windows": missing,
        "unmoved_repeated_windows": repeated,
        "unmoved_restarts": restarts,
        "moved_switches": switches,
        "moved_overlap": overlap,
        "moved_missing_windows": moved_missing,
        "moved_repeated_windows": moved_repeated,
        "victim_lost": lost,
        "moved_gap_s": gaps,
        "moved_failover_s": failover,
    }


if __name__ == "__main__":
    asyncio.run(main())
