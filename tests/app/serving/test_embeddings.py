"""POST /v1/embeddings over the fake engine."""

from __future__ import annotations

import base64
import struct

from tests.app.conftest import FAKE_MODEL, FakeServer

URL = "/v1/embeddings"


async def test_float_embeddings(server: FakeServer) -> None:
    response = await server.client.post(URL, json={"model": FAKE_MODEL, "input": ["a b", "c"]})
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == FAKE_MODEL
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(item["object"] == "embedding" for item in body["data"])
    vector = body["data"][0]["embedding"]
    assert len(vector) == 4
    assert abs(sum(v * v for v in vector) - 1) < 1e-9
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_base64_embeddings_decode_to_the_floats(server: FakeServer) -> None:
    floats = (await server.client.post(URL, json={"model": FAKE_MODEL, "input": "hi"})).json()
    encoded = (
        await server.client.post(
            URL, json={"model": FAKE_MODEL, "input": "hi", "encoding_format": "base64"}
        )
    ).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack("<4f", raw)
    expected = floats["data"][0]["embedding"]
    assert all(abs(a - b) < 1e-6 for a, b in zip(decoded, expected, strict=True))


async def test_refusals(server: FakeServer) -> None:
    for body, param in (
        ({"input": [[1, 2]]}, "input"),
        ({"input": "x", "dimensions": 2}, "dimensions"),
        ({"input": []}, "input"),
    ):
        response = await server.client.post(URL, json={"model": FAKE_MODEL, **body})
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param
    missing = await server.client.post(URL, json={"model": "nope", "input": "x"})
    assert missing.status_code == 404
