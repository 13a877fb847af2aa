"""One URL redaction for everything that leaves the process (crossmodald.redact)."""

from __future__ import annotations

import pytest

from crossmodald.config_errors import ConfigError
from crossmodald.redact import is_sensitive_parameter, redact_text, redact_url
from crossmodald.service.config import load_config_text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # user and password: both hidden (the user name alone may be the secret)
        ("rtsp://admin:pw@cam/s1", "rtsp://***@cam/s1"),
        ("rtsp://user:secret@cam.local:554/s1", "rtsp://***@cam.local:554/s1"),
        # token-like userinfo
        ("rtsp://token123@cam", "rtsp://***@cam"),
        ("rtmp://streamkey@live.example/app", "rtmp://***@live.example/app"),
        # an "@" inside the password (not encoded): the host is after the last one
        ("rtsp://a:p@ss@cam:554/x", "rtsp://***@cam:554/x"),
        # a "/" inside the password (not encoded): "admin:pa" is no host:port, so it is userinfo
        ("rtsp://admin:pa/ss@cam/x?token=1", "rtsp://***@cam/x?token=***"),
        ("http://h:8080/users/@me", "http://h:8080/users/@me"),
        ("http://host/path@x", "http://host/path@x"),
        ("http://[::1]:80/a@b", "http://[::1]:80/a@b"),
        # IPv6 hosts and ports kept as written
        ("rtsp://admin:pw@[::1]:8554/live", "rtsp://***@[::1]:8554/live"),
        ("http://[fe80::1%25eth0]:80/a.mp4", "http://[fe80::1%25eth0]:80/a.mp4"),
        # credential-like query values, any case, other parameters and their order kept
        (
            "https://cdn.example/v.m3u8?res=hd&token=abc&Access_Token=def&x=1",
            "https://cdn.example/v.m3u8?res=hd&token=***&Access_Token=***&x=1",
        ),
        (
            "https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff&v=2",
            "https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential=***&X-Amz-Signature=***&v=2",
        ),
        (
            "http://h/p?key=1;apikey=2&api_key=3&API-KEY=4&password=5&pass=6&pwd=7",
            "http://h/p?key=***;apikey=***&api_key=***&API-KEY=***&password=***&pass=***&pwd=***",
        ),
        (
            "http://h/p?secret=1&sig=2&signature=3&auth=4&credential=5&credentials=6",
            "http://h/p?secret=***&sig=***&signature=***&auth=***&credential=***&credentials=***",
        ),
        (
            "http://h/p?refresh_token=1&client_secret=2",
            "http://h/p?refresh_token=***&client_secret=***",
        ),
        # fragments: kept, parameters in them redacted (OAuth implicit flow)
        ("https://h/p#t=10", "https://h/p#t=10"),
        ("https://h/p?a=1#access_token=zz&state=s", "https://h/p?a=1#access_token=***&state=s"),
        # everything together
        (
            "rtsp://admin:pw@[2001:db8::2]:554/live?token=abc&ch=1#f",
            "rtsp://***@[2001:db8::2]:554/live?token=***&ch=1#f",
        ),
        # nothing to hide: unchanged
        ("http://127.0.0.1/a.mp4", "http://127.0.0.1/a.mp4"),
        ("http://h/p?token=", "http://h/p?token="),
        ("http://h/p?keyframes=1&monkey=2", "http://h/p?keyframes=1&monkey=2"),
        # not URLs: unchanged
        ("/tmp/a b.mp4", "/tmp/a b.mp4"),
        ("clip.mp4", "clip.mp4"),
        ("not a url: admin:pw@host", "not a url: admin:pw@host"),
        ("", ""),
        ("://x@y", "://x@y"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_finds_urls_in_messages() -> None:
    message = "cam1: cannot open 'rtsp://admin:hunter2@10.0.0.5/s?token=tk' (refused); retry"
    assert (
        redact_text(message)
        == "cam1: cannot open 'rtsp://***@10.0.0.5/s?token=***' (refused); retry"
    )
    assert redact_text("no url here: a:b@c") == "no url here: a:b@c"
    two = "from http://u:p@a/x to https://b/y?sig=1"
    assert redact_text(two) == "from http://***@a/x to https://b/y?sig=***"


def test_sensitive_parameter_names() -> None:
    for name in ("token", "TOKEN", "x-amz-security-token", "X-Goog-Signature", "session_token"):
        assert is_sensitive_parameter(name), name
    for name in ("res", "t", "keyframes", "width", "tokens_per_s"):
        assert not is_sensitive_parameter(name), name


def test_check_config_errors_hide_credentials() -> None:
    # A bad value that is a credentialed URL is quoted in the error: redacted, even when the
    # quote is cut short (it is redacted before it is cut).
    text = (
        '[[sources]]\ntype = "media"\nname = "cam"\n'
        'url = "rtsp://admin:hunter2@cam.example.org:554/very/long/path/that/goes/on?token=s3cret"\n'
        "loop = 7\n"
        "[webrtc]\n"
        'host_addresses = ["rtsp://admin:hunter2@h"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "bad.toml")
    joined = "\n".join(info.value.errors) + str(info.value)
    assert "webrtc.host_addresses" in joined
    assert "hunter2" not in joined
    assert "s3cret" not in joined


async def test_a_credentialed_media_url_that_fails_leaks_nowhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging
    import socket

    from crossmodald.bus.events import Envelope
    from crossmodald.runtime.host import Overload
    from crossmodald.service.config import DaemonConfig
    from crossmodald.service.daemon import Daemon
    from crossmodald.service.logs import make_formatter

    # A loopback port nothing listens on: the open fails at once (connection refused).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://admin:hunter2@127.0.0.1:{port}/clip.mp4?token=s3cret&res=hd"
    config = DaemonConfig.model_validate(
        {
            "sources": [{"type": "media", "name": "cam", "url": url, "timeout_s": 5}],
            "api": {"enabled": False},
        }
    )
    events: list[dict[str, object]] = []

    def collect(envelope: Envelope) -> None:
        events.append(envelope.as_dict())

    daemon = Daemon(config, overload=Overload.BLOCK, serve_api=False, listeners=(collect,))
    with caplog.at_level(logging.DEBUG):
        code = await asyncio.wait_for(daemon.run(asyncio.Event(), exit_when_sources_end=True), 60)
    assert code == 1  # the stream failed
    state = daemon.stream_states["cam"]
    faults = [e for e in events if e["type"] == "stream.fault"]
    assert faults, events
    entry = daemon.sources()[0]
    # Each place the URL can leave by: the stream's error (/v1/streams), the stream.fault
    # event, the log, /v1/sources.
    places = {
        "error": str(state.error),
        "events": repr(events),
        "log": caplog.text,
        "sources": repr(entry),
        "log (daemon formatter)": "\n".join(
            make_formatter("json").format(record) for record in caplog.records
        ),
    }
    for where, text in places.items():
        assert "hunter2" not in text, where
        assert "s3cret" not in text, where
    assert f"127.0.0.1:{port}" in str(state.error)  # still says what failed
    assert entry["config"]["url"] == (f"http://***@127.0.0.1:{port}/clip.mp4?token=***&res=hd")


def test_the_log_formatter_redacts_what_a_library_logs() -> None:
    import logging

    from crossmodald.service.logs import make_formatter

    record = logging.LogRecord(
        "libav", logging.ERROR, __file__, 1, "open %s failed", ("rtsp://u:pw@cam/s?sig=zz",), None
    )
    for fmt in ("plain", "json"):
        line = make_formatter(fmt).format(record)
        assert "rtsp://***@cam/s?sig=***" in line
        assert "pw@" not in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a request line: no scheme, the target's credential parameters hidden
        (
            "Bad status line: b'GET /v1/events?access_token=abc123 HTTP/9.9'",
            "Bad status line: b'GET /v1/events?access_token=*** HTTP/9.9'",
        ),
        ("GET /p?res=hd&token=zz;sig=1 HTTP/1.1", "GET /p?res=hd&token=***;sig=*** HTTP/1.1"),
        # a line cut short mid-value (aiohttp quotes 100 bytes of an over-long one)
        ("b'/v1/events?access_token=abcd...'", "b'/v1/events?access_token=***'"),
        # Authorization headers, whatever the scheme; and a bare bearer credential
        ("Authorization: Bearer abc.def-123", "Authorization: ***"),
        ("'authorization': 'Basic dXNlcjpwYXNz'", "'authorization': '***'"),
        ("Proxy-Authorization: Digest x=1", "Proxy-Authorization: ***"),
        ("reading: b'Bearer abcdefgh12345678xxxx...'", "reading: b'Bearer ***'"),
        # nothing to hide: unchanged
        ("GET /v1/events?type=sync.offset HTTP/1.1", "GET /v1/events?type=sync.offset HTTP/1.1"),
        ("token must be at least 16 characters", "token must be at least 16 characters"),
        ("basic authentication failed", "basic authentication failed"),
        ("a=b&c=d", "a=b&c=d"),
    ],
)
def test_redact_text_hides_credentials_outside_urls(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # idempotent
