"""The worker loop on the real GGUF model: embedding batches share the loop with decoding."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engines.base import Accepted, Embedded, GenerationRequest, Message, TokenEvent, Tokenized
from engines.config import ModelConfig
from engines.sampling import SamplingParams
from engines.worker_client import WorkerProcess

INPUTS = 24


async def test_an_embedding_batch_does_not_stall_a_running_stream(
    default_model_path: Path,
) -> None:
    """Inputs are embedded one per loop turn, between decode steps: the stream keeps getting
    tokens while the batch is embedded (all at once, it would get none meanwhile)."""
    config = ModelConfig(
        name="w", engine="gguf", path=default_model_path, context_length=512, parallel=2
    )
    worker = WorkerProcess(config)
    await worker.start()
    try:
        request = GenerationRequest(
            "stream",
            (Message("user", "Tell me a long story about a lighthouse."),),
            max_tokens=200,
            sampling=SamplingParams(temperature=0.0),
        )
        events = worker.generate(request)
        await anext(events)  # accepted
        await anext(events)  # generating
        tokens = 0
        texts = tuple(f"input number {i} about lighthouses and the sea" for i in range(INPUTS))
        embedding = asyncio.create_task(worker.embed("embed", texts))
        async for event in events:
            if embedding.done():
                break
            tokens += isinstance(event, TokenEvent)
        result = await embedding
        assert isinstance(result, Embedded)
        assert len(result.vectors) == INPUTS
        assert tokens >= INPUTS // 2, "tokens the stream got while the batch was embedded"
    finally:
        await worker.stop()


async def test_tokenize_counts_what_generation_sees(
    default_model_path: Path, onnx_model_path: Path
) -> None:
    """Counting tokens (Anthropic's count_tokens, /tokenize) goes through the same prompt
    building as generation, on both engines."""
    request = GenerationRequest(
        "count", (Message("system", "Be brief."), Message("user", "Hello there!")), max_tokens=1
    )
    for engine, path in (("gguf", default_model_path), ("onnx", onnx_model_path)):
        worker = WorkerProcess(ModelConfig(name=engine, engine=engine, path=path))  # type: ignore[arg-type]
        await worker.start()
        try:
            counted = await worker.tokenize(request)
            assert isinstance(counted, Tokenized)
            accepted = await anext(worker.generate(request))
            assert isinstance(accepted, Accepted)
            assert len(counted.token_ids) == accepted.prompt_tokens > 5
        finally:
            await worker.stop()
