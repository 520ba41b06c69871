"""Two model families on both engines: SmolLM2-135M (Llama, a chat model) and Gemma 3 270M (a
base model, no chat template), each as GGUF and as ONNX converted by `slmserve convert`, served
side by side by one server. Completions streamed and not, log probabilities, prompt scoring;
chat to the base model is a 400 while SmolLM2 keeps chatting beside it, and it embeds (GGUF);
and how often the converted model's greedy next token is the GGUF model's."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.conftest import openai_client
from tests.e2e.server import LiveServer, run_server, write_models

# served name -> (engine, fixture giving its path, family)
MODELS = {
    "smollm2-gguf": ("gguf", "default_model_path", "smollm2"),
    "smollm2-onnx": ("onnx", "onnx_model_path", "smollm2"),
    "gemma3-gguf": ("gguf", "gemma_model_path", "gemma3"),
    "gemma3-onnx": ("onnx", "gemma_onnx_model_path", "gemma3"),
}
# Input-grounded and free-form openings, for the greedy next-token agreement.
AGREEMENT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n <",
    "1, 2, 3, 4, 5,",
    "The opposite of hot is",
    "Water boils at a temperature of",
    "Monday, Tuesday, Wednesday,",
    "The quick brown fox jumps over the lazy",
    "import numpy as",
    "Once upon a time, there was a",
    "The largest planet in the solar system is",
    '{"name": "Alice", "age":',
    "Roses are red, violets are",
    "To be or not to be, that is the",
    "The chemical symbol for gold is",
    "January, February, March,",
    "SELECT * FROM users WHERE",
    "A triangle has three",
    "The first president of the United States was George",
    "for i in range(10):\n    print(",
    "Paris is to France as Berlin is to",
]
# Below this, a conversion has gone wrong, not merely requantized. Measured here: int4 (the
# GGUF dequantized, then quantized again) agrees on 11-12/20 (SmolLM2) and 15/20 (Gemma 3);
# an fp32 conversion of SmolLM2 on 20/20; Gemma 3 without its BOS on 3/20.
AGREEMENT_FLOOR = 0.5


@pytest.fixture(scope="module")
def families_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("families")
    models = [
        {
            "name": name,
            "engine": engine,
            "path": str(request.getfixturevalue(fixture)),
            "context_length": 1024,
            "parallel": 1,
        }
        for name, (engine, fixture, _) in MODELS.items()
    ]
    models_file = write_models(directory / "models.yaml", models)
    with run_server(models_file, directory / "server.log", ready_timeout_s=240) as server:
        yield server


@pytest.fixture(scope="module")
def client(families_server: LiveServer) -> openai.OpenAI:
    return openai_client(families_server)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_streamed_and_whole_completions_agree(client: openai.OpenAI, model: str) -> None:
    prompt = "Once upon a time, in a small village,"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
    assert whole.choices[0].text
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 16 or whole.choices[0].finish_reason == "stop"
    stream = client.completions.create(
        model=model, prompt=prompt, max_tokens=16, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == (
        whole.choices[0].text
    )


@pytest.mark.parametrize("model", sorted(MODELS))
def test_log_probabilities_of_sampled_and_prompt_tokens(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens
    assert logprobs.token_logprobs
    assert logprobs.top_logprobs
    assert "".join(logprobs.tokens) == completion.choices[0].text
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert logprob is not None
        assert logprob <= 0
        # Greedy: the sampled token is the most likely one.
        assert math.isclose(logprob, max(top.values()), abs_tol=1e-3)
        assert token in top
    echoed = client.completions.create(
        model=model, prompt="Paris is the capital of", max_tokens=0, echo=True, logprobs=1
    )
    scored = echoed.choices[0].logprobs
    assert scored is not None
    assert scored.token_logprobs
    assert scored.token_logprobs[0] is None  # the first token has no context
    assert all(value is not None and value <= 0 for value in scored.token_logprobs[1:])


def test_chat_to_the_base_model_is_a_400_and_the_chat_model_keeps_chatting(
    client: openai.OpenAI,
) -> None:
    for model in ("gemma3-gguf", "gemma3-onnx"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        assert refused.value.code == "chat_template_missing"
    for model in ("smollm2-gguf", "smollm2-onnx"):
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.choices[0].message.content


def greedy_next_tokens(client: openai.OpenAI, model: str) -> list[str]:
    texts = []
    for prompt in AGREEMENT_PROMPTS:
        completion = client.completions.create(
            model=model, prompt=prompt, max_tokens=1, temperature=0
        )
        texts.append(completion.choices[0].text)
    return texts


@pytest.mark.parametrize("family", ["smollm2", "gemma3"])
def test_the_converted_models_greedy_next_token_matches_the_gguf_models(
    client: openai.OpenAI, family: str
) -> None:
    gguf = greedy_next_tokens(client, f"{family}-gguf")
    onnx = greedy_next_tokens(client, f"{family}-onnx")
    matches = sum(a == b for a, b in zip(gguf, onnx, strict=True))
    different = [
        (prompt, a, b) for prompt, a, b in zip(AGREEMENT_PROMPTS, gguf, onnx, strict=True) if a != b
    ]
    print(f"{family}: {matches}/{len(AGREEMENT_PROMPTS)} greedy next tokens agree; {different}")
    assert matches / len(AGREEMENT_PROMPTS) >= AGREEMENT_FLOOR, different


def test_each_model_reports_its_own_card(families_server: LiveServer) -> None:
    cards = families_server.models()
    for name, (engine, _, _) in MODELS.items():
        assert cards[name]["state"] == "ready"
        assert cards[name]["engine"] == engine


def test_the_base_model_embeds_on_gguf_and_onnx_says_it_cannot(client: openai.OpenAI) -> None:
    embedded = client.embeddings.create(model="gemma3-gguf", input=["hello world", "goodbye"])
    assert [len(item.embedding) for item in embedded.data] == [640, 640]
    assert embedded.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="gemma3-onnx", input="hello world")
    assert refused.value.param == "model"
    assert "onnx models cannot produce embeddings" in refused.value.message
