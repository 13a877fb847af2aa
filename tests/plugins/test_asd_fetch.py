"""``models fetch``: download over loopback HTTP, pinned sha256, atomic placement."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from crossmodald_plugins.asd.weights import (
    PUBLISHED,
    WeightsError,
    fetch_weights,
    load_light_asd,
    models_fetch_command,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@dataclass
class Server:
    base: str
    hits: list[str]


def _app(files: dict[str, bytes], hits: list[str]) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hits.append(name)
        if name not in files:
            raise web.HTTPNotFound()
        resp = web.StreamResponse()
        resp.content_length = len(files[name])
        await resp.prepare(request)
        data = files[name]
        for pos in range(0, len(data), 1 << 16):  # streamed in pieces, as a real server would
            await resp.write(data[pos : pos + (1 << 16)])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/weight/{name}", serve)
    return app


@pytest.fixture
async def server_files() -> dict[str, bytes]:
    return {}


@pytest.fixture
async def server(server_files: dict[str, bytes]) -> AsyncIterator[Server]:
    hits: list[str] = []
    runner = web.AppRunner(_app(server_files, hits))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Server(f"http://127.0.0.1:{port}/weight/", hits)
    finally:
        await runner.cleanup()


async def test_fetch_real_file_over_loopback(
    shared_models: Path, server: Server, server_files: dict[str, bytes], tmp_path: Path
) -> None:
    source = shared_models / "light-asd" / "finetuning_TalkSet.model"
    if not source.is_file():
        pytest.skip(f"Light-ASD weights not available: {source} is absent")
    server_files["finetuning_TalkSet.model"] = source.read_bytes()
    dest = tmp_path / "models"
    url = server.base + "finetuning_TalkSet.model"
    path = await asyncio.to_thread(fetch_weights, "light-asd-talkset", dest, url)
    assert path == dest / "finetuning_TalkSet.model"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PUBLISHED["light-asd-talkset"].sha256
    assert _names(dest) == ["finetuning_TalkSet.model"]
    load_light_asd(path)  # the fetched file is the real model
    # Already there with the right sha256: kept, nothing downloaded.
    again = await asyncio.to_thread(fetch_weights, "light-asd-talkset", dest, url)
    assert again == path
    assert server.hits == ["finetuning_TalkSet.model"]


async def test_sha_mismatch_is_an_error_and_leaves_nothing(
    server: Server, server_files: dict[str, bytes], tmp_path: Path
) -> None:
    server_files["pretrain_AVA_CVPR.model"] = b"tampered" * 1000
    dest = tmp_path / "models"
    with pytest.raises(WeightsError, match=r"pretrain_AVA_CVPR\.model: sha256 mismatch") as info:
        await asyncio.to_thread(
            fetch_weights, "light-asd", dest, server.base + "pretrain_AVA_CVPR.model"
        )
    assert PUBLISHED["light-asd"].sha256 in str(info.value)
    assert _names(dest) == []


async def test_http_error_is_an_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"download from .* failed"):
        await asyncio.to_thread(fetch_weights, "light-asd", tmp_path, server.base + "missing")
    assert _names(tmp_path) == []


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="unknown model 'nope': known models are light-asd"):
        fetch_weights("nope", tmp_path)


async def test_models_fetch_command(
    server: Server,
    server_files: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server_files["bad"] = b"x"
    code = await asyncio.to_thread(
        models_fetch_command, "light-asd-talkset", tmp_path, server.base + "bad"
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("crossmodald models fetch: finetuning_TalkSet.model: sha256 mismatch")
    assert err.count("\n") == 1
    assert await asyncio.to_thread(models_fetch_command, "nope", tmp_path, None) == 1
