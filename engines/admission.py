"""Deciding whether a model may be loaded now, and what to unload to make room.

A pure function of the loaded models' facts, so the policy is tested without processes:
least-recently-used idle models that are not pinned are unloaded first; a busy model is never
unloaded under a request; a model that could not fit even if every unpinned model went away is
refused at once rather than left waiting. A model still loading is passed in as busy, with the
room it is expected to take: it holds that room, and it cannot be unloaded yet.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    last_used: float
    resident_bytes: int
    pinned: bool
    busy: bool  # requests running on it or waiting for it
    loading: bool = False  # not loaded yet: resident_bytes is the room reserved for it


class Verdict(enum.Enum):
    ADMIT = "admit"  # load now, after unloading `evict`
    WAIT = "wait"  # busy models hold the room; it may free up
    REFUSE = "refuse"  # can never fit next to the pinned models


@dataclass(frozen=True, slots=True)
class AdmissionPlan:
    verdict: Verdict
    evict: tuple[str, ...] = ()
    reason: str = ""


def _fits(
    kept: Sequence[LoadedModel], need_bytes: int, max_models: int | None, budget: int | None
) -> bool:
    if max_models is not None and len(kept) + 1 > max_models:
        return False
    return budget is None or sum(m.resident_bytes for m in kept) + need_bytes <= budget


def plan_admission(
    loaded: Sequence[LoadedModel],
    *,
    need_bytes: int,
    max_models: int | None,
    budget: int | None,
) -> AdmissionPlan:
    """What it takes to load one more model needing `need_bytes` next to `loaded`."""
    if budget is not None and need_bytes > budget:
        return AdmissionPlan(
            Verdict.REFUSE,
            reason=f"it needs about {need_bytes} bytes, more than the whole memory budget "
            f"of {budget} bytes",
        )
    if _fits(loaded, need_bytes, max_models, budget):
        return AdmissionPlan(Verdict.ADMIT)
    kept = list(loaded)
    evict: list[str] = []
    for candidate in sorted(
        (m for m in loaded if not m.pinned and not m.busy), key=lambda m: m.last_used
    ):
        kept.remove(candidate)
        evict.append(candidate.name)
        if _fits(kept, need_bytes, max_models, budget):
            return AdmissionPlan(Verdict.ADMIT, tuple(evict))
    pinned = [m for m in loaded if m.pinned]
    if _fits(pinned, need_bytes, max_models, budget):
        busy = ", ".join(
            f"{m.name} (loading)" if m.loading else m.name
            for m in loaded
            if m.busy and not m.pinned
        )
        return AdmissionPlan(Verdict.WAIT, reason=f"models in use hold the room: {busy}")
    return AdmissionPlan(
        Verdict.REFUSE,
        reason="pinned models leave no room for it "
        f"({', '.join(m.name for m in pinned)}; max_loaded_models={max_models}, "
        f"memory_budget={budget})",
    )
