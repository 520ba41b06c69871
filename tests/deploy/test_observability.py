"""Prometheus scraping a live slmserve: target up, rules loaded, every dashboard panel answers.

Also: promtool checks the config and metrics and runs the rule unit tests, and the dashboard is
type-checked against @grafana/schema.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import DEFAULT_MODEL_NAME, ONNX_MODEL_NAME, REPO
from tests.deploy.conftest import require_tool
from tests.e2e.conftest import ChatMessages, openai_client
from tests.e2e.server import LiveServer, free_port, run_server, write_models

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ADAPTER_VALUES = REPO / "deploy" / "helm" / "prometheus-adapter-values.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "slmserve-dashboard.json"


def run(*command: str, cwd: Path = REPO) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_promtool_checks_config_rules_and_rule_tests() -> None:
    promtool = require_tool("promtool")
    run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    run(promtool, "check", "rules", *map(str, sorted(PROMETHEUS_DIR.glob("rules/*.yml"))))
    output = run(promtool, "test", "rules", "tests/slmserve-rules.test.yml", cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in output


def test_dashboard_type_checks_against_grafana_schema() -> None:
    require_tool("npm")
    run(str(REPO / "deploy" / "grafana" / "typecheck.sh"))


@pytest.fixture(scope="module")
def live_server(
    default_model_path: Path, onnx_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("observed")
    models: list[dict[str, Any]] = [
        {"name": DEFAULT_MODEL_NAME, "engine": "gguf", "path": str(default_model_path)},
        {"name": ONNX_MODEL_NAME, "engine": "onnx", "path": str(onnx_model_path)},
    ]
    for model in models:
        model["context_length"] = 1024
    with run_server(write_models(directory / "models.yaml", models), directory / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def prometheus(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the live server every second, with the shipped rules."""
    binary = require_tool("prometheus")
    directory = tmp_path_factory.mktemp("prometheus")
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    shipped["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    shipped["rule_files"] = [str(PROMETHEUS_DIR / path) for path in shipped["rule_files"]]
    target = live_server.base_url.removeprefix("http://")
    # The labels a Kubernetes scrape adds, for the prometheus-adapter rule below.
    pod_labels = {"namespace": "ai", "pod": "slmserve-0"}
    shipped["scrape_configs"][0]["static_configs"] = [{"targets": [target], "labels": pod_labels}]
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(shipped))
    address = f"127.0.0.1:{free_port()}"
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def send_traffic(server: LiveServer, rounds: int) -> None:
    client = openai_client(server)

    def one(index: int) -> None:
        messages: ChatMessages = [
            {"role": "user", "content": f"Tell me fact {index} about rivers."}
        ]
        for model in (DEFAULT_MODEL_NAME, ONNX_MODEL_NAME):
            if index % 2:
                stream = client.chat.completions.create(
                    model=model, messages=messages, max_tokens=16, stream=True
                )
                list(stream)
            else:
                client.chat.completions.create(model=model, messages=messages, max_tokens=16)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(one, range(rounds)))
    httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
    )


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
            queries.append((panel["title"], expr))
    return queries


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def test_prometheus_scrapes_evaluates_rules_and_every_panel_has_data(
    live_server: LiveServer, prometheus: str
) -> None:
    eventually(
        lambda: [s["value"][1] for s in query(prometheus, 'up{job="slmserve"}')] == ["1"],
        60,
        "the slmserve target to be up",
    )
    # Traffic in two waves, so rates see increments between scrapes.
    send_traffic(live_server, rounds=6)
    time.sleep(3)
    send_traffic(live_server, rounds=6)

    def rules_loaded_and_evaluated() -> bool:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        names = {rule["name"] for rule in rules}
        return (
            {"slmserve:generation_tokens_per_second:rate1m", "SlmserveModelFailed"} <= names
            and len(rules) == 9
            and all(rule["health"] == "ok" for rule in rules)
            and all(group["lastEvaluation"] > "2000" for group in groups)
        )

    eventually(rules_loaded_and_evaluated, 60, "the rules to load and evaluate")
    missing: list[str] = []

    def every_panel_has_data() -> bool:
        missing.clear()
        for title, expr in panel_queries():
            if not has_finite_value(query(prometheus, expr)):
                missing.append(f"{title}: {expr}")
        return not missing

    try:
        eventually(every_panel_has_data, 60, "data in every panel")
    except AssertionError:
        raise AssertionError("panels without data:\n" + "\n".join(missing)) from None
    eventually(
        lambda: has_finite_value(query(prometheus, "slmserve:generation_tokens_per_second:rate1m")),
        60,
        "the recording rule to produce throughput",
    )


def test_live_metrics_pass_promtool(live_server: LiveServer) -> None:
    promtool = require_tool("promtool")
    text = httpx.get(f"{live_server.base_url}/metrics", timeout=10).text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_adapter_rule_yields_the_hpa_metric_per_pod(
    live_server: LiveServer, prometheus: str
) -> None:
    """The shipped adapter rule, expanded as prometheus-adapter does for the HPA's request."""
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    name = rule["name"]["as"]
    assert name == "slmserve_num_requests_waiting"
    eventually(
        lambda: bool(query(prometheus, rule["seriesQuery"])), 60, "the adapter's series to exist"
    )
    expr = (
        rule["metricsQuery"]
        .replace("<<.Series>>", name)
        .replace("<<.LabelMatchers>>", 'namespace="ai",pod=~"slmserve-0|slmserve-1"')
        .replace("<<.GroupBy>>", "pod")
    )
    (series,) = query(prometheus, expr)
    assert series["metric"] == {"pod": "slmserve-0"}
    assert float(series["value"][1]) >= 0
