"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from tests.app.conftest import FAKE_MODEL, OTHER_MODEL, FakeServer


async def test_list_models(server: FakeServer) -> None:
    response = await server.client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == {FAKE_MODEL, OTHER_MODEL}
    card = cards[FAKE_MODEL]
    assert card["object"] == "model"
    assert card["owned_by"] == "slmserve"
    assert isinstance(card["created"], int)
    assert (card["engine"], card["provider"], card["state"]) == ("gguf", "cpu", "ready")
    assert (card["parallel"], card["running"], card["waiting"]) == (2, 0, 0)
    assert (card["max_queue"], card["pinned"], card["keep_alive_s"]) == (16, False, -1)
    assert (card["preload"], card["restarts"]) == (True, 0)
    assert isinstance(card["loaded_at"], int)
    assert card["context_length"] == 64


async def test_retrieve_model(server: FakeServer) -> None:
    response = await server.client.get(f"/v1/models/{OTHER_MODEL}")
    assert response.status_code == 200
    assert response.json()["id"] == OTHER_MODEL


async def test_retrieve_unknown_model_is_404(server: FakeServer) -> None:
    response = await server.client.get("/v1/models/missing")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert FAKE_MODEL in error["message"]


async def test_last_used_is_set_after_a_request(server: FakeServer) -> None:
    await server.client.post(
        "/v1/chat/completions",
        json={"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    card = (await server.client.get(f"/v1/models/{FAKE_MODEL}")).json()
    assert isinstance(card["last_used"], int)
