"""Two replicas behind a real HAProxy, sharing a real Redis, watched by a real Prometheus:
restarting each replica in turn under load loses nothing.

A few clients (openai SDK, through HAProxy) send chat completions, streams, Responses chains
(previous_response_id) and, one time in ten, a stream they hang up on, while replica A and then
replica B get SIGTERM, exit and start again on the same port. Every outcome is counted, and the
tokens the clients got are compared with what Prometheus scraped from the replicas.

How the counts compare (counters restart at zero with a replica): the total per replica is the
value its first lifetime ended with plus the value its second lifetime has at the end. Each
lifetime's last value is read from Prometheus once the replica has settled (HAProxy took it out
and nothing runs there: no counter can move again) and after a scrape that followed; the test
checks it against the replica's own /metrics at that moment. Then, exactly:
- tokens of completed requests (`slmserve_request_generation_tokens_sum`) equal the
  `completion_tokens` of every request the clients completed, and the request counts match;
- the clients' hang-ups are the `abort` requests, and the rest of
  `slmserve_generation_tokens_total` (what the hung-up requests had generated when the server
  noticed) is at least what those clients read and at most their max_tokens.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_MODEL_NAME, REPO
from tests.e2e.server import free_port, wait_for_ready, write_models
from tests.fleet.services import run_haproxy, run_prometheus, run_redis

HAPROXY_CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"

CLIENTS = 3
LOAD_S = 75.0
FIRST_RESTART_AFTER_S = 12.0
# Longer than the default 5 s: on a busy 2-core machine running requests need the time to end
# inside the grace, where the settled counters can still be read.
GRACE_S = 10.0
MAX_TOKENS = 16
HANG_UP_MAX_TOKENS = 200
HANG_UP_AFTER_CHUNKS = 3
END_TOKEN = "2"  # SmolLM2's <|im_end|> (its GGUF's tokenizer.ggml.eos_token_id)
CHAIN_TURNS = 3
THINGS = ("river", "mountain", "city", "colour", "planet", "fruit", "tool", "bird")


@dataclass
class Outcome:
    kind: str  # chat, stream, hangup, responses, direct
    ok: bool
    served_by: str = ""
    completion_tokens: int = 0
    chunks: int = 0
    session: str | None = None
    started: float = 0.0
    error: str = ""


@dataclass
class Chain:
    turns: list[tuple[str, str]] = field(default_factory=list)  # (response id, served by)
    complete: bool = False


@dataclass
class Replica:
    name: str  # a, b
    server: str  # its name in haproxy.cfg
    port: int
    directory: Path
    models_file: Path
    redis_url: str
    process: subprocess.Popen[bytes] | None = None
    lives: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"replica-{self.name}-{self.lives}.log"

    def start(self) -> None:
        self.lives += 1
        env = {**os.environ, "SLMSERVE_RESPONSE_STORE": self.redis_url}
        command = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)]
        command += ["--models", str(self.models_file), "--drain-grace-s", str(GRACE_S)]
        command += ["--drain-timeout-s", "60", "--data-dir", str(self.directory / "data")]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        process = self.process
        assert process is not None
        wait_for_ready(self.url, 180, self.log, lambda: process.poll() is not None)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


# -- what the replicas and Prometheus say ---------------------------------------------------

# One number per replica each; the same sums from a replica's /metrics and from Prometheus.
QUERIES = {
    "generated": "slmserve_generation_tokens_total",
    "completed_tokens": "slmserve_request_generation_tokens_sum",
    "completed": 'slmserve_request_success_total{finished_reason!="abort"}',
    "aborted": 'slmserve_request_success_total{finished_reason="abort"}',
    "errors": "slmserve_request_errors_total",
    "busy": "slmserve_num_requests_running",
}


def scrape(replica: Replica) -> dict[str, float]:
    """QUERIES' sums from the replica's own /metrics."""
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    totals = dict.fromkeys(QUERIES, 0.0)
    for key, query in QUERIES.items():
        name, _, selector = query.partition("{")
        wanted = selector.rstrip("}")
        for sample in samples:
            if sample.name != name:
                continue
            reason = sample.labels.get("finished_reason")
            if wanted.startswith('finished_reason!="abort"') and reason == "abort":
                continue
            if wanted.startswith('finished_reason="abort"') and reason != "abort":
                continue
            totals[key] += sample.value
    waiting = [s.value for s in samples if s.name == "slmserve_num_requests_waiting"]
    totals["busy"] += sum(waiting)
    return totals


def prom_query(prometheus: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, str] = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    body = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def prom_values(prometheus: str, replica: Replica, at: float) -> dict[str, float]:
    """QUERIES' sums for one replica, as Prometheus had them at `at` (a dashboard's query)."""
    values = dict.fromkeys(QUERIES, 0.0)
    for key, query in QUERIES.items():
        name, brace, selector = query.partition("{")
        inner = f'replica="{replica.name}"' + (f",{selector.rstrip('}')}" if brace else "")
        expr = f"sum({name}{{{inner}}})"
        if key == "busy":
            expr = f"{expr} + sum(slmserve_num_requests_waiting{{{inner}}})"
        for row in prom_query(prometheus, expr, at):
            values[key] = float(row["value"][1])
    return values


def last_scraped(prometheus: str, replica: Replica) -> float:
    rows = prom_query(prometheus, f'timestamp(up{{job="slmserve",replica="{replica.name}"}})')
    return float(rows[0]["value"][1]) if rows else 0.0


def haproxy_status(stats: str) -> dict[str, str]:
    text = httpx.get(f"{stats}/stats;csv", timeout=5).text.lstrip("# ")
    return {
        row["svname"]: row["status"]
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"] == "slmserve" and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def settled_counts(prometheus: str, replica: Replica) -> dict[str, float]:
    """Once nothing can move the replica's counters: its values, from Prometheus after a
    scrape that followed, checked against its own /metrics."""
    eventually(lambda: scrape(replica)["busy"] == 0, GRACE_S, f"{replica.name} to go idle")
    settled_at = time.time()
    direct = scrape(replica)
    eventually(
        lambda: last_scraped(prometheus, replica) > settled_at + 0.2,
        10,
        f"Prometheus to scrape {replica.name} again",
    )
    seen = prom_values(prometheus, replica, time.time())
    assert seen == direct, (seen, direct)
    return seen


def restart(replica: Replica, other: Replica, prometheus: str, stats: str) -> dict[str, float]:
    """SIGTERM, settle, exit, start again; the counts its first life ended with."""
    process = replica.process
    assert process is not None
    eventually(lambda: haproxy_status(stats)[other.server] == "UP", 60, f"{other.name} up")
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    eventually(
        lambda: httpx.get(f"{replica.url}/ready", timeout=5).json()["status"] == "draining",
        1,
        f"{replica.name} to report draining",
    )
    eventually(
        lambda: haproxy_status(stats)[replica.server].startswith("DOWN"),
        GRACE_S,
        f"HAProxy to take {replica.name} out",
    )
    taken_out_s = time.monotonic() - signalled
    counts = settled_counts(prometheus, replica)
    assert time.monotonic() - signalled < GRACE_S, "settled within the grace"
    assert process.wait(timeout=90) in (0, -signal.SIGTERM)
    log = replica.log()
    assert "draining: /ready answers 503" in log
    assert "drain grace over: new requests are refused" in log
    print(f"replica {replica.name}: out of HAProxy {taken_out_s:.1f}s after SIGTERM; {counts}")
    replica.start()
    replica.wait_ready()
    eventually(lambda: haproxy_status(stats)[replica.server] == "UP", 30, f"{replica.name} up")
    return counts


# -- the clients ----------------------------------------------------------------------------


def chat(client: openai.OpenAI, prompt: str, session: str) -> Outcome:
    raw = client.chat.completions.with_raw_response.create(
        model=DEFAULT_MODEL_NAME,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        extra_headers={"X-Session-Id": session},
    )
    completion = raw.parse()
    assert completion.usage is not None
    served = raw.headers.get("x-served-by", "")
    tokens = completion.usage.completion_tokens
    return Outcome("chat", True, served, tokens, session=session)


def stream(client: openai.OpenAI, prompt: str, session: str, hang_up: bool) -> Outcome:
    """A stream read to its `[DONE]` (or, to hang up, only its first few tokens)."""
    with client.chat.completions.with_streaming_response.create(
        model=DEFAULT_MODEL_NAME,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=HANG_UP_MAX_TOKENS if hang_up else MAX_TOKENS,
        # A stream hung up on must still be generating when the server notices: no end token.
        logit_bias={END_TOKEN: -100} if hang_up else None,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Session-Id": session},
    ) as response:
        served = response.headers.get("x-served-by", "")
        payloads: list[str] = []
        chunks = 0
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line.removeprefix("data: ")
            payloads.append(payload)
            if payload != "[DONE]" and json.loads(payload)["choices"]:
                delta = json.loads(payload)["choices"][0]["delta"]
                chunks += bool(delta.get("content"))
            if hang_up and chunks == HANG_UP_AFTER_CHUNKS:
                return Outcome("hangup", True, served, chunks=chunks, session=session)
    assert not hang_up, "the stream ended before the client could hang up"
    assert payloads[-1:] == ["[DONE]"], f"a stream ended without [DONE]: {payloads[-2:]}"
    tokens = json.loads(payloads[-2])["usage"]["completion_tokens"]
    return Outcome("stream", True, served, tokens, chunks, session=session)


def responses_chain(client: openai.OpenAI, topic: str, chain: Chain) -> list[Outcome]:
    """CHAIN_TURNS turns, each continuing the last by previous_response_id (no session)."""
    outcomes = []
    previous: openai.types.responses.Response | None = None
    for turn in range(CHAIN_TURNS):
        text = f"Name one {topic}." if turn == 0 else "And another one?"
        if previous is None:
            raw = client.responses.with_raw_response.create(
                model=DEFAULT_MODEL_NAME, input=text, max_output_tokens=MAX_TOKENS
            )
        else:
            raw = client.responses.with_raw_response.create(
                model=DEFAULT_MODEL_NAME,
                input=text,
                max_output_tokens=MAX_TOKENS,
                previous_response_id=previous.id,
            )
        response = raw.parse()
        assert response.usage is not None
        if previous is not None:
            # The stored conversation (from the shared store) really came along.
            assert previous.usage is not None
            carried = previous.usage.input_tokens + previous.usage.output_tokens
            assert response.usage.input_tokens > carried
        served = raw.headers.get("x-served-by", "")
        chain.turns.append((response.id, served))
        outcomes.append(Outcome("responses", True, served, response.usage.output_tokens))
        previous = response
    chain.complete = True
    return outcomes


def client_loop(
    index: int, base_url: str, stop_at: float, outcomes: list[Outcome], chains: list[Chain]
) -> None:
    rng = random.Random(index)
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    session = f"session-{index}"
    number = 0
    while time.monotonic() < stop_at:
        number += 1
        roll = rng.random()
        prompt = f"Client {index}, request {number}: name a {rng.choice(THINGS)}."
        kind = "hangup" if roll < 0.1 else "chat" if roll < 0.4 else "stream" if roll < 0.7 else ""
        started = time.monotonic()
        try:
            if kind == "chat":
                done = [chat(client, prompt, session)]
            elif kind in ("stream", "hangup"):
                done = [stream(client, prompt, session, hang_up=kind == "hangup")]
            else:
                kind = "responses"
                chain = Chain()
                chains.append(chain)
                done = responses_chain(client, rng.choice(THINGS), chain)
        except Exception as error:  # every failure is counted, none ends the loop
            done = [Outcome(kind, False, error=f"{type(error).__name__}: {error}")]
        for outcome in done:
            outcome.started = started
        outcomes.extend(done)


def cross_replica_chain(replicas: list[Replica]) -> list[Outcome]:
    """A response created through replica A is continued through replica B."""
    first_client, second_client = (
        openai.OpenAI(base_url=f"{r.url}/v1", api_key="unused", max_retries=0) for r in replicas
    )
    first = first_client.responses.create(
        model=DEFAULT_MODEL_NAME, input="My name is Ada. Say hello.", max_output_tokens=MAX_TOKENS
    )
    second = second_client.responses.create(
        model=DEFAULT_MODEL_NAME,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=MAX_TOKENS,
    )
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.previous_response_id == first.id
    assert second_client.responses.retrieve(first.id).id == first.id
    return [
        Outcome("direct", True, replicas[0].server, first.usage.output_tokens),
        Outcome("direct", True, replicas[1].server, second.usage.output_tokens),
    ]


# -- the test -------------------------------------------------------------------------------


def test_restarting_each_replica_under_load_loses_nothing(
    default_model_path: Path, tmp_path: Path
) -> None:
    model = {
        "name": DEFAULT_MODEL_NAME,
        "engine": "gguf",
        "path": str(default_model_path),
        "context_length": 1024,
        "parallel": 2,
        "n_threads": 1,
    }
    models_file = write_models(tmp_path / "models.yaml", [model])
    with ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(tmp_path / "redis"))
        replicas = [
            Replica(name, server, free_port(), tmp_path, models_file, redis_url)
            for name, server in (("a", "replica1"), ("b", "replica2"))
        ]
        for replica in replicas:
            stack.callback(replica.kill)
            replica.start()
        for replica in replicas:
            replica.wait_ready()

        lb_port, stats_port = free_port(), free_port()
        haproxy_env = {
            "LB_BIND": f"127.0.0.1:{lb_port}",
            "LB_STATS_BIND": f"127.0.0.1:{stats_port}",
            "REPLICA_1": f"127.0.0.1:{replicas[0].port}",
            "REPLICA_2": f"127.0.0.1:{replicas[1].port}",
        }
        stack.enter_context(
            run_haproxy(HAPROXY_CONFIG, lb_port, tmp_path / "haproxy.log", haproxy_env)
        )
        lb, stats = f"http://127.0.0.1:{lb_port}", f"http://127.0.0.1:{stats_port}"

        shipped = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        shipped["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        shipped["rule_files"] = [
            str(PROMETHEUS_CONFIG.parent / path) for path in shipped["rule_files"]
        ]
        shipped["scrape_configs"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{r.port}"], "labels": {"replica": r.name}} for r in replicas
        ]
        shipped["scrape_configs"].append(
            {"job_name": "haproxy", "static_configs": [{"targets": [f"127.0.0.1:{stats_port}"]}]}
        )
        (tmp_path / "prometheus").mkdir()
        config = tmp_path / "prometheus" / "prometheus.yml"
        config.write_text(yaml.safe_dump(shipped))
        prometheus = stack.enter_context(run_prometheus(config, tmp_path / "prometheus"))

        eventually(
            lambda: set(haproxy_status(stats).values()) == {"UP"}, 30, "HAProxy: replicas up"
        )
        eventually(
            lambda: len(prom_query(prometheus, "up == 1")) == 3, 30, "Prometheus: targets up"
        )

        outcomes: list[Outcome] = cross_replica_chain(replicas)
        chains: list[Chain] = []
        load_started = time.monotonic()
        stop_at = load_started + LOAD_S
        lives_ended: list[dict[str, float]] = []
        with ThreadPoolExecutor(CLIENTS) as pool:
            clients = [
                pool.submit(client_loop, index, lb, stop_at, outcomes, chains)
                for index in range(CLIENTS)
            ]
            time.sleep(FIRST_RESTART_AFTER_S)
            first_restart = time.monotonic()
            lives_ended.append(restart(replicas[0], replicas[1], prometheus, stats))
            lives_ended.append(restart(replicas[1], replicas[0], prometheus, stats))
            for client in clients:
                client.result()
        load_s = time.monotonic() - load_started
        now_live = [settled_counts(prometheus, replica) for replica in replicas]
        up = prom_query(prometheus, 'up{job="haproxy"}')
        assert [row["value"][1] for row in up] == ["1"]

    # -- every outcome -----------------------------------------------------------------
    failures = [o for o in outcomes if not o.ok]
    by_kind = {
        kind: [o for o in outcomes if o.kind == kind and o.ok]
        for kind in ("chat", "stream", "hangup", "responses", "direct")
    }
    completed = [o for o in outcomes if o.ok and o.kind != "hangup"]
    hangups = by_kind["hangup"]
    client_tokens = sum(o.completion_tokens for o in completed)
    served_by = {o.served_by for o in completed}
    crossing = [c for c in chains if len({served for _, served in c.turns}) > 1]
    server = {key: sum(c[key] for c in lives_ended + now_live) for key in QUERIES}
    summary = {
        "load_s": round(load_s, 1),
        "requests": len(outcomes),
        **{kind: len(done) for kind, done in by_kind.items()},
        "failures": len(failures),
        "chains": len(chains),
        "chains_across_replicas": len(crossing),
        "client_completion_tokens": client_tokens,
        "server": server,
    }
    print(f"fleet summary: {json.dumps(summary)}")

    assert not failures, "\n".join(f"{o.kind}: {o.error}" for o in failures[:20])
    assert all(c.complete and len(c.turns) == CHAIN_TURNS for c in chains)
    assert crossing, "some Responses chain continued on the other replica"
    assert served_by == {"replica1", "replica2"}
    assert all(by_kind[kind] for kind in ("chat", "stream", "hangup", "responses"))
    # Affinity: before the first restart, each session's requests went to one replica.
    for session in {o.session for o in completed if o.session}:
        before = {
            o.served_by for o in completed if o.session == session and o.started < first_restart
        }
        assert len(before) <= 1, (session, before)
    # Tokens and requests, server against clients.
    assert server["errors"] == 0
    assert server["completed"] == len(completed)
    assert server["completed_tokens"] == client_tokens
    assert server["aborted"] == len(hangups)
    partial = server["generated"] - server["completed_tokens"]
    read = sum(o.chunks for o in hangups)
    assert read <= partial <= len(hangups) * HANG_UP_MAX_TOKENS, (read, partial)
