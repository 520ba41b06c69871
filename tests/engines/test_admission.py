"""The load admission policy: LRU eviction of idle unpinned models, wait, or refuse."""

from __future__ import annotations

from engines.admission import AdmissionPlan, LoadedModel, Verdict, plan_admission

MB = 1_000_000


def model(
    name: str, last_used: float, size: int = 100 * MB, *, pinned: bool = False, busy: bool = False
) -> LoadedModel:
    return LoadedModel(name, last_used, size, pinned, busy)


def plan(loaded: list[LoadedModel], need: int = 100 * MB, **limits: int | None) -> AdmissionPlan:
    return plan_admission(
        loaded,
        need_bytes=need,
        max_models=limits.get("max_models"),
        budget=limits.get("budget"),
    )


def test_room_to_spare_evicts_nothing() -> None:
    assert plan([model("a", 1)], max_models=2) == AdmissionPlan(Verdict.ADMIT)
    assert plan([model("a", 1)]) == AdmissionPlan(Verdict.ADMIT)


def test_count_limit_evicts_least_recently_used_first() -> None:
    loaded = [model("new", 3), model("old", 1), model("mid", 2)]
    result = plan(loaded, max_models=3)
    assert result == AdmissionPlan(Verdict.ADMIT, ("old",))
    assert plan(loaded, max_models=2).evict == ("old", "mid")


def test_memory_budget_evicts_until_it_fits() -> None:
    loaded = [model("a", 1, 300 * MB), model("b", 2, 300 * MB), model("c", 3, 300 * MB)]
    assert plan(loaded, need=250 * MB, budget=1000 * MB).evict == ("a",)
    assert plan(loaded, need=450 * MB, budget=1000 * MB).evict == ("a", "b")


def test_pinned_and_busy_models_are_never_evicted() -> None:
    loaded = [model("pinned", 0, pinned=True), model("busy", 1, busy=True), model("idle", 2)]
    assert plan(loaded, max_models=3).evict == ("idle",)


def test_busy_models_holding_the_room_means_wait() -> None:
    loaded = [model("busy", 1, busy=True)]
    result = plan(loaded, max_models=1)
    assert result.verdict is Verdict.WAIT
    assert "busy" in result.reason


def test_pinned_models_filling_the_room_means_refuse() -> None:
    loaded = [model("p", 1, pinned=True), model("busy", 2, busy=True)]
    result = plan(loaded, max_models=1)
    assert result.verdict is Verdict.REFUSE
    assert "pinned" in result.reason


def test_a_model_larger_than_the_budget_is_refused() -> None:
    result = plan([], need=600 * MB, budget=500 * MB)
    assert result.verdict is Verdict.REFUSE
    assert "more than the whole memory budget" in result.reason


def test_a_model_still_loading_holds_its_room_and_is_named_as_loading() -> None:
    loading = LoadedModel("a", 1, 600 * MB, pinned=False, busy=True, loading=True)
    result = plan([loading], need=600 * MB, budget=1000 * MB)
    assert result.verdict is Verdict.WAIT
    assert result.reason == "models in use hold the room: a (loading)"
