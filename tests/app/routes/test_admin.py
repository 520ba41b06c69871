"""POST /admin/models/{id}/load and /unload."""

from __future__ import annotations

from tests.app.conftest import FAKE_MODEL, FakeServer


async def test_unload_then_load(server: FakeServer) -> None:
    response = await server.client.post(f"/admin/models/{FAKE_MODEL}/unload")
    assert response.status_code == 200
    card = response.json()
    assert (card["state"], card["state_reason"]) == ("unloaded", "unloaded by an administrator")
    assert (await server.client.get("/ready")).status_code == 200
    response = await server.client.post(f"/admin/models/{FAKE_MODEL}/load")
    assert response.json()["state"] == "ready"
    assert len(server.workers[FAKE_MODEL]) == 2


async def test_a_request_after_unload_loads_the_model_again(server: FakeServer) -> None:
    await server.client.post(f"/admin/models/{FAKE_MODEL}/unload")
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x y"}]}
    response = await server.client.post("/v1/chat/completions", json=body)
    assert response.json()["choices"][0]["message"]["content"] == "y x"
    assert len(server.workers[FAKE_MODEL]) == 2


async def test_unknown_model(server: FakeServer) -> None:
    for action in ("load", "unload"):
        response = await server.client.post(f"/admin/models/nope/{action}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"
