"""OpenAI API conformance with the official Python SDK, on real models, on both engines.

Completions, n, logprobs, JSON output, tools, extra sampling parameters and embeddings, in
stream and non-stream form; where an engine cannot do something, the exact 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import openai
import pytest
from llama_cpp import Llama
from openai.types.chat import ChatCompletion

from tests.conftest import ONNX_MODEL_NAME
from tests.e2e.conftest import ChatMessages, Target

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
PERSON_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER: ChatMessages = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON_QUESTION: ChatMessages = [{"role": "user", "content": "Give me a person as JSON."}]
# A prompt the model continues well past a few tokens (no early end of text).
COUNTING = "1, 2, 3, 4, 5,"
# " poss": never the greedy choice for ASK_WEATHER.
BIASED_TOKEN = 1178


@dataclass
class Vocabulary:
    """The served model's own tokenizer, independent of the server."""

    encode: Callable[[str], list[int]]
    decode: Callable[[int], str]


def llama_cpp_vocabulary(model_path: Path) -> Vocabulary:
    vocab = Llama(str(model_path), vocab_only=True, verbose=False)
    return Vocabulary(
        encode=lambda text: list(vocab.tokenize(text.encode(), add_bos=False, special=False)),
        decode=lambda token: vocab.detokenize([token]).decode(errors="replace"),
    )


def onnx_vocabulary(model_path: Path) -> Vocabulary:
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(og.Model(str(model_path)))
    return Vocabulary(
        encode=lambda text: [int(token) for token in tokenizer.encode(text)],
        decode=lambda token: str(tokenizer.decode(np.asarray([token], dtype=np.int32))),
    )


@pytest.fixture(scope="session")
def vocabulary(target: Target, request: pytest.FixtureRequest) -> Vocabulary:
    if target.model == ONNX_MODEL_NAME:
        return onnx_vocabulary(request.getfixturevalue("onnx_model_path"))
    return llama_cpp_vocabulary(request.getfixturevalue("default_model_path"))


def chat(target: Target, messages: ChatMessages = ASK_WEATHER, **fields: Any) -> ChatCompletion:
    completion: ChatCompletion = target.client.chat.completions.create(
        model=target.model, messages=messages, **fields
    )
    return completion


def chosen_tokens(completion: ChatCompletion) -> list[str]:
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    return [entry.token for entry in logprobs.content]


