"""The engine pool end to end: eviction, keep_alive, pinning, lazy loads, queueing, crashes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.e2e.conftest import ChatMessages, openai_client
from tests.e2e.server import LiveServer, pid_exists, run_server, write_models

ServerStarter = Callable[..., LiveServer]
QUESTION: ChatMessages = [{"role": "user", "content": "Tell me about the moon."}]
# At temperature 0 the default model writes this until max_tokens (no early end token).
LONG: ChatMessages = [{"role": "user", "content": "Write a very long story about dragons."}]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerStarter]:
    with ExitStack() as stack:

        def start(models: list[dict[str, Any]], pool: dict[str, Any] | None = None) -> LiveServer:
            index = len(list(tmp_path.glob("models-*.yaml")))
            models_file = write_models(tmp_path / f"models-{index}.yaml", models, pool)
            return stack.enter_context(run_server(models_file, tmp_path / f"server-{index}.log"))

        yield start


@pytest.fixture
def smol(default_model_path: Path) -> Callable[..., dict[str, Any]]:
    def model(name: str, **fields: Any) -> dict[str, Any]:
        config = {"name": name, "engine": "gguf", "path": str(default_model_path)}
        return {**config, "context_length": 512, "parallel": 1, **fields}

    return model


def ask(server: LiveServer, model: str, max_tokens: int = 4) -> str:
    client = openai_client(server)
    completion = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        max_tokens=max_tokens,
    )
    content = completion.choices[0].message.content
    assert content
    return content


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def worker_pids(server: LiveServer) -> set[int]:
    return {child.pid for child in psutil.Process(server.process.pid).children()}


def test_one_loaded_model_alternates_with_eviction(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server([smol("a"), smol("b", preload=False)], {"max_loaded_models": 1})
    pids = {"a": server.models()["a"]["pid"]}
    for name, other in [("b", "a"), ("a", "b"), ("b", "a"), ("a", "b")]:
        ask(server, name)
        models = server.models()
        assert models[name]["state"] == "ready"
        assert models[other]["state"] == "unloaded"
        assert models[other]["state_reason"] == f"evicted to make room for {name}"
        assert models[other]["resident_memory_bytes"] is None
        # The evicted worker process is gone, so its memory is back with the system.
        assert not pid_exists(pids[other])
        assert worker_pids(server) == {models[name]["pid"]}
        assert models[name]["resident_memory_bytes"] > 50 * 2**20
        pids[name] = models[name]["pid"]
    assert httpx.get(f"{server.base_url}/ready").status_code == 200


def test_one_loaded_model_alternates_between_two_families_and_engines(
    start_server: ServerStarter,
    smol: Callable[..., dict[str, Any]],
    gemma_model_path: Path,
    gemma_onnx_model_path: Path,
) -> None:
    """Eviction between different real models: SmolLM2 (GGUF), Gemma 3 (GGUF and ONNX)."""
    base = {"context_length": 1024, "parallel": 1, "preload": False}
    server = start_server(
        [
            smol("smollm2"),
            {"name": "gemma3", "engine": "gguf", "path": str(gemma_model_path), **base},
            {"name": "gemma3-onnx", "engine": "onnx", "path": str(gemma_onnx_model_path), **base},
        ],
        {"max_loaded_models": 1},
    )
    client = openai_client(server)
    previous = "smollm2"
    for name in ["gemma3", "smollm2", "gemma3-onnx", "gemma3", "smollm2"]:
        if name == "smollm2":
            ask(server, name)
        else:  # a base model: raw prompts only
            completion = client.completions.create(
                model=name, prompt="The capital of France is", max_tokens=4, temperature=0
            )
            assert completion.choices[0].text
        models = server.models()
        assert models[name]["state"] == "ready"
        assert models[previous]["state"] == "unloaded"
        assert models[previous]["state_reason"] == f"evicted to make room for {name}"
        assert worker_pids(server) == {models[name]["pid"]}
        previous = name


def test_keep_alive_unloads_an_idle_worker_and_the_next_request_reloads(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server([smol("m", keep_alive="1s")])
    ask(server, "m")
    pid = server.models()["m"]["pid"]
    wait_for(lambda: server.models()["m"]["state"] == "unloaded", timeout_s=10)
    card = server.models()["m"]
    assert card["state_reason"] == "idle for 1s (keep_alive)"
    wait_for(lambda: not pid_exists(pid), timeout_s=10)
    assert httpx.get(f"{server.base_url}/ready").status_code == 200
    ask(server, "m")
    card = server.models()["m"]
    assert card["state"] == "ready"
    assert card["pid"] != pid


def test_pinned_model_is_never_evicted(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server(
        [smol("pinned", pinned=True), smol("a", preload=False), smol("b", preload=False)],
        {"max_loaded_models": 2},
    )
    pinned_pid = server.models()["pinned"]["pid"]
    for name in ["a", "b", "a", "b"]:
        ask(server, name)
        assert server.models()["pinned"]["pid"] == pinned_pid
    assert server.models()["a"]["state_reason"] == "evicted to make room for b"


def test_no_room_next_to_pinned_models_is_a_clear_503(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server(
        [smol("pinned", pinned=True), smol("other", preload=False)], {"max_loaded_models": 1}
    )
    with pytest.raises(openai.InternalServerError) as caught:
        ask(server, "other")
    assert caught.value.status_code == 503
    assert caught.value.code == "model_unavailable"
    assert "pinned models leave no room" in caught.value.message


def test_lazy_model_reports_loading_and_its_first_request_succeeds(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server([smol("eager"), smol("lazy", preload=False)])
    ready = httpx.get(f"{server.base_url}/ready")
    assert ready.status_code == 200
    assert ready.json()["models"] == {"eager": "ready", "lazy": "unloaded"}
    answers: list[str] = []
    request = threading.Thread(target=lambda: answers.append(ask(server, "lazy")))
    request.start()
    seen: set[str] = set()
    while request.is_alive():
        body = httpx.get(f"{server.base_url}/ready").json()
        seen.add(body["models"]["lazy"])
        seen.add(server.models()["lazy"]["state"])
        time.sleep(0.01)
    request.join()
    assert "loading" in seen
    assert answers
    assert answers[0]
    assert server.models()["lazy"]["state"] == "ready"


async def test_full_queue_answers_429_with_retry_after(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server([smol("m", parallel=1, max_queue=2)])
    body = {"model": "m", "messages": LONG, "max_tokens": 60, "temperature": 0}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(5))
        )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 200, 200, 429, 429]
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
    card = server.models()["m"]
    assert (card["running"], card["waiting"]) == (0, 0)


def test_killed_worker_mid_stream_spares_other_models(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server([smol("victim"), smol("bystander")])
    bystander_result: dict[str, Any] = {}

    def bystander_stream() -> None:
        stream = openai_client(server).chat.completions.create(
            model="bystander",
            messages=LONG,
            max_tokens=120,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        bystander_result["finish"] = chunks[-2].choices[0].finish_reason
        bystander_result["usage"] = chunks[-1].usage

    bystander = threading.Thread(target=bystander_stream)
    bystander.start()
    victim_pid = server.models()["victim"]["pid"]
    body = {"model": "victim", "messages": LONG, "max_tokens": 400, "stream": True}
    payloads = []
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payloads.append(line[len("data: ") :])
            if len(payloads) == 5:
                os.kill(victim_pid, signal.SIGKILL)
    bystander.join()
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "worker_crashed"
    assert "exit code -9" in error["message"]
    assert bystander_result["finish"] == "length"
    assert bystander_result["usage"].completion_tokens == 120
    ask(server, "victim")
    card = server.models()["victim"]
    assert card["restarts"] == 1
    assert card["pid"] != victim_pid


def test_disconnects_leave_no_slot_held(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server([smol("m", parallel=1)])
    url = f"{server.base_url}/v1/chat/completions"
    long_stream = {
        "model": "m",
        "messages": LONG,
        "max_tokens": 450,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", url, json=long_stream, timeout=60) as running:
        lines = running.iter_lines()  # kept referenced: dropping it closes the stream
        next(lines)
        # A second request queues behind the first; its client gives up while it waits.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={**long_stream, "stream": False}, timeout=1.0)
        wait_for(lambda: server.models()["m"]["waiting"] == 0)
        assert server.models()["m"]["running"] == 1
        next(lines)
    wait_for(lambda: server.models()["m"]["running"] == 0)
    # A non-streaming client that gives up mid-generation frees the slot too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={**long_stream, "stream": False}, timeout=1.0)
    wait_for(lambda: server.models()["m"]["running"] == 0, timeout_s=3)
    assert ask(server, "m")


def test_admin_unload_and_load(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    server = start_server([smol("m")])
    pid = server.models()["m"]["pid"]
    unloaded = httpx.post(f"{server.base_url}/admin/models/m/unload", timeout=30)
    assert unloaded.status_code == 200
    assert (unloaded.json()["state"], unloaded.json()["pid"]) == ("unloaded", None)
    assert not pid_exists(pid)
    assert httpx.get(f"{server.base_url}/ready").status_code == 200
    loaded = httpx.post(f"{server.base_url}/admin/models/m/load", timeout=60)
    assert loaded.json()["state"] == "ready"
    assert loaded.json()["pid"] not in (None, pid)
    missing = httpx.post(f"{server.base_url}/admin/models/nope/load", timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_memory_budget_evicts_by_measured_memory_or_refuses(
    start_server: ServerStarter, smol: Callable[..., dict[str, Any]]
) -> None:
    probe = start_server([smol("probe")])
    one_worker = probe.models()["probe"]["resident_memory_bytes"]
    budget = int(one_worker * 1.5)
    server = start_server(
        [smol("a", preload=False), smol("b", preload=False)], {"memory_budget": budget}
    )
    ask(server, "a")
    ask(server, "b")
    models = server.models()
    assert models["a"]["state_reason"] == "evicted to make room for b"
    assert models["b"]["resident_memory_bytes"] <= budget
    tiny = start_server([smol("c", preload=False)], {"memory_budget": "10MB"})
    with pytest.raises(openai.InternalServerError) as caught:
        ask(tiny, "c")
    assert caught.value.status_code == 503
    assert "more than the whole memory budget" in caught.value.message
