"""A real engine that fails on purpose, for fault-injection tests of the real worker process.

Loaded in the worker with `--engine-factory tests.engines.faulty_engine:load`. A request whose
text holds a marker makes the engine raise where that request is handled: while submitting it,
while accounting one of its tokens (inside a step), or on the whole step. A request that forces
`POISON_TOKEN` (logit_bias) makes detokenizing that token raise. Everything else is the real
GGUF or ONNX engine, untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engines.base import Engine, Event, GenerationRequest
from engines.config import ModelConfig
from engines.loader import load_engine
from engines.sequence import Sequence

IN_SUBMIT = "FAULT_IN_SUBMIT"
IN_STEP = "FAULT_IN_STEP"
IN_WHOLE_STEP = "FAULT_IN_WHOLE_STEP"
# A token no ordinary greedy answer produces; a request forces it with logit_bias.
POISON_TOKEN = 31999


class InjectedFault(RuntimeError):
    """Not an EngineError: what a bug or a runtime surprise looks like."""


def _text(request: GenerationRequest) -> str:
    return (request.prompt or "") + " ".join(message.content for message in request.messages)


def _faulty_accept(accept: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Sequence, *args: Any, **kwargs: Any) -> Any:
        if IN_STEP in _text(self.request) and self.completion_tokens >= 2:
            raise InjectedFault("injected into one request's step")
        return accept(self, *args, **kwargs)

    return wrapper


def load(config: ModelConfig) -> Engine:
    engine = load_engine(config)
    submit, step = engine.submit, engine.step
    whole_step_pending = False

    def faulty_submit(request: GenerationRequest) -> Event:
        nonlocal whole_step_pending
        if IN_SUBMIT in _text(request):
            raise InjectedFault("injected into submit")
        whole_step_pending |= IN_WHOLE_STEP in _text(request)
        return submit(request)

    def faulty_step() -> list[Event]:
        nonlocal whole_step_pending
        if whole_step_pending:
            whole_step_pending = False
            raise InjectedFault("injected into a whole step")
        return step()

    # Where each engine turns a token into text (GGUF: the engine; ONNX: its scheduler).
    owner: Any = getattr(engine, "_scheduler", engine)
    detokenize = owner._detokenize

    def faulty_detokenize(*args: Any) -> Any:
        if args[-1] == POISON_TOKEN:
            raise InjectedFault("injected into detokenization")
        return detokenize(*args)

    engine.submit = faulty_submit  # type: ignore[method-assign]
    engine.step = faulty_step  # type: ignore[method-assign]
    owner._detokenize = faulty_detokenize
    Sequence.accept = _faulty_accept(Sequence.accept)  # type: ignore[method-assign]
    return engine
