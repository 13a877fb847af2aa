"""Fuzzing the inputs that come from outside: config files, event filters, query strings, headers.

Property for each: no crash, no hang, only clear errors (one line, naming the thing). Hypothesis
runs a bounded number of examples with a fixed seed, so CI time is fixed and failures replay.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossmodald.api import bound_port, build_app, serve
from crossmodald.bus import EventBus, EventFilter
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service.config import (
    ApiConfig,
    ApiTokenConfig,
    ConfigError,
    default_config_text,
    load_config,
    load_config_text,
    validate_config,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,  # each example's time is checked by hand, against a looser bound
    derandomize=True,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: No single input may take longer than this to accept or refuse.
MAX_EXAMPLE_S = 2.0


def _clear(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"multi-line error: {message!r}"
    assert "Traceback" not in message
    assert len(message) < 2000, "error message too long to read"


# -- config files ---------------------------------------------------------------------------------

_KEYS = [
    "sources", "type", "name", "pattern", "media", "device", "url", "fps", "width", "height",
    "sample_rate", "period_s", "audio_lead_ms", "drift_ppm", "jitter_ms", "duration_s", "loop",
    "camera", "microphone", "latency_ms", "window", "length_s", "hop_s", "lateness_s", "plugins",
    "avsync", "speech", "faces", "enabled", "device", "max_batch", "api", "host", "port",
    "tokens", "token", "scopes", "admin", "subscribe", "publish", "tls", "cert", "key",
    "cors_origins", "limits", "max_body_bytes", "max_streams", "sinks", "jsonl", "path",
    "logging", "level", "format", "webrtc", "options", "seed",
]  # fmt: skip

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_KEYS),
    st.text(max_size=40),
    st.sampled_from(["30000/1001", "1/0", "nan", "127.0.0.1", "0.0.0.0", "x" * 70]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=25,
)
_documents = st.dictionaries(st.sampled_from(_KEYS), _values, max_size=6)

_REGISTRY = PluginRegistry.discover()


def _accept_or_refuse(check: Any) -> Any:
    started = time.monotonic()
    try:
        result = check()
    except ConfigError as exc:
        refused = exc
    else:
        return result
    finally:
        assert time.monotonic() - started < MAX_EXAMPLE_S
    assert refused.errors, "ConfigError without errors"
    for line in refused.errors:
        # Each names a key path ("api.port: ...") or is about the whole file ("not UTF-8 text").
        _clear(line)
    _clear(str(refused))
    assert str(refused).startswith(refused.source + ": ")
    return None


@FUZZ
@given(_documents)
def test_fuzz_config_documents(data: dict[str, Any]) -> None:
    config = _accept_or_refuse(lambda: validate_config(data, "fuzz.toml"))
    if config is not None and config.plugins:
        _accept_or_refuse(lambda: _REGISTRY.validate(config.plugins, "fuzz.toml"))


def _mutations() -> st.SearchStrategy[str]:
    base = default_config_text() + (
        '\n[[api.tokens]]\nname = "ops"\ntoken = "0123456789abcdef0123"\nscopes = ["admin"]\n'
        '[api.limits]\nmax_body_bytes = 65536\n[[sinks]]\ntype = "jsonl"\npath = "/tmp/x.jsonl"\n'
    )

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        text = base
        for _ in range(draw(st.integers(1, 6))):
            pos = draw(st.integers(0, len(text)))
            op = draw(st.sampled_from(["insert", "delete", "replace"]))
            chunk = draw(
                st.text(alphabet=st.sampled_from("[]{}=\"\n.,#0-9aZ \t\\'x\x00é"), max_size=6)
            )
            if op == "insert":
                text = text[:pos] + chunk + text[pos:]
            elif op == "delete":
                text = text[:pos] + text[pos + len(chunk) + 1 :]
            else:
                text = text[:pos] + chunk + text[pos + len(chunk) :]
        return text

    return mutate()


@FUZZ
@given(st.one_of(_mutations(), st.text(max_size=300)))
def test_fuzz_config_text(text: str) -> None:
    _accept_or_refuse(lambda: load_config_text(text, "fuzz.toml"))


@settings(FUZZ, max_examples=40)
@given(st.binary(max_size=200))
def test_fuzz_config_file_bytes(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "crossmodald.toml"
    path.write_bytes(raw)
    _accept_or_refuse(lambda: load_config(path))


def test_config_errors_name_the_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text('[api]\nport = "eighty"\n[[sources]]\ntype = "pattern"\nname = "a b"\n')
    lines = info.value.errors
    assert any(line.startswith("api.port:") for line in lines), lines
    assert any(line.startswith("sources.0.name:") for line in lines), lines


# -- event filters ------------------------------------------------------------------------------

_filter_text = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.text(alphabet=st.sampled_from("abcsyn.*-_,AZ09 é\x00"), max_size=12), max_size=80
    ).map(",".join),
    st.just("a," * 5000),
)


@FUZZ
@given(_filter_text, _filter_text, st.text(max_size=30), st.text(max_size=30))
def test_fuzz_event_filters(types: str, streams: str, event_type: str, stream: str) -> None:
    started = time.monotonic()
    error: ValueError | None = None
    try:
        event_filter = EventFilter.parse(types, streams)
    except ValueError as exc:
        error = exc
    else:
        assert isinstance(event_filter.matches(event_type, stream), bool)
    assert time.monotonic() - started < MAX_EXAMPLE_S
    if error is not None:
        _clear(str(error))
        assert str(error).startswith(("type filter", "stream filter")), str(error)


# -- query strings and headers against a real server ----------------------------------------------

TOKEN = "fuzz-token-0123456789abcdef"


class _Streams:
    """The API's StreamsView with one stream."""

    def streams(self) -> list[dict[str, Any]]:
        return [{"name": "cam1", "state": "running"}]

    def ready(self) -> bool:
        return True


