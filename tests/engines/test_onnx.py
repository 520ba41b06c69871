"""The ONNX Runtime GenAI engine on the SmolLM2 int4 CPU model converted by `make models`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import onnxruntime_genai as og
import pytest

from engines.base import Accepted, Failed, Finished, GenerationRequest, Message, TokenEvent
from engines.config import ModelConfig
from engines.errors import ModelLoadError
from engines.onnx import OnnxEngine
from engines.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Name a colour."]


@pytest.fixture(scope="module")
def engine(onnx_model_path: Path) -> Iterator[OnnxEngine]:
    config = ModelConfig(
        name="smol-onnx", engine="onnx", path=onnx_model_path, parallel=3, context_length=1024
    )
    loaded = OnnxEngine(config)
    yield loaded
    loaded.close()


def ask(question: str, request_id: str = "r", **fields: object) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=(Message("user", question),),
        sampling=fields.pop("sampling", GREEDY),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def run_alone(engine: OnnxEngine, request: GenerationRequest) -> tuple[str, Finished]:
    text = ""
    for event in engine.generate(request):
        if isinstance(event, Failed):
            raise event.to_error()
        if isinstance(event, TokenEvent | Finished):
            text += event.text
    assert isinstance(event, Finished)
    return text, event


def test_info(engine: OnnxEngine) -> None:
    assert (engine.info.engine, engine.info.provider) == ("onnx", "cpu")
    assert engine.info.context_length == 1024
    assert engine.info.has_chat_template


def test_prompt_tokens_match_onnxruntime_genais_own_template_and_tokenizer(
    engine: OnnxEngine, onnx_model_path: Path
) -> None:
    model = og.Model(str(onnx_model_path))
    tokenizer = og.Tokenizer(model)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime number larger than ten, please."},
    ]
    prompt = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    expected = len(tokenizer.encode(prompt))
    request = GenerationRequest(
        "count", tuple(Message(m["role"], m["content"]) for m in messages), max_tokens=1
    )
    assert run_alone(engine, request)[1].prompt_tokens == expected


def test_interleaved_greedy_requests_match_each_alone(engine: OnnxEngine) -> None:
    alone = {
        str(i): run_alone(engine, ask(q, str(i), max_tokens=25))[0] for i, q in enumerate(QUESTIONS)
    }
    texts = dict.fromkeys(alone, "")
    for i, question in enumerate(QUESTIONS):
        assert isinstance(engine.submit(ask(question, str(i), max_tokens=25)), Accepted)
    while engine.has_work():
        for event in engine.step():
            if isinstance(event, TokenEvent | Finished):
                texts[event.request_id] += event.text
    assert texts == alone


def test_seed_reproducibility_and_penalties(engine: OnnxEngine) -> None:
    seeded = SamplingParams(temperature=0.9, seed=42)
    first = run_alone(engine, ask(QUESTIONS[1], sampling=seeded, max_tokens=25))[0]
    assert run_alone(engine, ask(QUESTIONS[1], sampling=seeded, max_tokens=25))[0] == first
    penalised = SamplingParams(
        temperature=0.9, seed=42, presence_penalty=2.0, frequency_penalty=2.0, min_p=0.2
    )
    assert run_alone(engine, ask(QUESTIONS[1], sampling=penalised, max_tokens=25))[0] != first


def test_max_tokens_and_stop(engine: OnnxEngine) -> None:
    _, finished = run_alone(engine, ask("Tell me a long story.", max_tokens=6))
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 6)
    full, _ = run_alone(engine, ask("Count from 1 to 10 with commas.", max_tokens=40))
    assert "4" in full
    text, finished = run_alone(
        engine, ask("Count from 1 to 10 with commas.", max_tokens=40, stop=("4",))
    )
    assert (text, finished.finish_reason) == (full[: full.index("4")], "stop")


def test_cancel_drops_the_generator(engine: OnnxEngine) -> None:
    engine.submit(ask("Tell me a long story.", "long", max_tokens=200))
    engine.step()
    engine.cancel("long")
    assert not engine.has_work()


def test_context_length_exceeded(engine: OnnxEngine) -> None:
    event = engine.submit(ask("hello " * 1100))
    assert isinstance(event, Failed)
    assert event.kind == "context_length_exceeded"


@pytest.mark.parametrize(
    ("provider", "runtime_message"),
    [
        ("cuda", "Cuda interface not available"),
        ("dml", "has not been built with DML support"),
    ],
)
def test_unavailable_provider_fails_with_the_runtimes_message(
    onnx_model_path: Path, provider: str, runtime_message: str
) -> None:
    config = ModelConfig(name="x", engine="onnx", path=onnx_model_path, provider=provider)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=runtime_message):
        OnnxEngine(config)


def test_auto_resolves_to_cpu_here(onnx_model_path: Path) -> None:
    config = ModelConfig(name="x", engine="onnx", path=onnx_model_path, provider="auto")
    assert OnnxEngine(config).info.provider == "cpu"


def test_a_folder_without_genai_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"genai_config\.json"):
        OnnxEngine(ModelConfig(name="x", engine="onnx", path=tmp_path))


@pytest.fixture(scope="module")
def batched(onnx_model_path: Path) -> Iterator[OnnxEngine]:
    config = ModelConfig(
        name="batched",
        engine="onnx",
        path=onnx_model_path,
        parallel=3,
        context_length=1024,
        batching="engine",
    )
    loaded = OnnxEngine(config)
    yield loaded
    loaded.close()


def run_together(engine: OnnxEngine, requests: list[GenerationRequest]) -> dict[str, str]:
    texts = {request.request_id: "" for request in requests}
    for request in requests:
        assert isinstance(engine.submit(request), Accepted)
    while engine.has_work():
        for event in engine.step():
            assert not isinstance(event, Failed), event
            if isinstance(event, TokenEvent | Finished):
                texts[event.request_id] += event.text
    return texts


def test_og_engine_batches_give_the_interleaved_greedy_text(
    engine: OnnxEngine, batched: OnnxEngine
) -> None:
    requests = [ask(q, str(i), max_tokens=20) for i, q in enumerate(QUESTIONS)]
    assert run_together(batched, requests) == run_together(engine, requests)


def test_og_engine_stops_counts_and_cancels(batched: OnnxEngine) -> None:
    full, _ = run_alone(batched, ask("Count from 1 to 10 with commas.", max_tokens=40))
    text, finished = run_alone(
        batched, ask("Count from 1 to 10 with commas.", max_tokens=40, stop=("4",))
    )
    assert (text, finished.finish_reason) == (full[: full.index("4")], "stop")
    _, finished = run_alone(batched, ask("Tell me a long story.", max_tokens=7))
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 7)
    batched.submit(ask("Tell me a long story.", "long", max_tokens=200))
    batched.step()
    batched.cancel("long")
    assert not batched.has_work()


def test_og_engine_refuses_what_it_cannot_do_on_cpu(batched: OnnxEngine) -> None:
    penalised = SamplingParams(temperature=0.7, presence_penalty=1.0)
    refused = batched.submit(ask("Hi", sampling=penalised))
    assert isinstance(refused, Failed)
    assert (refused.kind, refused.param) == ("invalid_request", "presence_penalty")
    seeded = SamplingParams(temperature=0.7, seed=3)
    events = list(batched.generate(ask("Hi", sampling=seeded)))
    failure = events[-1]
    assert isinstance(failure, Failed)
    assert failure.param == "seed"
    assert "dynamic batching" in failure.message
    assert not batched.has_work()


def test_batching_is_an_onnx_setting(default_model_path: Path) -> None:
    with pytest.raises(ValueError, match="batching applies to onnx models"):
        ModelConfig(name="x", engine="gguf", path=default_model_path, batching="engine")
