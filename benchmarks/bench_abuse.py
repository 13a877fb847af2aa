"""Abuse: hostile and careless HTTP clients against a real daemon (loopback only).

Starts ``crossmodald run`` as a subprocess on a loopback port with four real-time pattern
streams and the avsync plugin, logging at info to a file, and then either

* ``--probe``: runs each case of issue 16 once and prints its figures (what a client gets,
  what the log gets, how long a slot stays held), or
* the mixed load (default): for ``--minutes`` (10) runs every case at once, over and over,
  while one normal SSE subscriber reads every event, and prints: events lost by that subscriber
  (seq gaps; target 0), requests refused (by status), 5xx answers, /healthz failures, RSS at
  start and end, log lines, tracebacks in the log, and how often the tokens the hostile clients
  sent appear in the log (target 0).

The cases: bad JSON bodies on ``POST /v1/sources`` (``Infinity``, ``NaN``, ``1e999``, deep
nesting, a 5,000-digit integer, wrong types, invalid UTF-8, wrong content type); malformed
request lines, over-long URLs and headers carrying a token; ``GET / HTTP/9.9`` over and over;
64 connections trickling a POST body one byte per 2 s; an SSE subscriber that never reads; a
filtered SSE subscriber that closes cleanly; a client that vanishes mid-body; WHIP offers
without ``a=fingerprint``, ``a=setup`` or ICE credentials; odd query strings.

    python benchmarks/bench_abuse.py --probe                    # each case once (~2 min)
    python benchmarks/bench_abuse.py --minutes 2                # mixed load, 2 minutes
    python benchmarks/bench_abuse.py --probe --tree /work/main  # the same against another checkout
    python benchmarks/bench_abuse.py --minutes 2 --idle         # baseline: no abuse (RSS warm-up)

``--tree`` runs another checkout's daemon code with this interpreter (for a before/after
comparison in one sitting). Exit code 1 when the mixed load loses events, answers 5xx, leaks a
token into the log or logs a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import rss_mib, tree_env

HOST = "127.0.0.1"
STREAMS = 4
#: The tokens hostile clients put in URLs and headers; none may reach the log.
TOKEN = "tok-" + secrets.token_hex(12)
USERINFO_SECRET = "pw-" + secrets.token_hex(8)

# A browser-like WHIP offer (no candidates: nothing is ever sent to it).
_FP = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
_ICE = ["a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx"]
OFFER = "\r\n".join(
    [
        "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", *_ICE, _FP, "a=setup:actpass",
        "a=mid:0", "a=sendonly", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", *_ICE, _FP, "a=setup:actpass",
        "a=mid:1", "a=sendonly", "a=rtcp-mux", "a=rtpmap:96 VP8/90000", "",
    ]
)  # fmt: skip
BAD_OFFERS = {
    "no fingerprint": "\r\n".join(x for x in OFFER.split("\r\n") if not x.startswith("a=fing")),
    "no setup": "\r\n".join(x for x in OFFER.split("\r\n") if not x.startswith("a=setup")),
    "no ice": "\r\n".join(x for x in OFFER.split("\r\n") if not x.startswith("a=ice")),
}


def _deep(n: int) -> bytes:
    return b'{"type": "pattern", "name": "deep", "x": ' + b"[" * n + b"]" * n + b"}"


#: Bad bodies for POST /v1/sources: (what, body, content type).
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("Infinity", b'{"type": "pattern", "name": "inf", "flash_ms": Infinity}', "application/json"),
    ("NaN", b'{"type": "pattern", "name": "nan", "flash_ms": NaN}', "application/json"),
    ("1e999", b'{"type": "pattern", "name": "big", "flash_ms": 1e999}', "application/json"),
    ("duration Infinity", b'{"type": "pattern", "name": "d", "duration_s": Infinity}',
     "application/json"),
    ("deep nesting", _deep(20_000), "application/json"),
    ("5000-digit int", b'{"type": "pattern", "name": "n", "seed": ' + b"7" * 5000 + b"}",
     "application/json"),
    ("wrong type", b'{"type": "pattern", "name": ["x"]}', "application/json"),
    ("array", b"[1, 2]", "application/json"),
    ("invalid UTF-8", b'{"type": "\xff\xfe"}', "application/json"),
    ("wrong content type", b'{"type": "pattern", "name": "ct"}', "text/plain"),
    ("not JSON", b"{type: pattern", "application/json"),
]  # fmt: skip


def _raw_requests() -> list[tuple[str, bytes]]:
    """Malformed requests with a token in them: (what, bytes)."""
    t = TOKEN.encode()
    return [
        ("bad version", b"GET /v1/events?access_token=" + t + b" HTTP/9.9\r\n\r\n"),
        ("long URL", b"GET /v1/events?access_token=" + t + b"&p=" + b"A" * 9000
         + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("bad header", b"GET /v1/streams?token=" + t + b" HTTP/1.1\r\nHost: x\r\n"
         b"Authorization: Bearer " + t + b"\r\nBad\x01Name: y\r\n\r\n"),
        ("long Authorization", b"GET /v1/streams HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Authorization: Bearer " + t + b"x" * 9000 + b"\r\n\r\n"),
        ("userinfo", b"GET http://u:" + USERINFO_SECRET.encode() + b"@127.0.0.1/?key=" + t
         + b" HTTP/9.9\r\n\r\n"),
        ("control char", b"GET /v1/events?access_token=" + t + b"\x00 HTTP/1.1\r\n\r\n"),
    ]  # fmt: skip


def config_text(port: int) -> str:
    parts = [
        f'[[sources]]\ntype = "pattern"\nname = "abuse{i}"\nwidth = 160\nheight = 120\n'
        f"fps = 30\nsample_rate = 48000\naudio_lead_ms = {10 * i}.0\nseed = {i}\n"
        for i in range(STREAMS)
    ]
    parts.append("[window]\nlength_s = 2.0\nhop_s = 0.5\nlateness_s = 0.2\n")
    parts.append('[[plugins]]\ntype = "avsync"\n')
    parts.append(f'[api]\nhost = "{HOST}"\nport = {port}\n')
    parts.append('[webrtc]\nhost_addresses = ["127.0.0.1"]\n')
    parts.append('[logging]\nlevel = "info"\n')
    return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.returncode is None


async def start_daemon(tmp: Path, tree: Path | None) -> Daemon:
    port = free_port()
    config = tmp / "abuse.toml"
    config.write_text(config_text(port), "utf-8")
    log_path = tmp / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crossmodald", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file, env=tree_env(tree),
        )  # fmt: skip
    daemon = Daemon(proc, port, log_path)
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(daemon.base + "/readyz") as resp:
                    if resp.status == 200:
                        return daemon
            if not daemon.alive():
                break
            await asyncio.sleep(0.2)
    raise RuntimeError("the daemon did not get ready:\n" + daemon.log_text()[-3000:])


async def held(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """crossmodald_api_held by kind (the /metrics request itself holds one connection)."""
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for match in re.finditer(r'^crossmodald_api_held\{kind="(\w+)"\} (\S+)$', text, re.M):
        out[match.group(1)] = float(match.group(2))
    if "connections" in out:
        out["connections"] -= 1
    closed_slow = re.search(r"^crossmodald_subscribers_closed_slow_total (\S+)$", text, re.M)
    out["closed_slow_total"] = float(closed_slow.group(1)) if closed_slow else float("nan")
    out["subscribers_open"] = float(
        re.search(r"^crossmodald_subscribers (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    )
    return out


async def raw(data: bytes, *, read: bool = True, timeout_s: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; the answer's first bytes (or b"")."""
    reader, writer = await asyncio.open_connection(HOST, PORT[0])
    try:
        writer.write(data)
        await writer.drain()
        if not read:
            return b""
        async with asyncio.timeout(timeout_s):
            return await reader.read(4096)
    except (OSError, TimeoutError):
        return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


