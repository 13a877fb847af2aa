"""Fuzzing API bodies against the whole daemon in-process (issue 16): POST /v1/sources bodies,
WHIP offers and query strings. After every example: no 500, the daemon alive, every per-client
slot back to zero (streams a body started are removed first); at the end: no traceback in the
daemon's log. Hypothesis runs a fixed number of examples with a fixed seed (CI time is fixed,
failures replay)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from daemon_thread import DaemonThread, http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_EXAMPLE_S = 5.0

_FP = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
_ICE = ["a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx"]
OFFER_LINES = [
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", *_ICE, _FP, "a=setup:actpass",
    "a=mid:0", "a=sendonly", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", *_ICE, _FP, "a=setup:actpass",
    "a=mid:1", "a=sendonly", "a=rtcp-mux", "a=rtpmap:96 VP8/90000",
]  # fmt: skip


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    with DaemonThread(tmp_path_factory.mktemp("fuzz-api")) as running:
        yield running
        log = running.log_text()
        assert "Traceback" not in log, log[-5000:]


def _after(daemon: DaemonThread, started: float, status: int, answer: bytes) -> None:
    assert time.monotonic() - started < MAX_EXAMPLE_S
    assert status != 0, "no answer"
    assert status < 500, (status, answer[:300])
    assert daemon.alive(), daemon.crashed
    # Streams a valid body started are removed; then nothing may stay held.
    sources = json.loads(http(daemon.port, "GET", "/v1/sources")[2])["sources"]
    for entry in sources:
        if entry.get("origin") in ("api", "publisher"):
            http(daemon.port, "DELETE", f"/v1/sources/{entry['name']}")
    deadline = time.monotonic() + 3.0
    want = {"connections": 0, "subscribers": 0, "streams": 0}
    while (held := daemon.held()) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held == want


_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        [
            "Infinity",
            "-Infinity",
            "NaN",
            "1e999",
            "-1e999",
            "1e308",
            "0",
            "-0",
            "1" * 5000,
            "2e-400",
        ]
    ),
)
_scalars = st.one_of(
    _numbers,
    st.sampled_from(["true", "false", "null", '""', '"pattern"', '"\\ud800"', '"media"']),
    st.text(max_size=30).map(json.dumps),
)
_keys = st.sampled_from(
    [
        "type", "name", "width", "height", "fps", "sample_rate", "flash_ms", "beep_ms",
        "period_s", "audio_lead_ms", "duration_s", "seed", "url", "path", "loop", "x",
    ]
)  # fmt: skip
_values: st.SearchStrategy[str] = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(_keys, inner, max_size=4).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=12,
)


@st.composite
def _source_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["table", "table", "any", "bytes", "deep"]))
    if kind == "table":
        fields = {"type": draw(st.sampled_from(['"pattern"', '"media"', '"nope"', "1", "[]"]))}
        fields["name"] = draw(st.one_of(st.just('"fz"'), _scalars))
        fields |= draw(st.dictionaries(_keys, _values, max_size=5))
        text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"
        return text.encode("utf-8", "surrogatepass")
    if kind == "any":
        return draw(_values).encode("utf-8", "surrogatepass")
    if kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=5000))
        return b'{"type": "pattern", "name": "fz", "x": ' + b"[" * depth + b"]" * depth + b"}"
    return draw(st.binary(max_size=200))


@FUZZ
@given(_source_bodies(), st.sampled_from(["application/json", "", "text/plain", "application/sdp"]))
def test_fuzz_source_bodies(daemon: DaemonThread, body: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    started = time.monotonic()
    status, head, answer = http(daemon.port, "POST", "/v1/sources", body, headers)
    if status >= 400:
        assert head.get("content-type", "").startswith("application/json"), answer[:200]
        message = json.loads(answer)["error"]
        assert "\n" not in message
    _after(daemon, started, status, answer)


@st.composite
def _offers(draw: st.DrawFn) -> bytes:
    lines = list(OFFER_LINES)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        action = draw(st.sampled_from(["drop", "dup", "garble", "insert"]))
        index = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        if action == "drop":
            del lines[index]
        elif action == "dup":
            lines.insert(index, lines[index])
        elif action == "garble":
            head, _, _tail = lines[index].partition(":")
            lines[index] = head + ":" + draw(st.text(max_size=20))
        else:
            lines.insert(
                index,
                draw(
                    st.sampled_from(
                        [
                            "a=setup:passive", "a=setup:holdconn", "a=fingerprint:sha-1 AB:CD",
                            "a=fingerprint:sha-256", "a=ice-ufrag:", "m=text 9 RTP/AVP 0",
                            "a=rtpmap:96 H264/90000", "c=IN IP6 ::", "a=candidate:x",
                        ]
                    )
                ),
            )  # fmt: skip
        if not lines:
            break
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogatepass")


@FUZZ
@given(_offers())
def test_fuzz_whip_offers(daemon: DaemonThread, offer: bytes) -> None:
    started = time.monotonic()
    status, head, answer = http(
        daemon.port, "POST", "/v1/whip/fz", offer, {"Content-Type": "application/sdp"}
    )
    if status == 201:
        # A usable offer: the session exists until it is ended.
        location = head["location"]
        assert http(daemon.port, "DELETE", location)[0] == 200
    else:
        assert status in (400, 409, 422), (status, answer[:300])
    _after(daemon, started, status, answer)


_query_chars = st.characters(codec="utf-8", exclude_characters="\r\n #", exclude_categories=["Cs"])


@FUZZ
@given(
    st.sampled_from(["/v1/events", "/v1/streams", "/v1/sources", "/v1/sources/card", "/metrics"]),
    st.lists(
        st.tuples(
            st.sampled_from(["type", "stream", "last_event_id", "access_token", "x", "%ff"]),
            st.one_of(
                st.text(_query_chars, max_size=40),
                st.sampled_from(["9" * 40, "-1", "%ff%fe", "a,,b", "*", "sync.*"]),
            ),
        ),
        max_size=3,
    ),
)
def test_fuzz_query_strings(daemon: DaemonThread, path: str, params: list[tuple[str, str]]) -> None:
    from urllib.parse import quote

    query = "&".join(f"{k}={quote(v, safe='%*,.')}" for k, v in params)
    target = path + ("?" + query if query else "")
    started = time.monotonic()
    if path == "/v1/events":
        # A subscriber stays open: read its first bytes, then hang up.
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=MAX_EXAMPLE_S) as s:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            first = s.recv(200)
        status = int(first.split(b" ")[1]) if first.startswith(b"HTTP/") else 0
        answer: bytes = first
    else:
        status, _, answer = http(daemon.port, "GET", target)
    _after(daemon, started, status, answer)