class _ServerThread:
    """The real API app served on 127.0.0.1 from its own event loop thread."""

    def __init__(self) -> None:
        self.port = 0
        self.bus: EventBus | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="fuzz-api", daemon=True)

    def __enter__(self) -> _ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "the API server did not start"
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        token = ApiTokenConfig.model_validate(
            {"name": "fuzz", "token": TOKEN, "scopes": ["subscribe"]}
        )
        config = ApiConfig(port=0, tokens=[token], cors_origins=["https://ok.example"])
        self.bus = EventBus(64, 64, 1.0)
        app = build_app(self.bus, _Streams(), config, heartbeat_s=0.5, ws_heartbeat_s=None)
        runner = await serve(app, "127.0.0.1", 0, shutdown_timeout_s=1.0)
        self.port = bound_port(runner)
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


@pytest.fixture(scope="module")
def api_server() -> Iterator[_ServerThread]:
    with _ServerThread() as server:
        yield server


def _raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the status and headers (and a JSON body); bounded in time."""
    with socket.create_connection(("127.0.0.1", port), timeout=MAX_EXAMPLE_S) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body


_PATHS = ["/v1/events", "/v1/streams", "/v1/streams/", "/metrics", "/healthz", "/readyz", "/v1"]
_query_chars = st.characters(codec="latin-1", exclude_characters="\r\n #")
_queries = st.one_of(
    st.text(_query_chars, max_size=120),
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(["type", "stream", "last_event_id", "access_token", "x", "type[]"]),
        st.text(_query_chars, max_size=60),
    ),
    st.lists(
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(["type", "stream", "last_event_id", "last_seq"]),
            st.sampled_from(["", "sync.", "sync.*", "*", "1", "-1", "99999999999999999999", "a,b"]),
        ),
        max_size=4,
    ).map("&".join),
)
_header_names = st.sampled_from(
    ["Authorization", "Last-Event-ID", "Origin", "Host", "Content-Length", "X-Fuzz", "Accept"]
)
_header_values = st.one_of(
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=80),
    st.sampled_from([f"Bearer {TOKEN}", "Bearer", "Basic x", "https://ok.example", "-5", "1e9"]),
)


@settings(FUZZ, max_examples=300)
@given(
    st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "PUT", "BREW"]),
    st.sampled_from(_PATHS),
    _queries,
    st.lists(st.tuples(_header_names, _header_values), max_size=4),
    st.booleans(),
)
def test_fuzz_http_queries_and_headers(
    api_server: _ServerThread,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    with_token: bool,
) -> None:
    lines = [f"{method} {path}{'?' + query if query else ''} HTTP/1.1", "Host: 127.0.0.1"]
    if with_token:
        lines.append(f"Authorization: Bearer {TOKEN}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    started = time.monotonic()
    status, head, body = _raw_request(api_server.port, request)
    assert time.monotonic() - started < MAX_EXAMPLE_S
    assert status != 500, (request, body[:300])
    assert 100 <= status < 600
    if status >= 400 and head.get("content-type", "").startswith("application/json"):
        error = json.loads(body)["error"]
        _clear(error)


def test_fuzzed_server_still_serves(api_server: _ServerThread) -> None:
    status, _, body = _raw_request(
        api_server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert json.loads(body) == {"status": "ok"}


def test_event_routes_refuse_bad_seq_clearly(api_server: _ServerThread) -> None:
    status, _, body = _raw_request(
        api_server.port,
        f"GET /v1/events?last_event_id=12x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status == 400
    assert "last_event_id must be a non-negative integer" in json.loads(body)["error"]


def test_path_is_not_a_secret(tmp_path: Path) -> None:
    """A config error about a file names the file, never prints its content."""
    secret = "s3cr3t-" * 5
    path = tmp_path / "bad.toml"
    path.write_text(f'[[api.tokens]]\nname = "a"\ntoken = "{secret}"\nscopes = ["nope"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert secret not in str(info.value)
