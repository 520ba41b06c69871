"""Sampling parameters: layering of defaults and seed folding."""

from __future__ import annotations

from engines.sampling import OPENAI_DEFAULTS, SamplingParams


def test_request_values_win_over_model_defaults_over_openai_defaults() -> None:
    model_defaults = SamplingParams(temperature=0.3, top_p=0.9)
    resolved = SamplingParams(top_p=0.5).over(model_defaults).over(OPENAI_DEFAULTS)
    assert (resolved.temperature, resolved.top_p, resolved.top_k) == (0.3, 0.5, 0)


def test_greedy_means_temperature_zero() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    assert not SamplingParams(temperature=0.1).is_greedy
    assert not SamplingParams().is_greedy


def test_seed_folds_to_32_bits_and_avoids_the_random_marker() -> None:
    assert SamplingParams(seed=5).seed_u32() == 5
    assert SamplingParams(seed=-1).seed_u32() == 0xFFFFFFFE
    assert SamplingParams(seed=2**32 + 7).seed_u32() == 7
    assert SamplingParams().seed_u32() is None