PORT = [0]


def _status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.\d (\d{3})", answer)
    return int(match.group(1)) if match else 0


async def post_body(
    session: aiohttp.ClientSession, base: str, body: bytes, content_type: str
) -> tuple[int, bool, str]:
    """(status, answered JSON?, first line of the answer)."""
    async with session.post(
        base + "/v1/sources", data=body, headers={"Content-Type": content_type}
    ) as resp:
        text = await resp.text(errors="replace")
        is_json = resp.content_type == "application/json"
        return resp.status, is_json, text.splitlines()[0][:100] if text else ""


# -- the probe: each case once ---------------------------------------------------------------


async def probe(daemon: Daemon) -> dict[str, Any]:
    base = daemon.base
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        # 1. bad bodies: statuses, non-JSON answers, slots held after; then a valid POST.
        statuses: Counter[str] = Counter()
        non_json = 0
        for _round in range(3):
            for what, body, ctype in BAD_BODIES:
                status, is_json, line = await post_body(session, base, body, ctype)
                statuses[f"{what}: {status}"] += 1
                non_json += not is_json
                if _round == 0:
                    print(f"  POST /v1/sources {what}: {status} {line}")
        valid = json.dumps({"type": "pattern", "name": "probe-ok", "width": 64, "height": 48})
        status, _, line = await post_body(session, base, valid.encode(), "application/json")
        with contextlib.suppress(aiohttp.ClientError):
            await (await session.delete(base + "/v1/sources/probe-ok")).release()
        out["1 bad bodies: answers"] = dict(sorted(statuses.items()))
        out["1 bad bodies: 5xx"] = sum(n for k, n in statuses.items() if int(k[-3:]) >= 500)
        out["1 bad bodies: answers not JSON"] = non_json
        out["1 valid POST after 33 bad ones"] = f"{status} {line}"
        out["1 slots held after"] = await held(session, base)

        # 2. tokens in the log.
        for what, data in _raw_requests():
            answer = await raw(data)
            print(f"  raw {what}: {_status(answer)}")
        await asyncio.sleep(1.0)
        text = daemon.log_text()
        out["2 token occurrences in the log"] = text.count(TOKEN) + text.count(USERINFO_SECRET)

        # 3. log amplification: 100 x GET / HTTP/9.9 (after one log interval, 10 s, without
        # client errors; counted until one interval after them, so a count line is included).
        await asyncio.sleep(11.0)
        before = daemon.log_text().splitlines()
        for _ in range(100):
            await raw(b"GET / HTTP/9.9\r\n\r\n")
        await asyncio.sleep(11.0)
        added = daemon.log_text().splitlines()[len(before) :]
        out["3 log lines for 100 x 'GET / HTTP/9.9'"] = len(added)
        out["3 of them tracebacks"] = sum("Traceback" in line for line in added)

        # 4a. 64 connections trickling a body; other clients meanwhile.
        out |= await probe_trickle(session, base, connections=64, watch_s=30.0)
        # 4b. a filtered SSE subscriber that closes cleanly: how long its slot stays held.
        out["4 filtered SSE closed: slot held for (s)"] = await probe_closed_sse(session, base)
        # 4c. a client vanishing mid-body: tracebacks logged.
        before_n = len(daemon.log_text().splitlines())
        for _ in range(5):
            await raw(
                b"POST /v1/sources HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b'\r\nContent-Length: 1000\r\n\r\n{"type":',
                read=False,
            )
        await asyncio.sleep(1.5)
        added = daemon.log_text().splitlines()[before_n:]
        out["4 vanish mid-body x5: tracebacks logged"] = sum("Traceback" in x for x in added)
        # 4d. a subscriber that never reads: how long until the daemon cuts it.
        out["4 non-reading SSE subscriber cut after (s)"] = await probe_not_reading(
            session, base, limit_s=120.0
        )

        # 5. WHIP offers lacking what DTLS/ICE need.
        before_n = len(daemon.log_text().splitlines())
        for index, (what, sdp) in enumerate(BAD_OFFERS.items()):
            stream = f"probe{index}"
            async with session.post(
                base + f"/v1/whip/{stream}", data=sdp, headers={"Content-Type": "application/sdp"}
            ) as resp:
                body = (await resp.text())[:100].replace("\r\n", " | ")
                out[f"5 WHIP offer, {what}"] = f"{resp.status} {body}"
            with contextlib.suppress(aiohttp.ClientError):
                location = resp.headers.get("Location")
                await asyncio.sleep(3.0)
                async with session.get(base + "/v1/streams") as streams:
                    names = [s["name"] for s in (await streams.json())["streams"]]
                out[f"5 WHIP offer, {what}: session lingering 3 s later"] = stream in names
                if location:
                    await (await session.delete(base + location)).release()
        await asyncio.sleep(1.0)
        added = "\n".join(daemon.log_text().splitlines()[before_n:])
        out["5 'AssertionError' / 'never retrieved' in the log"] = added.count(
            "AssertionError"
        ) + added.count("never retrieved")

        out["end: slots held"] = await held(session, base)
        text = daemon.log_text()
        out["end: tracebacks in the whole log"] = text.count("Traceback")
        out["end: token occurrences in the whole log"] = text.count(TOKEN) + text.count(
            USERINFO_SECRET
        )
        out["end: daemon alive"] = daemon.alive()
    return out


