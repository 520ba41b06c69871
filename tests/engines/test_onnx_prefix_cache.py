"""Multi-turn prefix reuse on ONNX models: parked og generators, rewound and continued.

The LRU on its own first (no model), then the interleaved scheduler on the real SmolLM2 int4
model: a continued conversation prefills only its new tokens and says so in its usage, and
gives the text a cold engine gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.base import (
    Event,
    Failed,
    Finished,
    GenerationRequest,
    JsonConstraint,
    Message,
    TokenEvent,
    TokenLogprob,
)
from engines.config import ModelConfig
from engines.onnx import OnnxEngine
from engines.onnx_prefix_cache import IdleGenerator, IdleGenerators, SearchOptions
from engines.onnx_scheduling import InterleavedGenerators
from engines.sampling import SamplingParams
from tests.engines.test_onnx import run_alone

GREEDY = SamplingParams(temperature=0.0)
GREEDY_OPTIONS: SearchOptions = (("do_sample", False), ("repetition_penalty", 1.0))
SAMPLING_OPTIONS: SearchOptions = (("do_sample", True), ("temperature", 0.7))


# -- the LRU of idle generators --------------------------------------------------------------


def idle(name: str, tokens: list[int], max_length: int = 100) -> IdleGenerator:
    return IdleGenerator(name, tokens, max_length, GREEDY_OPTIONS)


def test_take_gives_the_longest_continued_prefix_and_removes_it() -> None:
    cache = IdleGenerators(max_count=4, max_positions=1000)
    cache.park(idle("short", [1, 2, 3, 4]))
    cache.park(idle("long", [1, 2, 3, 4, 5, 6, 7, 8]))
    taken = cache.take([1, 2, 3, 4, 5, 6, 7, 8, 9], GREEDY_OPTIONS, 20)
    assert taken is not None
    assert (taken[0].generator, taken[1]) == ("long", 8)
    assert len(cache) == 1
    again = cache.take([1, 2, 3, 4, 5, 6, 7, 8, 9], GREEDY_OPTIONS, 20)
    assert again is not None
    assert again[0].generator == "short"
    assert len(cache) == 0


def test_take_refuses_other_options_too_little_room_and_a_small_shared_part() -> None:
    cache = IdleGenerators(max_count=4, max_positions=1000)
    cache.park(idle("g", [1, 2, 3, 4, 5, 6, 7, 8], max_length=12))
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert cache.take(prompt, SAMPLING_OPTIONS, 10) is None
    assert cache.take(prompt, GREEDY_OPTIONS, 13) is None  # would not fit its KV cache
    # Sharing 5 of its 8 tokens (under 75%): another conversation's, left alone.
    assert cache.take([1, 2, 3, 4, 5, 0, 0, 0, 0], GREEDY_OPTIONS, 10) is None
    assert len(cache) == 1
    assert cache.take(prompt, GREEDY_OPTIONS, 12) is not None


def test_the_least_recently_parked_go_first_by_count_and_by_kv_positions() -> None:
    cache = IdleGenerators(max_count=2, max_positions=300)
    for name in ("a", "b", "c"):
        cache.park(idle(name, [ord(name)], max_length=100))
    assert [cache.take([ord(n), 0], GREEDY_OPTIONS, 1) is None for n in "abc"] == [
        True,
        False,
        False,
    ]
    cache.park(idle("d", [1], max_length=100))
    cache.park(idle("e", [2], max_length=100))
    cache.make_room(150)  # running generators need 150 of the 300 positions
    assert cache.positions == 100
    assert cache.take([2, 0], GREEDY_OPTIONS, 1) is not None  # the most recent one stayed


# -- on the real model -----------------------------------------------------------------------


def load(onnx_model_path: Path, parallel: int) -> OnnxEngine:
    config = ModelConfig(
        name="prefix", engine="onnx", path=onnx_model_path, parallel=parallel, context_length=1024
    )
    return OnnxEngine(config)


@pytest.fixture(scope="module")
def engine(onnx_model_path: Path) -> Iterator[OnnxEngine]:
    loaded = load(onnx_model_path, parallel=2)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def cold(onnx_model_path: Path) -> Iterator[OnnxEngine]:
    """Answers as if nothing were cached: its parked generators are dropped before each use."""
    loaded = load(onnx_model_path, parallel=1)
    yield loaded
    loaded.close()


def idle_generators(engine: OnnxEngine) -> IdleGenerators:
    scheduler = engine._scheduler
    assert isinstance(scheduler, InterleavedGenerators)
    return scheduler.idle


def run_cold(cold: OnnxEngine, request: GenerationRequest) -> tuple[str, Finished]:
    idle_generators(cold).clear()
    text, finished = run_alone(cold, request)
    assert finished.cached_prompt_tokens == 0
    return text, finished


def chat(*turns: str, request_id: str = "r", **fields: object) -> GenerationRequest:
    roles = ("user", "assistant")
    messages = tuple(Message(roles[i % 2], text) for i, text in enumerate(turns))
    return GenerationRequest(
        request_id,
        messages,
        max_tokens=fields.pop("max_tokens", 30),  # type: ignore[arg-type]
        sampling=fields.pop("sampling", GREEDY),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def test_a_second_turn_prefills_only_its_new_tokens_and_answers_as_a_cold_engine(
    engine: OnnxEngine, cold: OnnxEngine
) -> None:
    question = "What is the capital of France? Answer briefly."
    first_text, first = run_alone(engine, chat(question, request_id="france"))
    follow_up = chat(question, first_text, "And of Germany?", request_id="germany")
    text, second = run_alone(engine, follow_up)
    # The first turn's prompt and its answer were not evaluated again; the new message was.
    assert second.cached_prompt_tokens >= first.prompt_tokens + first.completion_tokens - 1
    assert second.cached_prompt_tokens < second.prompt_tokens
    cold_text, cold_finished = run_cold(cold, follow_up)
    assert cold_finished.prompt_tokens == second.prompt_tokens
    assert text == cold_text
    assert "Berlin" in text


def logprobs_of(events: Iterator[Event]) -> tuple[list[TokenLogprob | None], Finished]:
    seen: list[TokenLogprob | None] = []
    for event in events:
        if isinstance(event, Failed):
            raise event.to_error()
        if isinstance(event, TokenEvent):
            seen.append(event.logprob)
    assert isinstance(event, Finished)
    return seen, event


def test_a_prompt_extending_a_cached_prompt_gives_the_same_logits_as_a_cold_engine(
    engine: OnnxEngine, cold: OnnxEngine
) -> None:
    """What was cached came from a prefill, as the rest does: og's numbers are identical."""
    story = "Once upon a time, in a small village by the sea, there lived an old fisherman"
    first = GenerationRequest("story", prompt=story, max_tokens=1, sampling=GREEDY)
    _, first_done = logprobs_of(engine.generate(first))
    longer = GenerationRequest(
        "longer", prompt=story + " who had a cat.", max_tokens=8, sampling=GREEDY, logprobs=3
    )
    warm, warm_done = logprobs_of(engine.generate(longer))
    assert warm_done.cached_prompt_tokens >= first_done.prompt_tokens - 2
    idle_generators(cold).clear()
    assert logprobs_of(cold.generate(longer))[0] == warm


