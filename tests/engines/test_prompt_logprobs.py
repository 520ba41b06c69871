"""Prompt log probabilities, score-only requests, token-id prompts and prompt queries, on both
engines and real models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engines.base import (
    Accepted,
    DetokenizeQuery,
    Engine,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    InfoQuery,
    Message,
    PromptLogprobs,
    PromptText,
    RenderQuery,
    TokenEvent,
    Tokenized,
    TokenizeQuery,
    TokenizerInfo,
)
from engines.config import ModelConfig
from engines.errors import InvalidRequestError
from engines.gguf import SCORING_CHUNK, GGUFEngine
from engines.onnx import OnnxEngine
from engines.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
PROMPT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
# Longer than one scoring chunk: the prompt is scored over several prefill steps.
LONG_PROMPT = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(30))


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def engine(
    request: pytest.FixtureRequest, default_model_path: Path, onnx_model_path: Path
) -> Iterator[Engine]:
    loaded: Engine
    if request.param == "gguf":
        loaded = GGUFEngine(
            ModelConfig(name="g", engine="gguf", path=default_model_path, context_length=1024)
        )
    else:
        loaded = OnnxEngine(
            ModelConfig(name="o", engine="onnx", path=onnx_model_path, context_length=1024)
        )
    yield loaded
    loaded.close()


def run(engine: Engine, **fields: object) -> list[Event]:
    request = GenerationRequest("r", sampling=GREEDY, **fields)  # type: ignore[arg-type]
    events = list(engine.generate(request))
    if isinstance(events[-1], Failed):
        raise events[-1].to_error()
    return events


def scored(engine: Engine, prompt: str | tuple[int, ...], **fields: object) -> PromptLogprobs:
    text = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_ids": prompt}
    events = run(engine, prompt_logprobs=2, max_tokens=0, **text, **fields)
    [event] = [e for e in events if isinstance(e, PromptLogprobs)]
    return event


def log_softmax(row: np.ndarray) -> np.ndarray:
    values = row.astype(np.float64)
    result: np.ndarray = values - (values.max() + np.log(np.exp(values - values.max()).sum()))
    return result


def test_score_only_request_gives_the_prompt_and_ends(engine: Engine) -> None:
    events = run(engine, prompt=PROMPT, prompt_logprobs=1, max_tokens=0)
    assert isinstance(events[0], Accepted)
    assert isinstance(events[1], PromptLogprobs)
    assert isinstance(events[2], Finished)
    assert len(events) == 3  # no token generated
    finished = events[2]
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 0)
    prompt = events[1]
    assert len(prompt.entries) == events[0].prompt_tokens - 1
    assert prompt.first_token == b"The"
    assert b"".join([prompt.first_token, *(e.token for e in prompt.entries)]).decode() == PROMPT
    for entry in prompt.entries:
        assert entry.logprob <= 0.0
        assert len(entry.top) == 1
        assert entry.top[0][1] >= entry.logprob - 1e-6  # the best alternative is at least as likely


def test_prompt_logprobs_then_generation(engine: Engine) -> None:
    events = run(engine, prompt=PROMPT, prompt_logprobs=0, logprobs=0, max_tokens=3)
    kinds = [type(e) for e in events]
    assert kinds[:2] == [Accepted, PromptLogprobs]
    assert kinds[-1] is Finished
    assert TokenEvent in kinds


def test_scoring_what_was_generated_gives_its_generation_logprobs(engine: Engine) -> None:
    """The prompt's log probabilities and the sampled tokens' come from the same model: score
    the prompt plus what greedy decoding produced, and they agree. llama.cpp computes a position
    the same in a prefill batch as alone; og's int4 matmuls do not (one-row decode and many-row
    prefill kernels differ by up to ~0.2 nats here), hence its loose bound: a position off by one
    would be off by nats."""
    events = run(engine, prompt=PROMPT, logprobs=0, max_tokens=4)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    prompt_ids = engine.prompt_ids(GenerationRequest("q", prompt=PROMPT))
    together = tuple(prompt_ids + [t.token_id for t in tokens])
    entries = scored(engine, together).entries[-len(tokens) :]
    for generated, rescored in zip(tokens, entries, strict=True):
        assert generated.logprob is not None
        bound = 1e-3 if engine.info.engine == "gguf" else 0.3
        assert rescored.logprob == pytest.approx(generated.logprob.logprob, abs=bound)


def test_long_prompts_are_scored_over_several_chunks(engine: Engine) -> None:
    ids = engine.prompt_ids(GenerationRequest("q", prompt=LONG_PROMPT))
    assert len(ids) > 2 * SCORING_CHUNK
    prompt = scored(engine, LONG_PROMPT)
    assert len(prompt.entries) == len(ids) - 1
    # The repeated sentence becomes predictable: the model is really reading the prompt.
    late = [e.logprob for e in prompt.entries[-40:]]
    early = [e.logprob for e in prompt.entries[:40]]
    assert sum(late) > sum(early)


def test_a_cached_prefix_is_not_reused_for_scoring(engine: Engine) -> None:
    fresh = scored(engine, PROMPT)
    run(engine, prompt=PROMPT + " Madrid.", max_tokens=2)  # leaves the prefix cached
    again = scored(engine, PROMPT)
    assert [e.logprob for e in again.entries] == pytest.approx(
        [e.logprob for e in fresh.entries], abs=1e-4
    )


def test_gguf_prompt_logprobs_match_llama_cpp(default_model_path: Path) -> None:
    from llama_cpp import Llama

    engine = GGUFEngine(
        ModelConfig(name="g", engine="gguf", path=default_model_path, context_length=1024)
    )
    try:
        ids = engine.prompt_ids(GenerationRequest("q", prompt=LONG_PROMPT))
        prompt = scored(engine, LONG_PROMPT)
    finally:
        engine.close()
    # The engine's context has llama.cpp's default flash attention (auto: on); without it the
    # numbers differ by up to ~0.5 nats on this model.
    # Batches of one scoring chunk, as the engine's: where a batch ends changes the last digits.
    llama = Llama(
        str(default_model_path),
        n_ctx=1024,
        n_batch=SCORING_CHUNK,
        n_ubatch=SCORING_CHUNK,
        logits_all=True,
        flash_attn=True,
        verbose=False,
    )
    llama.eval(ids)
    expected = [float(log_softmax(llama.scores[i])[ids[i + 1]]) for i in range(len(ids) - 1)]
    assert [e.logprob for e in prompt.entries] == pytest.approx(expected, abs=1e-3)


def test_onnx_prompt_logprobs_match_onnxruntime_genai(onnx_model_path: Path) -> None:
    import onnxruntime_genai as og

    engine = OnnxEngine(
        ModelConfig(name="o", engine="onnx", path=onnx_model_path, context_length=1024)
    )
    try:
        ids = engine.prompt_ids(GenerationRequest("q", prompt=LONG_PROMPT))
        prompt = scored(engine, LONG_PROMPT)
    finally:
        engine.close()
    model = og.Model(str(onnx_model_path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))  # all at once, not in chunks
    rows = np.asarray(generator.get_output("logits"))[0]
    expected = [float(log_softmax(rows[i])[ids[i + 1]]) for i in range(len(ids) - 1)]
    assert [e.logprob for e in prompt.entries] == pytest.approx(expected, abs=1e-4)


def test_token_id_prompts_are_taken_as_sent_and_checked(engine: Engine) -> None:
    ids = tuple(engine.prompt_ids(GenerationRequest("q", prompt=PROMPT)))
    events = run(engine, prompt_ids=ids, max_tokens=2)
    assert isinstance(events[0], Accepted)
    assert events[0].prompt_tokens == len(ids)
    refused = engine.submit(GenerationRequest("bad", prompt_ids=(1, 10**7)))
    assert isinstance(refused, Failed)
    assert (refused.kind, refused.param) == ("invalid_request", "prompt")


def test_tokenize_detokenize_round_trip_with_special_tokens(engine: Engine) -> None:
    text = "<|im_start|>user\nHéllo wörld 日本<|im_end|>\n"
    request = GenerationRequest("q", prompt=text)
    answer = engine.answer(TokenizeQuery("q", request, with_pieces=True))
    assert isinstance(answer, Tokenized)
    assert answer.pieces is not None
    assert len(answer.pieces) == len(answer.token_ids)
    assert answer.pieces[0] == "<|im_start|>"
    decoded = engine.answer(DetokenizeQuery("q", tuple(answer.token_ids)))
    assert isinstance(decoded, PromptText)
    assert decoded.text == text
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        engine.answer(DetokenizeQuery("q", (-1,)))


def test_rendered_template_tokenizes_to_the_chat_prompt(engine: Engine) -> None:
    chat = GenerationRequest("q", messages=(Message("user", "What is 2+2?"),))
    rendered = engine.answer(RenderQuery("q", chat))
    assert isinstance(rendered, PromptText)
    assert rendered.text.startswith("<|im_start|>")
    raw = engine.prompt_ids(GenerationRequest("q", prompt=rendered.text))
    assert raw == engine.prompt_ids(chat)


def test_special_tokens(engine: Engine) -> None:
    info = engine.answer(InfoQuery("q"))
    assert isinstance(info, TokenizerInfo)
    assert info.eos_token == "<|im_end|>" or info.eos_token == "<|endoftext|>"
    assert info.context_length == 1024
