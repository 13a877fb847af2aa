"""Bearer tokens and scopes on every endpoint, open mode on loopback, CORS, and TLS.

All against a real API server on 127.0.0.1 (port 0) with a real bus.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_support import StartServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from crossmodald.api import auth as auth_mod
from crossmodald.api.auth import Authenticator, required_scope, tls_context
from crossmodald.service.config import (
    ApiConfig,
    ApiTokenConfig,
    ConfigError,
    TlsConfig,
    load_config_text,
)

SUB = "sub-token-0123456789abcdef"
PUB = "pub-token-0123456789abcdef"
ADM = "adm-token-0123456789abcdef"
WRONG = "not-a-token-0123456789abcdef"


def _tokens() -> list[ApiTokenConfig]:
    return [
        ApiTokenConfig.model_validate({"name": "viewer", "token": SUB, "scopes": ["subscribe"]}),
        ApiTokenConfig.model_validate({"name": "camera", "token": PUB, "scopes": ["publish"]}),
        ApiTokenConfig.model_validate({"name": "ops", "token": ADM, "scopes": ["admin"]}),
    ]


def _secured(**extra: Any) -> ApiConfig:
    return ApiConfig(port=0, tokens=_tokens(), **extra)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


#: (method, path, scope the route needs, status with the right token).
#: POST/DELETE /v1/sources and POST /v1/reload may not exist in this app: with the right token
#: they get past auth to the router (404/405), which is what is checked.
ENDPOINTS: list[tuple[str, str, str, set[int]]] = [
    ("GET", "/v1/events", "subscribe", {200}),
    ("GET", "/v1/events/ws", "subscribe", {101}),
    ("GET", "/v1/streams", "subscribe", {200}),
    ("GET", "/v1/streams/testcard", "subscribe", {200}),
    ("GET", "/metrics", "subscribe", {200}),
    ("POST", "/v1/sources", "admin", {200, 201, 400, 404, 405, 415, 422}),
    ("DELETE", "/v1/sources/testcard", "admin", {200, 204, 404, 405}),
    ("POST", "/v1/reload", "admin", {200, 202, 404, 405}),
    ("POST", "/v1/whip", "publish", {201, 400, 404, 405, 415}),
]
#: A token that lacks each scope.
LACKING = {"subscribe": PUB, "publish": SUB, "admin": SUB}
RIGHT = {"subscribe": SUB, "publish": PUB, "admin": ADM}


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    if url.endswith("/v1/events/ws"):
        try:
            ws = await session.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, dict(exc.headers or {}), None
        await ws.close()
        return 101, {}, None
    async with session.request(method, url, headers=headers) as resp:
        # SSE streams forever: read the headers only, and JSON bodies of errors.
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, dict(resp.headers), body


@pytest.mark.parametrize(("method", "path", "scope", "ok"), ENDPOINTS)
async def test_endpoint_without_wrong_lacking_and_right_token(
    start_server: StartServer, method: str, path: str, scope: str, ok: set[int]
) -> None:
    server = await start_server(config=_secured())
    url = server.url + path
    async with aiohttp.ClientSession() as session:
        status, headers, body = await _call(session, method, url, {})
        assert status == 401
        if body is not None:
            assert scope in body["error"]
            assert headers["WWW-Authenticate"].startswith('Bearer realm="crossmodald"')

        status, headers, body = await _call(session, method, url, _bearer(WRONG))
        assert status == 401
        if body is not None:
            assert body == {"error": "invalid bearer token"}
            assert 'error="invalid_token"' in headers["WWW-Authenticate"]

        status, headers, body = await _call(session, method, url, _bearer(LACKING[scope]))
        assert status == 403
        if body is not None:
            assert f"lacks scope {scope!r}" in body["error"]
            assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]

        status, _, _ = await _call(session, method, url, _bearer(RIGHT[scope]))
        assert status in ok

        # admin implies every scope
        status, _, _ = await _call(session, method, url, _bearer(ADM))
        assert status in ok


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_are_public(start_server: StartServer, path: str) -> None:
    server = await start_server(config=_secured())
    async with aiohttp.ClientSession() as session, session.get(server.url + path) as resp:
        assert resp.status in (200, 503)  # readyz: the fake is not ready
        assert "error" not in await resp.json()


async def test_malformed_authorization_header(start_server: StartServer) -> None:
    server = await start_server(config=_secured())
    async with aiohttp.ClientSession() as session:
        for value in (f"Basic {SUB}", "Bearer", "Bearer   ", SUB, "x" * 5000):
            async with session.get(
                server.url + "/v1/streams", headers={"Authorization": value}
            ) as resp:
                assert resp.status == 401, value
                assert "error" in await resp.json()


async def test_access_token_query_only_on_event_routes(start_server: StartServer) -> None:
    server = await start_server(config=_secured())
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/v1/events", params={"access_token": SUB}) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
        ws = await session.ws_connect(server.url + f"/v1/events/ws?access_token={SUB}")
        await ws.close()
        async with session.get(server.url + "/v1/streams", params={"access_token": SUB}) as resp:
            assert resp.status == 401


async def test_token_never_in_error_or_repr() -> None:
    config = _secured()
    assert SUB not in repr(config)
    assert SUB not in str(config.model_dump())
    bad = f'[[api.tokens]]\nname = "x"\ntoken = "{SUB}"\nscopes = ["root"]\n'
    with pytest.raises(ConfigError) as info:
        load_config_text(bad)
    assert SUB not in str(info.value)
    assert "api.tokens.0.scopes.0" in str(info.value)
    dup = (
        f'[[api.tokens]]\nname = "a"\ntoken = "{SUB}"\nscopes = ["admin"]\n'
        f'[[api.tokens]]\nname = "b"\ntoken = "{SUB}"\nscopes = ["admin"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(dup)
    assert SUB not in str(info.value)
    assert "same value" in str(info.value)
    with pytest.raises(ValidationError, match="at least 16 characters"):
        ApiTokenConfig.model_validate({"name": "x", "token": "short", "scopes": ["admin"]})


def test_open_api_off_loopback_is_refused_unless_chosen() -> None:
    with pytest.raises(ConfigError, match=r"api: no \[\[api.tokens\]\].*'0.0.0.0'"):
        load_config_text('[api]\nhost = "0.0.0.0"\n')
    assert load_config_text('[api]\nhost = "::1"\n').api.host == "::1"
    cfg = load_config_text('[api]\nhost = "0.0.0.0"\nallow_unauthenticated = true\n')
    assert cfg.api.allow_unauthenticated
    with_tokens = load_config_text(
        f'[api]\nhost = "0.0.0.0"\n[[api.tokens]]\nname = "a"\ntoken = "{ADM}"\nscopes = ["admin"]\n'
    )
    assert with_tokens.api.tokens[0].name == "a"


def test_lookup_compares_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a match on the first token costs as many comparisons as a miss."""
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", counting)
    authn = Authenticator(_tokens(), "127.0.0.1")
    for presented, name in ((SUB, "viewer"), (ADM, "ops"), (WRONG, None)):
        calls.clear()
        principal = authn.lookup(presented)
        assert (principal.name if principal else None) == name
        assert len(calls) == 3


