"""API keys through the official client against the real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MODEL_NAME
from tests.e2e.server import run_server, write_models


def test_keyed_server(default_model_path: Path, tmp_path: Path) -> None:
    model = {"name": DEFAULT_MODEL_NAME, "engine": "gguf", "path": str(default_model_path)}
    models_file = write_models(tmp_path / "models.yaml", [{**model, "context_length": 512}])
    with run_server(
        models_file, tmp_path / "server.log", extra_args=("--api-key", "first,second")
    ) as server:
        messages = [{"role": "user", "content": "hi"}]
        for wrong in ("unused", "firs"):
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=wrong, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as caught:
                client.chat.completions.create(
                    model=DEFAULT_MODEL_NAME,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=2,
                )
            assert caught.value.code == "invalid_api_key"
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="second", max_retries=0)
        completion = client.chat.completions.create(
            model=DEFAULT_MODEL_NAME,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=2,
        )
        assert completion.choices[0].message.content
        assert [m.id for m in client.models.list()] == [DEFAULT_MODEL_NAME]
        assert httpx.get(f"{server.base_url}/ready").status_code == 200


def test_admin_routes_need_the_admin_key_off_loopback(
    default_model_path: Path, tmp_path: Path
) -> None:
    """Listening on 0.0.0.0 (as in the images): no admin key, 403; with one, only it opens."""
    model = {"name": DEFAULT_MODEL_NAME, "engine": "gguf", "path": str(default_model_path)}
    models_file = write_models(tmp_path / "models.yaml", [{**model, "context_length": 512}])
    load = f"/admin/models/{DEFAULT_MODEL_NAME}/load"
    public = ("--host", "0.0.0.0", "--api-key", "api")
    with run_server(models_file, tmp_path / "closed.log", extra_args=public) as server:
        for headers in ({}, {"Authorization": "Bearer api"}):
            response = httpx.post(f"{server.base_url}{load}", headers=headers, timeout=60)
            assert response.status_code == 403
            error = response.json()["error"]
            assert error["code"] == "admin_disabled"
            assert "SLMSERVE_ADMIN_KEY" in error["message"]
        assert "set SLMSERVE_ADMIN_KEY to enable them" in server.log()
    keyed = (*public, "--admin-key", "admin")
    with run_server(models_file, tmp_path / "keyed.log", extra_args=keyed) as server:
        for wrong in ("api", "nope"):
            response = httpx.post(
                f"{server.base_url}{load}", headers={"Authorization": f"Bearer {wrong}"}, timeout=60
            )
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_admin_key"
        response = httpx.post(
            f"{server.base_url}{load}", headers={"Authorization": "Bearer admin"}, timeout=60
        )
        assert response.status_code == 200
        assert response.json()["state"] == "ready"
        # The admin key is no API key.
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="admin", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.models.list()
        assert caught.value.code == "invalid_api_key"
