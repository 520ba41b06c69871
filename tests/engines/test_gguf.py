"""The GGUF engine on the real SmolLM2 model, in-process (no server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import llama_cpp
import pytest
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from engines.base import Accepted, Failed, Finished, GenerationRequest, Message, TokenEvent
from engines.config import ModelConfig, Provider
from engines.errors import ModelLoadError
from engines.gguf import GGUFEngine
from engines.sampling import SamplingParams

# cpu here; cuda on a GPU machine (bench/gpu/run.sh): every layer offloaded.
PROVIDER = cast(Provider, os.environ.get("SLMSERVE_TEST_PROVIDER", "cpu"))
GREEDY = SamplingParams(temperature=0.0)
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colours.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def engine(default_model_path: Path) -> Iterator[GGUFEngine]:
    config = ModelConfig(
        name="smol",
        engine="gguf",
        path=default_model_path,
        parallel=4,
        context_length=1024,
        provider=PROVIDER,
    )
    loaded = GGUFEngine(config)
    yield loaded
    loaded.close()


def ask(question: str, request_id: str = "r", **fields: object) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=(Message("user", question),),
        sampling=fields.pop("sampling", GREEDY),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def run_alone(engine: GGUFEngine, request: GenerationRequest) -> tuple[str, Finished]:
    text = ""
    for event in engine.generate(request):
        if isinstance(event, TokenEvent | Finished):
            text += event.text
        if isinstance(event, Failed):
            raise event.to_error()
    assert isinstance(event, Finished)
    return text, event


def run_together(engine: GGUFEngine, requests: list[GenerationRequest]) -> dict[str, str]:
    texts = {request.request_id: "" for request in requests}
    for request in requests:
        assert isinstance(engine.submit(request), Accepted)
    while engine.has_work():
        for event in engine.step():
            if isinstance(event, TokenEvent | Finished):
                texts[event.request_id] += event.text
    return texts


def test_info(engine: GGUFEngine) -> None:
    assert engine.info.engine == "gguf"
    assert engine.info.provider == PROVIDER
    assert engine.info.context_length == 1024
    assert engine.info.has_chat_template


def test_prompt_tokens_match_llama_cpp_pythons_own_count(
    engine: GGUFEngine, default_model_path: Path
) -> None:
    """An independent count: llama-cpp-python's own chat formatter and tokenizer."""
    vocab = Llama(str(default_model_path), vocab_only=True, verbose=False)
    formatter = Jinja2ChatFormatter(
        template=vocab.metadata["tokenizer.chat_template"],
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime number larger than ten, please."},
    ]
    prompt = formatter(messages=messages).prompt  # type: ignore[arg-type]
    expected = len(vocab.tokenize(prompt.encode(), add_bos=False, special=True))
    request = GenerationRequest(
        request_id="count",
        messages=tuple(Message(m["role"], m["content"]) for m in messages),
        max_tokens=1,
    )
    _, finished = run_alone(engine, request)
    assert finished.prompt_tokens == expected


def test_concurrent_greedy_requests_match_each_alone(engine: GGUFEngine) -> None:
    alone = {
        str(i): run_alone(engine, ask(q, str(i), max_tokens=40))[0] for i, q in enumerate(QUESTIONS)
    }
    together = run_together(
        engine, [ask(q, str(i), max_tokens=40) for i, q in enumerate(QUESTIONS)]
    )
    assert together == alone
    assert all(alone.values())


def test_seeded_sampling_is_reproducible_under_concurrency(engine: GGUFEngine) -> None:
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone = run_alone(engine, ask(QUESTIONS[1], "s", sampling=seeded, max_tokens=30))[0]
    batch = [ask(QUESTIONS[1], "s0", sampling=seeded, max_tokens=30)] + [
        ask(q, f"o{i}", sampling=SamplingParams(temperature=1.0), max_tokens=30)
        for i, q in enumerate(QUESTIONS[:3])
    ]
    assert run_together(engine, batch)["s0"] == alone
    other_seed = SamplingParams(temperature=1.0, seed=99)
    assert run_alone(engine, ask(QUESTIONS[1], "t", sampling=other_seed, max_tokens=30))[0] != alone


