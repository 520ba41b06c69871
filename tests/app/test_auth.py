"""API keys: 401 in the envelope, public probes, /metrics keyed by setting. The admin key:
/admin/* needs it, or a loopback address when none is set (403 `admin_disabled` otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.auth import ApiKeys, is_loopback
from app.main import build_app
from app.settings import ServerSettings
from tests.app.conftest import FAKE_MODEL, fake_models
from tests.fakes import InProcessWorker
from tests.metrics_text import value

CHAT = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "a b"}]}


async def client_for(settings: ServerSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(settings, fake_models(), worker_factory=InProcessWorker)
    async with app.router.lifespan_context(app):
        await app.state.pool.wait_preloaded()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nfile-key\n\n")
    async for client in client_for(ServerSettings(api_key="k1, k2", api_key_file=key_file)):
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_missing_and_wrong_keys_are_401_in_the_envelope(keyed: httpx.AsyncClient) -> None:
    for headers in ({}, bearer("nope"), {"Authorization": "Basic azE="}, bearer("")):
        response = await keyed.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    for path in ("/v1/models", f"/v1/models/{FAKE_MODEL}"):
        assert (await keyed.get(path)).status_code == 401
    assert (await keyed.post(f"/admin/models/{FAKE_MODEL}/unload")).status_code == 401


async def test_a_bad_body_without_a_key_is_still_401(keyed: httpx.AsyncClient) -> None:
    response = await keyed.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


async def test_every_configured_key_works(keyed: httpx.AsyncClient) -> None:
    for key in ("k1", "k2", "file-key"):
        response = await keyed.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "b a"
    assert (await keyed.get("/v1/models", headers=bearer("k2"))).status_code == 200


async def test_probes_docs_and_metrics_are_public_by_default(keyed: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready", "/openapi.json", "/metrics"):
        assert (await keyed.get(path)).status_code == 200, path
    await keyed.post("/v1/chat/completions", json=CHAT)
    metrics = (await keyed.get("/metrics")).text
    assert value(metrics, "slmserve_request_errors_total", code="invalid_api_key") == 1


async def test_metrics_can_require_the_key() -> None:
    settings = ServerSettings(api_key="k1", metrics_require_api_key=True)
    async for client in client_for(settings):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer("k1"))).status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_no_keys_means_open() -> None:
    async for client in client_for(ServerSettings()):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


def test_keys_are_compared_by_digest() -> None:
    keys = ApiKeys(["secret"])
    assert keys.accepts("secret")
    assert not keys.accepts("secret ")
    assert not keys.accepts("")
    assert not ApiKeys([]).enabled


LOAD = f"/admin/models/{FAKE_MODEL}/load"
UNLOAD = f"/admin/models/{FAKE_MODEL}/unload"


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    return error


async def test_loopback_without_an_admin_key_keeps_admin_open() -> None:
    async for client in client_for(ServerSettings(host="127.0.0.1")):
        response = await client.post(UNLOAD)
        assert response.status_code == 200
        assert response.json()["id"] == FAKE_MODEL
        assert (await client.post(LOAD)).status_code == 200


async def test_loopback_without_an_admin_key_follows_the_api_keys() -> None:
    async for client in client_for(ServerSettings(host="localhost", api_key="k1")):
        assert_envelope(await client.post(UNLOAD), 401, "invalid_api_key")
        assert (await client.post(UNLOAD, headers=bearer("k1"))).status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "slmserve.example"])
async def test_other_addresses_without_an_admin_key_refuse_admin(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    async for client in client_for(ServerSettings(host=host, api_key="k1")):
        for headers in ({}, bearer("k1")):
            response = await client.post(UNLOAD, headers=headers)
            error = assert_envelope(response, 403, "admin_disabled")
            assert error["param"] is None
            assert "SLMSERVE_ADMIN_KEY" in str(error["message"])
            assert host in str(error["message"])
        # An unknown admin path gives nothing away either; the API itself is unaffected.
        assert_envelope(await client.get("/admin/nothing"), 403, "admin_disabled")
        chat = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("k1"))
        assert chat.status_code == 200
        assert (await client.get("/ready")).status_code == 200
    assert "set SLMSERVE_ADMIN_KEY to enable them" in caplog.text


async def test_the_admin_key_opens_admin_and_nothing_else_does(tmp_path: Path) -> None:
    key_file = tmp_path / "admin-keys"
    key_file.write_text("# ops\nfile-admin\n")
    settings = ServerSettings(
        host="0.0.0.0", api_key="k1", admin_key="adm", admin_key_file=key_file
    )
    async for client in client_for(settings):
        missing = await client.post(UNLOAD)
        assert_envelope(missing, 401, "invalid_admin_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        for headers in (bearer("nope"), bearer("k1"), bearer(""), {"Authorization": "Basic YWRt"}):
            assert_envelope(await client.post(UNLOAD, headers=headers), 401, "invalid_admin_key")
        for key in ("adm", "file-admin"):
            response = await client.post(LOAD, headers=bearer(key))
            assert response.status_code == 200
            assert response.json()["id"] == FAKE_MODEL
        # The admin key is no API key.
        chat = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("adm"))
        assert_envelope(chat, 401, "invalid_api_key")
        listing = await client.get("/v1/models", headers=bearer("adm"))
        assert_envelope(listing, 401, "invalid_api_key")
        assert (await client.get("/v1/models", headers=bearer("k1"))).status_code == 200


async def test_an_admin_key_on_loopback_still_shuts_out_api_keys() -> None:
    settings = ServerSettings(host="127.0.0.1", api_key="k1", admin_key="adm")
    async for client in client_for(settings):
        assert_envelope(await client.post(UNLOAD, headers=bearer("k1")), 401, "invalid_admin_key")
        assert (await client.post(UNLOAD, headers=bearer("adm"))).status_code == 200


async def test_an_admin_key_also_listed_as_an_api_key_opens_both() -> None:
    settings = ServerSettings(host="0.0.0.0", api_key="k1,shared", admin_key="shared")
    async for client in client_for(settings):
        chat = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("shared"))
        assert chat.status_code == 200
        assert (await client.post(UNLOAD, headers=bearer("shared"))).status_code == 200


async def test_an_admin_key_without_api_keys_leaves_the_api_open() -> None:
    async for client in client_for(ServerSettings(host="0.0.0.0", admin_key="adm")):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert_envelope(await client.post(UNLOAD), 401, "invalid_admin_key")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