def test_a_cancelled_requests_generator_serves_the_next_request(
    engine: OnnxEngine, cold: OnnxEngine
) -> None:
    """Cancelled between two steps, its cache is consistent: asked again, the question reuses
    it and gets the cold engine's text."""
    question = chat("Tell me a long story about a lighthouse keeper.", request_id="long")
    assert not isinstance(engine.submit(question), Failed)
    for _ in range(5):
        engine.step()
    engine.cancel("long")
    assert not engine.has_work()
    text, finished = run_alone(engine, question)
    # All but the two tokens evaluated again (og's prompt kernels, as for a cold prefill).
    assert finished.cached_prompt_tokens == finished.prompt_tokens - 2
    assert text == run_cold(cold, question)[0]


def test_json_schema_requests_neither_take_nor_leave_a_generator(engine: OnnxEngine) -> None:
    schema = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
    question = "Which city is the capital of Italy? Reply in JSON."
    idle_generators(engine).clear()
    run_alone(engine, chat(question, request_id="plain"))
    parked = len(idle_generators(engine))
    assert parked == 1  # under the bound of 2: a parked constrained generator would show
    constrained = chat(question, request_id="json", constraint=JsonConstraint(schema))
    for _ in range(2):
        text, finished = run_alone(engine, constrained)
        assert finished.cached_prompt_tokens == 0
        assert '"city"' in text
        assert len(idle_generators(engine)) == parked


def test_seeded_sampling_and_other_sampling_options_start_fresh(engine: OnnxEngine) -> None:
    question = "Name a fruit."
    seeded = chat(question, request_id="seeded", sampling=SamplingParams(temperature=0.9, seed=5))
    first_text, _ = run_alone(engine, seeded)
    again_text, again = run_alone(engine, seeded)
    assert (again_text, again.cached_prompt_tokens) == (first_text, 0)
    # The greedy generator this question left has other search options than sampling.
    run_alone(engine, chat(question, request_id="greedy", max_tokens=4))
    warm = chat(question, request_id="warm", max_tokens=5, sampling=SamplingParams(temperature=0.7))
    assert run_alone(engine, warm)[1].cached_prompt_tokens == 0
    # The same unseeded sampling options continue their own generator.
    assert run_alone(engine, warm)[1].cached_prompt_tokens > 0


def test_a_generator_that_failed_is_not_kept(
    engine: OnnxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = chat("Spell the word 'cat'.", request_id="fails", max_tokens=8)
    scheduler = engine._scheduler
    assert isinstance(scheduler, InterleavedGenerators)
    with monkeypatch.context() as patched:
        patched.setattr(scheduler, "_advance", lambda slot: 1 / 0)
        events = list(engine.generate(request))
    assert isinstance(events[-1], Failed)
    assert run_alone(engine, request)[1].cached_prompt_tokens == 0


def test_the_lru_bound_holds(onnx_model_path: Path) -> None:
    one_slot = load(onnx_model_path, parallel=1)
    try:
        cache = idle_generators(one_slot)
        topics = ["lanterns", "harbours"]
        answers = {t: run_alone(one_slot, chat(f"One sentence about {t}."))[0] for t in topics}
        assert len(cache) == 1
        assert cache.positions <= cache.max_positions == 1024
        cached = {
            topic: run_alone(
                one_slot, chat(f"One sentence about {topic}.", answers[topic], "Shorter.")
            )[1].cached_prompt_tokens
            for topic in reversed(topics)  # the most recent conversation first
        }
    finally:
        one_slot.close()
    assert cached["harbours"] > 0
    assert cached["lanterns"] == 0  # its generator made room for the other conversation's