def test_max_tokens_ends_with_length(engine: GGUFEngine) -> None:
    _, finished = run_alone(engine, ask("Tell me a long story.", max_tokens=7))
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 7)


def test_stop_string_cuts_the_text(engine: GGUFEngine) -> None:
    full, _ = run_alone(engine, ask("Count from 1 to 10, one number per line.", max_tokens=40))
    assert "3" in full
    text, finished = run_alone(
        engine, ask("Count from 1 to 10, one number per line.", max_tokens=40, stop=("3",))
    )
    assert finished.finish_reason == "stop"
    assert text == full[: full.index("3")]


def test_cancel_frees_the_slot_for_the_next_request(engine: GGUFEngine) -> None:
    requests = [ask("Tell me a long story.", f"c{i}", max_tokens=200) for i in range(4)]
    for request in requests:
        engine.submit(request)
    waiting = ask(QUESTIONS[0], "next", max_tokens=5)
    engine.submit(waiting)  # five requests, four slots: this one waits
    for _ in range(3):
        engine.step()
    for request in requests:
        engine.cancel(request.request_id)
    seen = []
    while engine.has_work():
        seen.extend(engine.step())
    assert {event.request_id for event in seen} == {"next"}
    assert isinstance(seen[-1], Finished)
    assert seen[-1].completion_tokens == 5


def test_short_prompts_start_in_the_next_step_while_a_long_one_prefills(
    engine: GGUFEngine,
) -> None:
    engine.submit(ask(QUESTIONS[1], "running", max_tokens=60))
    while not any(isinstance(event, TokenEvent) for event in engine.step()):
        pass
    engine.submit(ask("Summarise: " + "the river bends past the mill. " * 60, "long"))
    for index in range(2):
        engine.submit(ask(QUESTIONS[index + 2], f"short-{index}", max_tokens=4))
    started = {event.request_id for event in engine.step() if isinstance(event, TokenEvent)}
    # The long prompt takes one chunk of this step; the short ones are not held behind it.
    assert started == {"running", "short-0", "short-1"}
    for request_id in ("running", "long", "short-0", "short-1"):
        engine.cancel(request_id)
    while engine.has_work():
        engine.step()


def test_context_length_exceeded_is_reported_at_submit(engine: GGUFEngine) -> None:
    event = engine.submit(ask("hello " * 1100))
    assert isinstance(event, Failed)
    assert event.kind == "context_length_exceeded"
    event = engine.submit(ask("hello", max_tokens=2000))
    assert isinstance(event, Failed)
    assert "1024" in event.message


@pytest.mark.parametrize(("provider", "message"), [("dml", "DirectML"), ("cuda", "GPU offload")])
def test_unavailable_provider_fails_to_load(
    default_model_path: Path, provider: str, message: str
) -> None:
    if provider == "cuda" and llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build offloads to a GPU")
    config = ModelConfig(name="x", engine="gguf", path=default_model_path, provider=provider)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=message):
        GGUFEngine(config)


def test_missing_file_fails_to_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        GGUFEngine(ModelConfig(name="x", engine="gguf", path=tmp_path / "none.gguf"))