def test_completions(target: Target) -> None:
    completion = target.client.completions.create(
        model=target.model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert completion.object == "text_completion"
    [choice] = completion.choices
    assert choice.text
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 8
    # "length" exactly when the budget was spent; otherwise the model ended the text.
    spent = completion.usage.completion_tokens == 8
    assert choice.finish_reason == ("length" if spent else "stop")
    stream = list(
        target.client.completions.create(
            model=target.model,
            prompt="The capital of France is",
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == choice.text
    finishes = [c.choices[0].finish_reason for c in stream if c.choices]
    assert [reason for reason in finishes if reason] == [choice.finish_reason]
    echoed = target.client.completions.create(
        model=target.model, prompt="Once upon", max_tokens=3, echo=True, temperature=0
    )
    assert echoed.choices[0].text.startswith("Once upon")


def complete_counting(target: Target, stream: bool, **fields: Any) -> tuple[str, str, int]:
    """A greedy text completion of COUNTING: its text, finish_reason and completion tokens."""
    fields.update(model=target.model, prompt=COUNTING, temperature=0)
    if not stream:
        completion = target.client.completions.create(**fields)
        assert completion.usage is not None
        [choice] = completion.choices
        return choice.text, choice.finish_reason, completion.usage.completion_tokens
    chunks = list(
        target.client.completions.create(
            stream=True, stream_options={"include_usage": True}, **fields
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    [finish_reason] = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    return text, finish_reason, usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_completion_finish_reasons(target: Target, stream: bool) -> None:
    text, finish_reason, tokens = complete_counting(target, stream, max_tokens=12)
    assert finish_reason == "length"
    assert tokens == 12
    # A stop string from the middle of that text: the answer ends just before it.
    stop = text[len(text) // 2 :][:4]
    assert stop.strip()
    expected = text[: text.index(stop)]
    assert expected
    text, finish_reason, tokens = complete_counting(
        target, stream, max_tokens=12, stop=[stop, "never-appears"]
    )
    assert finish_reason == "stop"
    assert text == expected
    assert stop not in text
    assert tokens < 12


def test_completion_logprobs_and_prompt_lists(target: Target) -> None:
    prompts = ["One", "Two"]
    completion = target.client.completions.create(
        model=target.model, prompt=prompts, max_tokens=4, n=2, logprobs=2, temperature=0
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    # n choices per prompt, in prompt order: each one is that prompt's greedy completion.
    for number, prompt in enumerate(prompts):
        alone = target.client.completions.create(
            model=target.model, prompt=prompt, max_tokens=4, temperature=0
        )
        pair = completion.choices[2 * number : 2 * number + 2]
        assert [choice.text for choice in pair] == [alone.choices[0].text] * 2
    for choice in completion.choices:
        logprobs = choice.logprobs
        assert logprobs is not None
        assert logprobs.tokens
        assert logprobs.token_logprobs is not None
        assert logprobs.top_logprobs is not None
        assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
        assert "".join(logprobs.tokens) == choice.text
        for token, logprob, top in zip(
            logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
        ):
            assert len(top) == 2
            # Greedy: the chosen token is the most likely one, listed with its own logprob.
            assert max(top, key=top.__getitem__) == token
            assert top[token] == pytest.approx(logprob)
            assert logprob <= 0


def test_suffix_is_refused_without_fill_in_the_middle(target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        target.client.completions.create(model=target.model, prompt="def f(", suffix="):\n")
    assert caught.value.param == "suffix"


def test_n_choices(target: Target) -> None:
    fields: dict[str, Any] = {"model": target.model, "messages": ASK_WEATHER, "max_tokens": 6}
    fields.update(n=2, temperature=0.9, seed=3)
    completion = target.client.chat.completions.create(**fields)
    assert [choice.index for choice in completion.choices] == [0, 1]
    texts = [choice.message.content or "" for choice in completion.choices]
    finishes = [choice.finish_reason for choice in completion.choices]
    assert all(texts)
    # Choice i samples with seed + i: two different samples, each reproducible.
    assert texts[0] != texts[1]
    assert set(finishes) <= {"stop", "length"}
    assert completion.usage is not None
    assert 6 * finishes.count("length") <= completion.usage.completion_tokens <= 12
    # The stream carries the same two choices, each finished once.
    streamed = {0: "", 1: ""}
    streamed_finishes: dict[int, str] = {}
    for chunk in target.client.chat.completions.create(stream=True, **fields):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                assert choice.index not in streamed_finishes
                streamed_finishes[choice.index] = choice.finish_reason
    assert [streamed[0], streamed[1]] == texts
    assert [streamed_finishes[0], streamed_finishes[1]] == finishes


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs(target: Target, stream: bool) -> None:
    fields: dict[str, Any] = {"model": target.model, "messages": ASK_WEATHER, "max_tokens": 5}
    fields.update(logprobs=True, top_logprobs=3, temperature=0)
    if stream:
        chunks = list(target.client.chat.completions.create(stream=True, **fields))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        entries = [
            entry
            for chunk in chunks
            for choice in chunk.choices
            if choice.logprobs and choice.logprobs.content
            for entry in choice.logprobs.content
        ]
    else:
        completion = target.client.chat.completions.create(**fields)
        text = completion.choices[0].message.content or ""
        logprobs = completion.choices[0].logprobs
        assert logprobs is not None
        assert logprobs.content is not None
        entries = logprobs.content
    assert len(entries) == 5
    assert "".join(entry.token for entry in entries) == text
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.bytes is not None
        assert bytes(entry.bytes).decode() == entry.token
        # Greedy: the chosen token is the most likely one, listed with its own logprob.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output(target: Target, stream: bool) -> None:
    fields: dict[str, Any] = {
        "model": target.model,
        "messages": PERSON_QUESTION,
        "max_tokens": 80,
        "response_format": PERSON_FORMAT,
        "temperature": 0,
    }
    if stream:
        chunks = list(target.client.chat.completions.create(stream=True, **fields))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = target.client.chat.completions.create(**fields).choices[0].message.content or ""
    jsonschema.validate(json.loads(text), PERSON)


def test_twenty_structured_generations_all_validate(target: Target) -> None:
    for seed in range(20):
        completion = target.client.chat.completions.create(
            model=target.model,
            messages=PERSON_QUESTION,
            max_tokens=80,
            response_format=PERSON_FORMAT,
            temperature=0.9,
            seed=seed,
        )
        text = completion.choices[0].message.content or ""
        assert completion.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_output(target: Target) -> None:
    completion = target.client.chat.completions.create(
        model=target.model,
        messages=[
            {
                "role": "user",
                "content": 'Give a JSON object with the key "colour" and a colour as its value.',
            }
        ],
        max_tokens=60,
        response_format={"type": "json_object"},
        temperature=0,
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_tool_call(target: Target, tool_choice: Any) -> None:
    completion = target.client.chat.completions.create(
        model=target.model,
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
        max_tokens=60,
        temperature=0,
    )
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])


def test_forced_tool_call_through_the_sdk_stream_helper(target: Target) -> None:
    """The SDK's own accumulator must rebuild the call from our streamed deltas."""
    with target.client.chat.completions.stream(
        model=target.model,
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


def assert_valid_weather_calls(completion: ChatCompletion) -> None:
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function"
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])


def assert_plain_answer(completion: ChatCompletion, max_tokens: int) -> None:
    [choice] = completion.choices
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert completion.usage is not None
    spent = completion.usage.completion_tokens == max_tokens
    assert choice.finish_reason == ("length" if spent else "stop")


def weather_history(result: str) -> Any:
    """ASK_WEATHER, the assistant's call of get_weather, and the tool's result."""
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    return [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": call}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


def test_auto_tool_choice_and_tool_results_in_the_history(target: Target) -> None:
    completion = chat(target, tools=[WEATHER_TOOL], max_tokens=60, temperature=0)
    # The tool definitions are part of the prompt.
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > target.count_prompt_tokens(ASK_WEATHER)
    # With "auto" the model decides: either valid calls or an ordinary answer.
    if completion.choices[0].finish_reason == "tool_calls":
        assert_valid_weather_calls(completion)
    else:
        assert_plain_answer(completion, 60)
    report = "18 degrees and sunny"
    answer = chat(target, weather_history(report), tools=[WEATHER_TOOL], max_tokens=20)
    if answer.choices[0].finish_reason == "tool_calls":
        assert_valid_weather_calls(answer)
    else:
        assert_plain_answer(answer, 20)
    # The tool's result reaches the prompt: a longer result makes a longer prompt.
    longer = chat(
        target,
        weather_history(f"{report}, with a light breeze from the west"),
        tools=[WEATHER_TOOL],
        max_tokens=1,
    )
    assert answer.usage is not None
    assert longer.usage is not None
    assert longer.usage.prompt_tokens > answer.usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_logit_bias_plus_100_makes_every_token_the_biased_one(
    target: Target, vocabulary: Vocabulary, stream: bool
) -> None:
    piece = vocabulary.decode(BIASED_TOKEN)
    assert piece.strip()
    plain = chat(target, max_tokens=4, temperature=0, logprobs=True)
    assert chosen_tokens(plain)[0] != piece
    fields: dict[str, Any] = {"max_tokens": 4, "temperature": 0, "logprobs": True}
    fields["logit_bias"] = {str(BIASED_TOKEN): 100}
    if stream:
        chunks = list(
            target.client.chat.completions.create(
                model=target.model, messages=ASK_WEATHER, stream=True, **fields
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert text == piece * 4
        assert [reason for reason in finishes if reason] == ["length"]
        return
    biased = chat(target, **fields)
    assert chosen_tokens(biased) == [piece] * 4
    assert biased.choices[0].message.content == piece * 4
    assert biased.choices[0].finish_reason == "length"


def test_logit_bias_minus_100_bans_the_greedy_token(target: Target, vocabulary: Vocabulary) -> None:
    fields: dict[str, Any] = {"max_tokens": 1, "temperature": 0, "logprobs": True}
    fields["top_logprobs"] = 2
    plain = chat(target, **fields)
    assert plain.choices[0].logprobs is not None
    assert plain.choices[0].logprobs.content is not None
    [first] = plain.choices[0].logprobs.content
    [greedy] = vocabulary.encode(first.token)
    assert vocabulary.decode(greedy) == first.token
    runner_up = first.top_logprobs[1].token
    biased = chat(target, logit_bias={str(greedy): -100}, **fields)
    # The banned token is not chosen: the next most likely one is.
    assert chosen_tokens(biased) == [runner_up]
    assert biased.choices[0].message.content == runner_up


def test_logit_bias_outweighs_sampling(target: Target, vocabulary: Vocabulary) -> None:
    completion = chat(
        target,
        max_tokens=4,
        temperature=0.7,
        seed=5,
        logit_bias={str(BIASED_TOKEN): 100},
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    # A +100 bias makes the token every token, whatever the sampler's settings.
    assert completion.choices[0].message.content == vocabulary.decode(BIASED_TOKEN) * 4


def test_extra_sampling_parameters(target: Target) -> None:
    first = chat(target, max_tokens=1, temperature=0)
    assert first.choices[0].logprobs is None
    sampled: dict[str, Any] = {"max_tokens": 8, "temperature": 0.7, "seed": 5}
    sampled["extra_body"] = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}
    completion = chat(target, **sampled)
    assert completion.choices[0].message.content
    # The same seed samples the same text.
    again = chat(target, **sampled)
    assert again.choices[0].message.content == completion.choices[0].message.content
    # top_k=1 and min_p=1 each leave only the most likely token: sampling becomes greedy.
    greedy = chat(target, max_tokens=8, temperature=0).choices[0].message.content
    assert greedy
    for only_the_best in ({"top_k": 1}, {"min_p": 1.0}):
        narrowed = chat(target, max_tokens=8, temperature=1.0, seed=7, extra_body=only_the_best)
        assert narrowed.choices[0].message.content == greedy, only_the_best


def test_embeddings(target: Target) -> None:
    texts = ["The cat sits on the mat.", "A kitten rests on a rug.", "Revenue grew 12%."]
    if target.model.endswith("onnx"):
        with pytest.raises(openai.BadRequestError) as caught:
            target.client.embeddings.create(model=target.model, input=texts)
        assert "cannot produce embeddings" in caught.value.message
        return
    # The SDK asks for base64 and decodes it: both encodings are exercised.
    result = target.client.embeddings.create(model=target.model, input=texts)
    vectors = [item.embedding for item in result.data]
    assert [item.index for item in result.data] == [0, 1, 2]
    assert result.usage.prompt_tokens > 0

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert all(abs(cosine(v, v) - 1) < 1e-4 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    floats = target.client.embeddings.create(
        model=target.model, input=texts[0], encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
