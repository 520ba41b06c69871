"""Prometheus metrics, named and bucketed after vLLM's, prefixed `slmserve_`.

Two kinds of data:
- per request, observed where tokens leave the front end (`RequestTracker`): time to first
  token, inter-token latency, end-to-end latency, queue time, token counts (the engine's own,
  from the final usage, including the prompt tokens its prefix cache served), outcomes; plus
  the prefill and decode times the worker measured where tokens are produced. The per-token
  cost is one clock read and one histogram observation.
- per model state (running, waiting, loaded, memory, restarts), read from the pool only when
  Prometheus scrapes (`PoolCollector`): nothing on the hot path.

Throughput and the prefix-cache hit rate are left to PromQL
(`rate(slmserve_generation_tokens_total[1m])`, `rate(slmserve_prefix_cache_hits_total[5m]) /
rate(slmserve_prefix_cache_queries_total[5m])`): no average-since-start gauges that hide
regressions. Each app owns its registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engines.base import Accepted, Event, Finished, TokenEvent
from engines.pool import ModelState, ModelStatus

MODEL_LABELS = ("model", "engine", "provider")
UNKNOWN = "none"  # label value for requests that name no configured model (bounded cardinality)
# The API family a route belongs to (the `api` label of request outcomes), by path prefix.
API_PATHS = (
    ("/v1/chat/completions", "chat_completions"),
    ("/v1/completions", "completions"),
    ("/v1/embeddings", "embeddings"),
    ("/v1/responses", "responses"),
    ("/v1/messages", "anthropic_messages"),
    ("/api/", "ollama"),
)


def api_of(path: str) -> str:
    """The `api` label of a request path (bounded: unknown paths are "other")."""
    return next((api for prefix, api in API_PATHS if path.startswith(prefix)), "other")


# vLLM's buckets; inter-token latency gets finer low buckets since small models on CPUs and
# GPUs produce tokens every few milliseconds.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
PHASE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, *REQUEST_LATENCY_BUCKETS)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class PoolCollector(Collector):
    """Model state read from the pool at scrape time."""

    def __init__(self, statuses: Callable[[], list[ModelStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        statuses = self._statuses()
        running = GaugeMetricFamily(
            "slmserve_num_requests_running", "Requests generating now.", labels=MODEL_LABELS
        )
        waiting = GaugeMetricFamily(
            "slmserve_num_requests_waiting", "Requests waiting for a slot.", labels=MODEL_LABELS
        )
        slots = GaugeMetricFamily(
            "slmserve_parallel_slots", "Requests a model generates at once.", labels=MODEL_LABELS
        )
        capacity = GaugeMetricFamily(
            "slmserve_queue_capacity",
            "Requests that may wait for a slot before the server answers 429.",
            labels=MODEL_LABELS,
        )
        state = GaugeMetricFamily(
            "slmserve_model_state",
            "1 for the state each model is in (unloaded, loading, ready, failed).",
            labels=(*MODEL_LABELS, "state"),
        )
        memory = GaugeMetricFamily(
            "slmserve_worker_resident_memory_bytes",
            "Resident memory of each loaded model's worker process.",
            labels=MODEL_LABELS,
        )
        restarts = CounterMetricFamily(
            "slmserve_worker_restarts",
            "Times a model's worker died unexpectedly.",
            labels=MODEL_LABELS,
        )
        loaded = GaugeMetricFamily("slmserve_loaded_models", "Models loaded in worker processes.")
        for status in statuses:
            labels = (status.name, status.engine, status.provider)
            running.add_metric(labels, status.running)
            waiting.add_metric(labels, status.waiting)
            slots.add_metric(labels, status.parallel)
            capacity.add_metric(labels, status.max_queue)
            for model_state in ModelState:
                state.add_metric((*labels, model_state.value), float(status.state is model_state))
            if status.resident_bytes is not None:
                memory.add_metric(labels, status.resident_bytes)
            restarts.add_metric(labels, status.restarts)
        loaded.add_metric((), sum(status.state is ModelState.READY for status in statuses))
        yield from (running, waiting, slots, capacity, state, memory, restarts, loaded)


class ServerMetrics:
    """Every metric of one server, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = MODEL_LABELS

        def histogram(name: str, text: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, text, labels, buckets=buckets, registry=self.registry)

        self.time_to_first_token = histogram(
            "slmserve_time_to_first_token_seconds",
            "From request arrival to the first token leaving the server.",
            TTFT_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "slmserve_inter_token_latency_seconds",
            "Between two tokens leaving the server.",
            ITL_BUCKETS,
        )
        self.e2e_latency = histogram(
            "slmserve_e2e_request_latency_seconds",
            "From request arrival to its last token.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "slmserve_request_queue_time_seconds",
            "From arrival until the worker accepts the request (queue, model load).",
            PHASE_BUCKETS,
        )
        self.prefill_time = histogram(
            "slmserve_request_prefill_time_seconds",
            "Prompt processing up to the first token, measured in the worker.",
            PHASE_BUCKETS,
        )
        self.decode_time = histogram(
            "slmserve_request_decode_time_seconds",
            "From the first to the last token, measured in the worker.",
            PHASE_BUCKETS,
        )
        self.prompt_tokens_per_request = histogram(
            "slmserve_request_prompt_tokens", "Prompt tokens per finished request.", TOKEN_BUCKETS
        )
        self.generation_tokens_per_request = histogram(
            "slmserve_request_generation_tokens",
            "Generated tokens per finished request.",
            TOKEN_BUCKETS,
        )
        self.prompt_tokens = Counter(
            "slmserve_prompt_tokens", "Prompt tokens processed.", labels, registry=self.registry
        )
        self.generation_tokens = Counter(
            "slmserve_generation_tokens", "Tokens generated.", labels, registry=self.registry
        )
        # vLLM's pair: both count tokens, so that hits / queries is the share of prompt
        # tokens that were not evaluated again.
        self.prefix_cache_queries = Counter(
            "slmserve_prefix_cache_queries",
            "Prompt tokens of finished requests, looked up in the prefix cache.",
            labels,
            registry=self.registry,
        )
        self.prefix_cache_hits = Counter(
            "slmserve_prefix_cache_hits",
            "Prompt tokens served from the prefix cache (a KV cache a previous request left).",
            labels,
            registry=self.registry,
        )
        self.request_success = Counter(
            "slmserve_request_success",
            "Requests that ended normally, by API and finish reason (stop, length, abort: "
            "client left).",
            (*labels, "api", "finished_reason"),
            registry=self.registry,
        )
        self.request_errors = Counter(
            "slmserve_request_errors",
            "Requests answered with an error, by API and OpenAI error code.",
            (*labels, "api", "code"),
            registry=self.registry,
        )
        self.load_duration = histogram(
            "slmserve_model_load_duration_seconds",
            "Time to start a worker, load the model and warm it up.",
            LOAD_BUCKETS,
        )
        self._statuses: Callable[[], list[ModelStatus]] = list

    def watch_pool(self, statuses: Callable[[], list[ModelStatus]]) -> None:
        self._statuses = statuses
        self.registry.register(PoolCollector(statuses))

    def labels_for(self, model: str) -> tuple[str, str, str]:
        for status in self._statuses():
            if status.name == model:
                return (status.name, status.engine, status.provider)
        return (UNKNOWN, UNKNOWN, UNKNOWN)

    def model_loaded(self, status: ModelStatus) -> None:
        if status.load_seconds is not None:
            labels = (status.name, status.engine, status.provider)
            self.load_duration.labels(*labels).observe(status.load_seconds)

    def count_error(self, model: str, code: str | None, path: str) -> None:
        self.request_errors.labels(*self.labels_for(model), api_of(path), code or "unknown").inc()

    def track(
        self, model: str, api: str, choices: int = 1, choices_per_prompt: int = 1
    ) -> RequestTracker:
        return RequestTracker(self, model, api, choices, choices_per_prompt)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Observes one request's events as they leave the server (all of its choices).

    Latencies follow each choice's tokens; counts follow the response's usage: the prompt once,
    generated tokens of every choice; the request ends when its last choice does.
    """

    def __init__(
        self,
        metrics: ServerMetrics,
        model: str,
        api: str,
        choices: int = 1,
        choices_per_prompt: int = 1,
    ) -> None:
        self._metrics = metrics
        self._model = model
        self._api = api
        self._choices = choices
        self._choices_per_prompt = choices_per_prompt
        self._arrived = time.monotonic()
        self._first_token_seen = False
        self._last_token_at: dict[int, float] = {}
        self._labels: tuple[str, str, str] | None = None
        self._inter_token: Histogram | None = None  # the labelled child, looked up once
        self._prompt_tokens = 0
        self._generated = 0
        self._finished: dict[int, Finished] = {}
        self._done = False

    def observe(self, event: Event, index: int = 0) -> None:
        if isinstance(event, TokenEvent):
            now = time.monotonic()
            if not self._first_token_seen:
                self._first_token_seen = True
                labels = self._model_labels()
                self._metrics.time_to_first_token.labels(*labels).observe(now - self._arrived)
                self._inter_token = self._metrics.inter_token_latency.labels(*labels)
            previous = self._last_token_at.get(index)
            if previous is not None and self._inter_token is not None:
                self._inter_token.observe(now - previous)
            self._last_token_at[index] = now
            self._generated += 1
        elif isinstance(event, Accepted):
            if self._labels is None:
                self._labels = self._metrics.labels_for(self._model)
                self._prompt_tokens = event.prompt_tokens
                queue_time = time.monotonic() - self._arrived
                self._metrics.queue_time.labels(*self._labels).observe(queue_time)
        elif isinstance(event, Finished):
            self._finished[index] = event
            if len(self._finished) == self._choices:
                self._all_finished()

    def _model_labels(self) -> tuple[str, str, str]:
        if self._labels is None:
            self._labels = self._metrics.labels_for(self._model)
        return self._labels

    def _all_finished(self) -> None:
        metrics, labels = self._metrics, self._model_labels()
        first = self._finished[min(self._finished)]
        if not self._first_token_seen:  # every choice ended on its first (end) token
            metrics.time_to_first_token.labels(*labels).observe(time.monotonic() - self._arrived)
        generated = sum(event.completion_tokens for event in self._finished.values())
        # Like usage: each prompt once, however many choices it has.
        one_per_prompt = [
            event
            for index, event in self._finished.items()
            if index % self._choices_per_prompt == 0
        ]
        prompt = sum(event.prompt_tokens for event in one_per_prompt)
        metrics.e2e_latency.labels(*labels).observe(time.monotonic() - self._arrived)
        metrics.prefill_time.labels(*labels).observe(first.time_to_first_token_s)
        metrics.decode_time.labels(*labels).observe(first.generation_s)
        metrics.prompt_tokens_per_request.labels(*labels).observe(prompt)
        metrics.generation_tokens_per_request.labels(*labels).observe(generated)
        metrics.prompt_tokens.labels(*labels).inc(prompt)
        metrics.prefix_cache_queries.labels(*labels).inc(prompt)
        metrics.prefix_cache_hits.labels(*labels).inc(
            sum(event.cached_prompt_tokens for event in one_per_prompt)
        )
        metrics.generation_tokens.labels(*labels).inc(generated)
        metrics.request_success.labels(*labels, self._api, first.finish_reason).inc()
        self._done = True

    def expect(self, choices: int, choices_per_prompt: int) -> None:
        """How many choices the request turned out to have (known once it is planned)."""
        self._choices, self._choices_per_prompt = choices, choices_per_prompt

    def embedded(self, prompt_tokens: int) -> None:
        """An embedding request ended: its inputs count as prompt tokens, like a prefill."""
        metrics, labels = self._metrics, self._model_labels()
        metrics.e2e_latency.labels(*labels).observe(time.monotonic() - self._arrived)
        metrics.prompt_tokens_per_request.labels(*labels).observe(prompt_tokens)
        metrics.prompt_tokens.labels(*labels).inc(prompt_tokens)
        metrics.request_success.labels(*labels, self._api, "stop").inc()
        self._done = True

    def failed(self, code: str | None) -> None:
        """The request ended with an error (before or during generation)."""
        if not self._done:
            self._count_partial_work()
            labels = self._model_labels()
            self._metrics.request_errors.labels(*labels, self._api, code or "unknown").inc()
            self._done = True

    def aborted(self) -> None:
        """The client left before the end."""
        if not self._done:
            self._count_partial_work()
            labels = self._model_labels()
            self._metrics.request_success.labels(*labels, self._api, "abort").inc()
            self._done = True

    def _count_partial_work(self) -> None:
        labels = self._model_labels()
        if self._prompt_tokens:
            self._metrics.prompt_tokens.labels(*labels).inc(self._prompt_tokens)
        if self._generated:
            self._metrics.generation_tokens.labels(*labels).inc(self._generated)