def test_scope_map_defaults_closed() -> None:
    assert required_scope("GET", "/healthz") is None
    assert required_scope("GET", "/v1/events/ws") == "subscribe"
    assert required_scope("DELETE", "/v1/sources/x") == "admin"
    assert required_scope("PATCH", "/v1/whip/abc") == "publish"
    assert required_scope("GET", "/v1/something-new") == "subscribe"
    assert required_scope("POST", "/v1/something-new") == "admin"
    assert required_scope("POST", "/healthz") == "admin"
    assert required_scope("GET", "/healthzzz") == "subscribe"  # prefixes match whole segments


# -- open mode on loopback ------------------------------------------------------------------------


async def test_open_on_loopback_and_host_guard(start_server: StartServer) -> None:
    server = await start_server(config=ApiConfig(port=0))
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/v1/streams") as resp:
            assert resp.status == 200
        for host in (f"localhost:{server.port}", f"[::1]:{server.port}", "127.0.0.1"):
            async with session.get(server.url + "/v1/streams", headers={"Host": host}) as resp:
                assert resp.status == 200, host
        # DNS rebinding: a foreign name resolving to 127.0.0.1.
        async with session.get(
            server.url + "/v1/streams", headers={"Host": f"evil.example:{server.port}"}
        ) as resp:
            assert resp.status == 403
            assert "does not name this machine" in (await resp.json())["error"]


