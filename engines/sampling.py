"""Sampling parameters: the shared field definitions and the value that travels to a worker.

The OpenAI protocol models (app/protocol.py) and the per-model defaults in models.yaml
(engines/config.py) both build on the annotated types here, so bounds and descriptions are
written once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Annotated

from pydantic import Field

Temperature = Annotated[
    float,
    Field(
        ge=0.0,
        le=2.0,
        description="Sampling temperature; 0 always picks the most likely token (greedy).",
    ),
]
TopP = Annotated[
    float,
    Field(
        gt=0.0,
        le=1.0,
        description="Nucleus sampling: sample from the smallest set of tokens whose "
        "probabilities add up to top_p.",
    ),
]
TopK = Annotated[
    int, Field(ge=0, description="Sample from the k most likely tokens only; 0 disables.")
]
MinP = Annotated[
    float,
    Field(
        ge=0.0,
        le=1.0,
        description="Drop tokens less likely than min_p times the most likely token.",
    ),
]
RepetitionPenalty = Annotated[
    float,
    Field(
        gt=0.0,
        le=10.0,
        description="Divide the logits of tokens already seen by this factor; 1 disables.",
    ),
]
PresencePenalty = Annotated[
    float,
    Field(
        ge=-2.0,
        le=2.0,
        description="Subtract this from the logits of tokens that appeared at least once.",
    ),
]
FrequencyPenalty = Annotated[
    float,
    Field(
        ge=-2.0,
        le=2.0,
        description="Subtract this times the count of each token already generated.",
    ),
]
Seed = Annotated[
    int,
    Field(
        ge=-(2**63),
        le=2**63 - 1,
        description="Seed for sampling; the same seed, parameters and prompt give the same text.",
    ),
]
MaxTokens = Annotated[
    int, Field(ge=1, description="Upper bound on the number of tokens to generate.")
]

# llama.cpp treats this seed value as "pick a random seed".
_RANDOM_SEED_SENTINEL = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling settings of one request; None means "use the model's default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None

    def over(self, defaults: SamplingParams) -> SamplingParams:
        """These parameters with every unset field taken from `defaults`."""
        unset = {
            f.name: getattr(defaults, f.name) for f in fields(self) if getattr(self, f.name) is None
        }
        return replace(self, **unset)

    @property
    def is_greedy(self) -> bool:
        return self.temperature is not None and self.temperature <= 0.0

    def seed_u32(self) -> int | None:
        """The seed folded to the 32 bits the runtimes take, avoiding llama.cpp's random marker."""
        if self.seed is None:
            return None
        folded = self.seed & 0xFFFFFFFF
        return folded - 1 if folded == _RANDOM_SEED_SENTINEL else folded


# OpenAI's documented defaults; a model's own defaults (models.yaml) sit on top of these.
OPENAI_DEFAULTS = SamplingParams(
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    min_p=0.0,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
)
