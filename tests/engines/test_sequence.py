"""Text release (UTF-8, stop strings), token budgets and finish reasons."""

from __future__ import annotations

import pytest

from engines.base import Finished, GenerationRequest, TokenEvent
from engines.errors import ContextLengthExceededError
from engines.sequence import Sequence, TextReleaser, completion_budget


def release_all(releaser: TextReleaser, pieces: list[bytes | str]) -> list[str]:
    return [releaser.push(piece) for piece in pieces]


def test_text_without_stop_passes_straight_through() -> None:
    assert release_all(TextReleaser(()), ["Hel", "lo"]) == ["Hel", "lo"]


def test_split_utf8_is_held_until_complete() -> None:
    euro = "€".encode()
    releaser = TextReleaser(())
    assert release_all(releaser, [euro[:1], euro[1:2], euro[2:] + b"!"]) == ["", "", "€!"]


def test_stop_string_across_tokens_is_never_released() -> None:
    releaser = TextReleaser(("END",))
    assert release_all(releaser, ["abc E", "N", "D tail"]) == ["abc ", "", ""]
    assert releaser.stopped
    assert releaser.flush() == ""


def test_partial_stop_that_does_not_complete_is_released() -> None:
    releaser = TextReleaser(("END",))
    assert release_all(releaser, ["x E", "Nd"]) == ["x ", "ENd"]
    assert not releaser.stopped


def test_held_text_is_released_at_the_end() -> None:
    releaser = TextReleaser(("STOP",))
    assert releaser.push("go ST") == "go "
    assert releaser.flush() == "ST"


def test_earliest_of_several_stops_wins() -> None:
    releaser = TextReleaser(("bb", "a"))
    assert releaser.push("xxbba") == "xx"


def request(max_tokens: int | None = None) -> GenerationRequest:
    return GenerationRequest(request_id="r", max_tokens=max_tokens)


def test_budget_explicit_max_tokens_must_fit() -> None:
    assert completion_budget(request(10), 90, 100, None) == 10
    with pytest.raises(ContextLengthExceededError, match="requested 101 tokens"):
        completion_budget(request(11), 90, 100, None)


def test_budget_defaults_fill_the_context_or_clamp() -> None:
    assert completion_budget(request(), 90, 100, None) == 10
    assert completion_budget(request(), 90, 100, 5) == 5
    assert completion_budget(request(), 90, 100, 50) == 10
    with pytest.raises(ContextLengthExceededError):
        completion_budget(request(), 100, 100, None)


def test_sequence_counts_and_finishes() -> None:
    sequence = Sequence(request(2), [1, 2, 3], 2)
    first = sequence.accept(7, b"a", is_end=False)
    assert first == [TokenEvent("r", 7, "a")]
    second = sequence.accept(8, b"b", is_end=False)
    assert isinstance(second[-1], Finished)
    finished = second[-1]
    assert (finished.finish_reason, finished.prompt_tokens, finished.completion_tokens) == (
        "length",
        3,
        2,
    )
    assert finished.time_to_first_token_s >= 0


def test_end_token_is_not_counted() -> None:
    sequence = Sequence(request(), [1], 10)
    sequence.accept(5, b"x", is_end=False)
    [finished] = sequence.accept(2, b"", is_end=True)
    assert isinstance(finished, Finished)
    assert (finished.finish_reason, finished.completion_tokens) == ("stop", 1)


def test_the_stop_string_that_ended_the_text_is_named() -> None:
    releaser = TextReleaser(("zz", "STOP", "ST"))
    assert releaser.push("abcSTOP") == "abc"
    assert releaser.stopped
    assert releaser.matched == "ST", "the earliest in the text, the shortest on a tie"
