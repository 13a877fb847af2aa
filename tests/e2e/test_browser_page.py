"""The publish page served at ``GET /``: files, public access beside scoped routes, consistency.

No browser here (see test_browser_calibration.py for headless Chromium): the daemon serves the
page and its files without a token while WHIP and the event routes keep their scopes, every file
the page names is shipped, every element the script looks up exists, and the script parses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))
from whipkit import whip_daemon

from crossmodald.api.app import STATIC_DIR

SUBSCRIBE = "s" * 32
PUBLISH = "p" * 32
TOKENS = [
    {"name": "viewer", "token": SUBSCRIBE, "scopes": ["subscribe"]},
    {"name": "camera", "token": PUBLISH, "scopes": ["publish"]},
]


def _page() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def _script() -> str:
    return (STATIC_DIR / "app.js").read_text(encoding="utf-8")


async def test_page_and_files_are_public_while_whip_and_events_keep_their_scopes() -> None:
    async with (
        whip_daemon(plugins=[], api={"tokens": TOKENS}) as d,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{d.base_url}/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "/static/app.js" in await response.text()
        for name, kind in (
            ("app.js", "javascript"),
            ("monitor.js", "javascript"),
            ("style.css", "text/css"),
            ("index.html", "text/html"),
        ):
            async with http.get(f"{d.base_url}/static/{name}") as response:
                assert response.status == 200, name
                assert kind in response.content_type, name
                assert await response.read() == (STATIC_DIR / name).read_bytes()
        async with http.head(f"{d.base_url}/") as response:
            assert response.status == 200
        # Nothing outside the static folder is reachable through it.
        for raw in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"):
            async with http.get(URL(d.base_url + raw, encoded=True)) as response:
                assert response.status in (401, 403, 404), raw
        # The rest keeps its scopes.
        async with http.get(f"{d.base_url}/v1/streams") as response:
            assert response.status == 401
        async with http.post(
            f"{d.base_url}/v1/whip/browser",
            data="v=0\r\n",
            headers={"Content-Type": "application/sdp"},
        ) as response:
            assert response.status == 401
        async with http.post(
            f"{d.base_url}/v1/whip/browser",
            data="v=0\r\n",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {SUBSCRIBE}"},
        ) as response:
            assert response.status == 403  # a subscribe token cannot publish
        async with http.post(
            f"{d.base_url}/v1/whip/browser",
            data="not sdp",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {PUBLISH}"},
        ) as response:
            assert response.status == 400  # past auth, refused for its content
        # Writing to the page's paths is not public.
        async with http.post(f"{d.base_url}/", data="x") as response:
            assert response.status == 401


def test_every_file_the_page_names_is_shipped() -> None:
    names = re.findall(r'(?:src|href)="/static/([^"]+)"', _page())
    assert sorted(names) == ["app.js", "monitor.js", "style.css", "watch.js"]
    for name in names:
        assert (STATIC_DIR / name).is_file(), name


def test_every_element_the_script_uses_exists() -> None:
    ids = set(re.findall(r'\bid="([^"]+)"', _page()))
    used = set(re.findall(r'\$\("([^"]+)"\)', _script()))
    watch = (STATIC_DIR / "watch.js").read_text(encoding="utf-8")
    watch_used = set(re.findall(r'\$\("([^"]+)"\)', watch))
    assert watch_used - ids == set()
    # The Watch view: WHEP verbs, no STUN/TURN traffic from the page.
    assert "/v1/whep/" in watch
    assert '"Content-Type": "application/sdp"' in watch
    assert 'method: "DELETE"' in watch
    assert "iceServers: []" in watch
    assert used, "the script looks up no element: the pattern no longer matches it"
    assert used - ids == set()
    monitor = (STATIC_DIR / "monitor.js").read_text(encoding="utf-8")
    looked_up = set(re.findall(r'getElementById\("([^"]+)"\)', monitor))
    looked_up |= {f"view-{v}" for v in ("monitor", "publish")} | {"tab-monitor", "tab-publish"}
    assert {"streams", "monitor-status"} <= looked_up
    assert looked_up - ids == set()
    # The events channel label and WHIP verbs the daemon expects.
    script = _script()
    assert 'createDataChannel("events")' in script
    assert 'method: "POST"' in script
    assert 'method: "DELETE"' in script
    assert '"Content-Type": "application/sdp"' in script
    assert "iceServers: []" in script  # no STUN/TURN traffic from the page


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("name", ["app.js", "monitor.js", "watch.js"])
def test_script_parses(name: str) -> None:
    result = subprocess.run(
        ["node", "--check", str(STATIC_DIR / name)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