def test_garbage_file_fails_to_load(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(ModelLoadError, match="could not load"):
        GGUFEngine(ModelConfig(name="x", engine="gguf", path=bogus))


def test_multi_turn_reuses_the_cached_prefix_with_identical_output(
    engine: GGUFEngine, default_model_path: Path
) -> None:
    question = Message("user", "Name three rivers in Europe.")
    first, first_done = run_alone(
        engine, GenerationRequest("t1", (question,), max_tokens=30, sampling=GREEDY)
    )
    follow_up = GenerationRequest(
        "t2",
        (question, Message("assistant", first), Message("user", "Which is the longest?")),
        max_tokens=30,
        sampling=GREEDY,
    )
    warm_text, warm = run_alone(engine, follow_up)
    # The first turn's prompt (and most of its answer) was not evaluated again.
    assert warm.cached_prompt_tokens >= first_done.prompt_tokens
    assert warm.cached_prompt_tokens < warm.prompt_tokens
    cold_engine = GGUFEngine(
        ModelConfig(
            name="cold",
            engine="gguf",
            path=default_model_path,
            context_length=1024,
            provider=PROVIDER,
        )
    )
    try:
        cold_text, cold = run_alone(cold_engine, follow_up)
    finally:
        cold_engine.close()
    assert cold.cached_prompt_tokens == 0
    assert warm_text == cold_text
    assert warm.prompt_tokens == cold.prompt_tokens


def test_the_same_prompt_again_reuses_all_but_its_last_token(engine: GGUFEngine) -> None:
    request = ask("Spell the word 'cat'.", max_tokens=8)
    text, _ = run_alone(engine, request)
    again_text, again = run_alone(engine, request)
    assert again.cached_prompt_tokens == again.prompt_tokens - 1
    assert again_text == text


def test_a_question_asked_again_reuses_its_cache_and_leaves_the_first_one_whole(
    engine: GGUFEngine,
) -> None:
    for index, other in enumerate(QUESTIONS):  # every slot holds the system prompt, no more
        run_alone(engine, ask(other, f"other-{index}", max_tokens=2))
    question = Message("user", "Describe a lighthouse at night.")
    text, first = run_alone(
        engine, GenerationRequest("long", (question,), max_tokens=96, sampling=GREEDY)
    )
    # The first answer fills most of that slot's cache, so the repeat does not "continue" it: it
    # gets another slot, with the first slot's prompt copied in rather than prefilled again.
    _, again = run_alone(
        engine, GenerationRequest("again", (question,), max_tokens=2, sampling=GREEDY)
    )
    assert again.cached_prompt_tokens == again.prompt_tokens - 1
    follow_up = GenerationRequest(
        "follow-up",
        (question, Message("assistant", text), Message("user", "Shorter.")),
        max_tokens=4,
        sampling=GREEDY,
    )
    # The first conversation's cache was not cut down to the repeat's two tokens.
    _, continued = run_alone(engine, follow_up)
    assert continued.cached_prompt_tokens >= first.prompt_tokens + first.completion_tokens // 2


def test_a_new_conversation_copies_a_shared_prefix_from_another_slot(
    default_model_path: Path,
) -> None:
    def fresh_engine(parallel: int) -> GGUFEngine:
        config = ModelConfig(
            name="fresh", engine="gguf", path=default_model_path, context_length=512,
            parallel=parallel, provider=PROVIDER,
        )  # fmt: skip
        return GGUFEngine(config)

    two_slots = fresh_engine(2)
    try:
        _, first = run_alone(two_slots, ask("One sentence about lanterns.", max_tokens=12))
        # The second conversation gets the other, cold slot; without the copy it reuses nothing.
        text, warm = run_alone(two_slots, ask("One sentence about harbours.", max_tokens=12))
    finally:
        two_slots.close()
    assert first.cached_prompt_tokens == 0
    # The default system prompt and "One sentence about" came from the other slot's cache.
    assert warm.cached_prompt_tokens >= 20
    cold = fresh_engine(1)
    try:
        cold_text, _ = run_alone(cold, ask("One sentence about harbours.", max_tokens=12))
    finally:
        cold.close()
    assert text == cold_text


def test_each_conversation_finds_its_own_slot(engine: GGUFEngine) -> None:
    topics = ["apples", "boats", "clouds", "deserts"]
    firsts = {
        t: run_alone(engine, ask(f"One sentence about {t}.", t, max_tokens=12)) for t in topics
    }
    for topic in reversed(topics):
        text, first = firsts[topic]
        follow_up = GenerationRequest(
            topic,
            (
                Message("user", f"One sentence about {topic}."),
                Message("assistant", text),
                Message("user", "Shorter."),
            ),
            max_tokens=5,
            sampling=GREEDY,
        )
        assert run_alone(engine, follow_up)[1].cached_prompt_tokens >= first.prompt_tokens