# -- CORS -----------------------------------------------------------------------------------------


async def test_cors_allow_list(start_server: StartServer) -> None:
    good = "https://dash.example.org"
    server = await start_server(config=_secured(cors_origins=[good]))
    async with aiohttp.ClientSession() as session:
        # Preflight: answered without a token.
        async with session.options(
            server.url + "/v1/streams",
            headers={
                "Origin": good,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        ) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == good
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        # An allowed origin's answers carry the headers: JSON, errors and SSE streams alike.
        async with session.get(
            server.url + "/v1/streams", headers={"Origin": good, **_bearer(SUB)}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == good
            assert resp.headers["Vary"] == "Origin"
        async with session.get(server.url + "/v1/streams", headers={"Origin": good}) as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == good
        async with session.get(
            server.url + "/v1/events", headers={"Origin": good, **_bearer(SUB)}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == good
        # A foreign origin is refused outright (a form POST would otherwise act unseen).
        for method in ("GET", "POST", "OPTIONS"):
            async with session.request(
                method,
                server.url + "/v1/streams",
                headers={
                    "Origin": "https://evil.example",
                    "Access-Control-Request-Method": "GET",
                    **_bearer(ADM),
                },
            ) as resp:
                assert resp.status == 403, method
                assert "Access-Control-Allow-Origin" not in resp.headers
                assert "not allowed" in (await resp.json())["error"]
        # Same-origin pages (the daemon's own) pass.
        async with session.get(
            server.url + "/v1/streams", headers={"Origin": server.url, **_bearer(SUB)}
        ) as resp:
            assert resp.status == 200


def test_cors_origin_validation() -> None:
    ApiConfig(cors_origins=["*", "http://localhost:3000", "https://[::1]:8443"])
    for bad in ("https://x.org/path", "x.org", "ftp://x.org", "https://x.org:99999999"):
        with pytest.raises(ValidationError, match="expected an origin"):
            ApiConfig(cors_origins=[bad])


# -- TLS ------------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_serves_https_with_tokens(start_server: StartServer, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = await start_server(config=_secured(tls=TlsConfig(cert=cert, key=key)))
    client_ctx = ssl.create_default_context(cafile=str(cert))
    https = f"https://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(https + "/v1/streams", headers=_bearer(SUB), ssl=client_ctx) as r:
            assert r.status == 200
            assert [s["name"] for s in (await r.json())["streams"]] == ["testcard", "cam1"]
        async with session.get(https + "/v1/streams", ssl=client_ctx) as r:
            assert r.status == 401
        # Plain HTTP to the TLS port gets no API answer.
        with pytest.raises(aiohttp.ClientError):
            async with session.get(server.url + "/healthz") as r:
                pytest.fail(f"plaintext HTTP was answered on the TLS port: {r.status}")


def test_tls_bad_files_fail_with_one_line(tmp_path: Path) -> None:
    cert, _key = _self_signed(tmp_path)
    with pytest.raises(ValueError, match=r"api.tls: key '.*missing.pem' is not a readable file"):
        tls_context(TlsConfig(cert=cert, key=tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    with pytest.raises(ValueError, match=r"api.tls: cannot load certificate") as info:
        tls_context(TlsConfig(cert=cert, key=garbage))
    assert "\n" not in str(info.value)


# -- sanity: the auth middleware does not slow event delivery -----------------------------------


async def test_authorised_subscriber_receives_events(start_server: StartServer) -> None:
    from api_support import ev, read_sse

    server = await start_server(config=_secured())
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + "/v1/events", headers=_bearer(SUB)) as resp,
    ):
        assert resp.status == 200
        await asyncio.sleep(0.05)
        server.bus.publish(ev(1))
        (message,) = await read_sse(resp, 1)
        assert json.loads(message.data)["seq"] == 1