async def trickler(stop: asyncio.Event, closed_at: list[float], t0: float) -> None:
    """POST headers with a large Content-Length, then one byte every 2 s until cut or told."""
    try:
        reader, writer = await asyncio.open_connection(HOST, PORT[0])
    except OSError:
        closed_at.append(time.monotonic() - t0)
        return
    try:
        writer.write(
            b"POST /v1/sources HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n"
        )
        while not stop.is_set():
            writer.write(b" ")
            await writer.drain()
            try:
                async with asyncio.timeout(2.0):
                    await reader.read(1024)  # an answer (408) or the close
            except TimeoutError:
                continue  # still reading our body: one more byte
            closed_at.append(time.monotonic() - t0)
            return
    except OSError:
        closed_at.append(time.monotonic() - t0)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def probe_trickle(
    session: aiohttp.ClientSession, base: str, *, connections: int, watch_s: float
) -> dict[str, Any]:
    stop = asyncio.Event()
    closed_at: list[float] = []
    t0 = time.monotonic()
    tasks = [asyncio.create_task(trickler(stop, closed_at, t0)) for _ in range(connections)]
    await asyncio.sleep(3.0)
    answers: Counter[str] = Counter()
    for _ in range(5):
        for method, path, body in (
            ("GET", "/healthz", None),
            ("GET", "/v1/streams", None),
            ("POST", "/v1/sources", json.dumps({"type": "pattern", "name": "x-ok"}).encode()),
        ):
            try:
                async with session.request(
                    method, base + path, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    answers[f"{method} {path}: {resp.status}"] += 1
            except aiohttp.ClientError as exc:
                answers[f"{method} {path}: {type(exc).__name__}"] += 1
            if method == "POST":
                with contextlib.suppress(aiohttp.ClientError):
                    await (await session.delete(base + "/v1/sources/x-ok")).release()
        await asyncio.sleep(1.0)
    await asyncio.sleep(max(0.0, watch_s - (time.monotonic() - t0)))
    still_open = connections - len(closed_at)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        f"4 other clients during {connections} tricklers": dict(sorted(answers.items())),
        f"4 tricklers cut by the daemon within {watch_s:g} s": connections - still_open,
        "4 first/last trickler cut at (s)": (
            (round(min(closed_at), 1), round(max(closed_at), 1)) if closed_at else None
        ),
    }


async def probe_closed_sse(session: aiohttp.ClientSession, base: str) -> float | None:
    resp = await session.get(base + "/v1/events?stream=no-such-stream")
    assert resp.status == 200, resp.status
    await asyncio.sleep(0.5)
    resp.close()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        if (await held(session, base)).get("subscribers", 0) == 0:
            return round(time.monotonic() - t0, 2)
        await asyncio.sleep(0.1)
    return None


async def probe_not_reading(
    session: aiohttp.ClientSession, base: str, *, limit_s: float
) -> float | str:
    start = (await held(session, base)).get("subscribers", 0)
    _reader, writer = await asyncio.open_connection(HOST, PORT[0])
    writer.write(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < limit_s:
            await asyncio.sleep(0.5)
            if (await held(session, base)).get("subscribers", 0) <= start:
                return round(time.monotonic() - t0, 1)
        return f"> {limit_s:g} (still open)"
    finally:
        writer.close()


# -- the mixed load -----------------------------------------------------------------------------


@dataclass
class Tally:
    refused: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    not_reading_cut_s: list[float] = field(default_factory=list)
    tricklers_cut: int = 0
    rss_mib: list[float] = field(default_factory=list)
    healthz_failed: int = 0
    healthz_ok: int = 0
    events: int = 0
    lost: int = 0
    subscriber_closed: list[str] = field(default_factory=list)


async def normal_subscriber(base: str, tally: Tally, stop: asyncio.Event) -> None:
    """Reads every event; a gap in seq is an event lost."""
    last: int | None = None
    kind = ""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
        session.get(base + "/v1/events") as resp,
    ):
        assert resp.status == 200, resp.status
        async for raw_line in resp.content:
            line = raw_line.decode().rstrip("\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "close":
                tally.subscriber_closed.append(line[5:])
            elif line.startswith("id:"):
                seq = int(line[3:])
                if last is not None and seq != last + 1:
                    tally.lost += max(0, seq - last - 1)
                last = seq
                tally.events += 1
            if stop.is_set():
                return


async def _loop(stop: asyncio.Event, tally: Tally, name: str, body: Any) -> None:
    while not stop.is_set():
        try:
            await body()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            tally.errors[f"{name}: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.1)


async def mixed(daemon: Daemon, minutes: float, *, idle: bool = False) -> dict[str, Any]:
    base = daemon.base
    tally = Tally()
    stop = asyncio.Event()
    rng = random.Random(16)
    pid = daemon.proc.pid
    await asyncio.sleep(5.0)  # let the streams settle
    rss_start = rss_mib(pid)
    session = aiohttp.ClientSession()

    async def count(resp: aiohttp.ClientResponse) -> None:
        if resp.status >= 400:
            tally.refused[resp.status] += 1

    async def bad_bodies() -> None:
        _what, body, ctype = rng.choice(BAD_BODIES)
        async with session.post(
            base + "/v1/sources", data=body, headers={"Content-Type": ctype}
        ) as resp:
            await count(resp)
        await asyncio.sleep(0.05)

    async def bad_lines() -> None:
        _what, data = rng.choice([*_raw_requests(), ("HTTP/9.9", b"GET / HTTP/9.9\r\n\r\n")])
        answer = await raw(data)
        status = _status(answer)
        if status >= 400:
            tally.refused[status] += 1
        await asyncio.sleep(0.02)

    async def trickle_pool() -> None:
        closed: list[float] = []

        async def one() -> None:
            while not stop.is_set():  # cut: come back at once
                await trickler(stop, closed, time.monotonic())
                await asyncio.sleep(0.05)

        counter = asyncio.create_task(_count_cuts(closed))
        try:
            await asyncio.gather(*(one() for _ in range(64)), return_exceptions=True)
        finally:
            counter.cancel()

    async def _count_cuts(closed: list[float]) -> None:
        seen = 0
        while True:
            await asyncio.sleep(0.5)
            tally.tricklers_cut += len(closed) - seen  # answered (408, 429, ...) or closed
            seen = len(closed)

    async def not_reading() -> None:
        reader, writer = await asyncio.open_connection(HOST, PORT[0])
        t0 = time.monotonic()
        try:
            writer.write(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(150):
                    while not stop.is_set() and not reader.at_eof():  # noqa: ASYNC110
                        await asyncio.sleep(1.0)  # never reads: only looks whether it was cut
            if reader.at_eof():  # rarely seen: a client that does not read sees no EOF either
                tally.not_reading_cut_s.append(round(time.monotonic() - t0, 1))
        finally:
            writer.close()

    async def closing_sse() -> None:
        resp = await session.get(base + "/v1/events?stream=abuse0&type=sync.offset")
        await count(resp)
        await asyncio.sleep(rng.uniform(0.1, 2.0))
        resp.close()

    async def vanish() -> None:
        await raw(
            b"POST /v1/sources HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{",
            read=False,
        )
        await asyncio.sleep(0.2)

    async def whip() -> None:
        _what, sdp = rng.choice(list(BAD_OFFERS.items()))
        async with session.post(
            base + "/v1/whip/abuse", data=sdp, headers={"Content-Type": "application/sdp"}
        ) as resp:
            await count(resp)
            location = resp.headers.get("Location")
        if location:
            await (await session.delete(base + location)).release()
        await asyncio.sleep(0.2)

    async def queries() -> None:
        query = rng.choice(
            [
                "?type=%ff%fe",
                "?last_event_id=" + "9" * 40,
                "?stream=" + "x" * 500,
                "?type=a,,b",
                f"?access_token={TOKEN}",
            ]
        )
        async with session.get(base + "/v1/events" + query, timeout=aiohttp.ClientTimeout(2)) as r:
            await count(r)
        await asyncio.sleep(0.1)

    async def healthz() -> None:
        try:
            async with session.get(base + "/healthz", timeout=aiohttp.ClientTimeout(5)) as resp:
                if resp.status == 200:
                    tally.healthz_ok += 1
                else:
                    tally.healthz_failed += 1
        except (aiohttp.ClientError, TimeoutError):
            tally.healthz_failed += 1
        await asyncio.sleep(1.0)

    subscriber = asyncio.create_task(normal_subscriber(base, tally, stop))
    await asyncio.sleep(1.0)
    workers = [
        asyncio.create_task(_loop(stop, tally, name, body))
        for name, body in [
            ("bad bodies", bad_bodies),
            ("bad lines", bad_lines),
            ("trickle", trickle_pool),
            ("not reading 1", not_reading),
            ("not reading 2", not_reading),
            ("closing SSE", closing_sse),
            ("vanish", vanish),
            ("whip", whip),
            ("queries", queries),
            ("healthz", healthz),
        ]
        if not idle or name == "healthz"
    ]
    t0 = time.monotonic()
    next_rss = t0
    while time.monotonic() - t0 < minutes * 60:
        await asyncio.sleep(5.0)
        if not daemon.alive() or subscriber.done():
            break
        if time.monotonic() >= next_rss:
            tally.rss_mib.append(round(rss_mib(pid), 1))
            next_rss += 30.0
    stop.set()
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await asyncio.sleep(3.0)  # a last event for the subscriber to see stop
    subscriber.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await subscriber
    await session.close()  # hangs up every connection the workers left open
    await asyncio.sleep(2.0)  # every client has hung up: the daemon frees what they held
    rss_end = rss_mib(pid) if daemon.alive() else float("nan")
    held_end: dict[str, float] = {}
    if daemon.alive():
        async with aiohttp.ClientSession() as fresh:
            held_end = await held(fresh, base)
    text = daemon.log_text()
    return {
        "minutes": round((time.monotonic() - t0) / 60, 2),
        "normal subscriber: events received": tally.events,
        "normal subscriber: events lost": tally.lost,
        "normal subscriber: closed by the daemon": tally.subscriber_closed,
        "requests refused (by status)": dict(sorted(tally.refused.items())),
        "5xx answers": sum(n for s, n in tally.refused.items() if s >= 500),
        "/healthz ok / failed": (tally.healthz_ok, tally.healthz_failed),
        "client-side errors": dict(tally.errors.most_common(8)),
        "RSS start / end (MiB)": (round(rss_start, 1), round(rss_end, 1)),
        "RSS every 30 s (MiB)": tally.rss_mib,
        "non-reading subscribers cut (as the client saw it) after (s)": tally.not_reading_cut_s,
        "trickling connections answered or closed (then reconnected)": tally.tricklers_cut,
        "slots held at the end": held_end,
        "log lines": len(text.splitlines()),
        "tracebacks in the log": text.count("Traceback"),
        "token occurrences in the log": text.count(TOKEN) + text.count(USERINFO_SECRET),
        "daemon alive": daemon.alive(),
    }


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="crossmodald-abuse-") as tmp:
        daemon = await start_daemon(Path(tmp), args.tree)
        PORT[0] = daemon.port
        print(f"daemon pid {daemon.proc.pid} on {daemon.base} (code: {args.tree or 'installed'})")
        try:
            result = await (
                probe(daemon) if args.probe else mixed(daemon, args.minutes, idle=args.idle)
            )
        finally:
            if daemon.alive():
                daemon.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(daemon.proc.wait(), 20)
                except TimeoutError:
                    daemon.proc.kill()
                    await daemon.proc.wait()
            if args.keep_log:
                Path(args.keep_log).write_text(daemon.log_text(), "utf-8")  # noqa: ASYNC240
        for key, value in result.items():
            print(f"{key}: {value}")
        if args.probe:
            return 0
        failed = (
            result["normal subscriber: events lost"]
            or result["5xx answers"]
            or result["tracebacks in the log"]
            or result["token occurrences in the log"]
            or not result["daemon alive"]
        )
        return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--probe", action="store_true", help="each case once, with its figures")
    p.add_argument("--minutes", type=float, default=10.0, help="mixed load duration")
    p.add_argument("--tree", type=Path, help="run another checkout's daemon code")
    p.add_argument(
        "--idle", action="store_true", help="baseline: the normal subscriber and /healthz only"
    )
    p.add_argument("--keep-log", help="write the daemon's log here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
