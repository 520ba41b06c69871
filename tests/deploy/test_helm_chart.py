"""The Helm chart: strict lint, renders for CPU and GPU values, the manifests validate against
Kubernetes 1.30's schemas, bad values are refused, and the models.yaml it renders is one the
server itself accepts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from engines.config import ModelConfig, ModelsFile, PoolConfig
from tests.conftest import REPO

CHART = REPO / "deploy" / "helm" / "slmserve"
GPU_VALUES = CHART / "ci" / "gpu-values.yaml"
KUBERNETES_VERSION = "1.30.0"

Manifests = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Manifests:
    """Rendered documents by kind (each template renders at most one)."""
    rendered = chart.render(values, name="demo", namespace="ai", is_install=True)
    documents: Manifests = {}
    for path, text in rendered.items():
        if path.endswith(".yaml") and text.strip():
            document = yaml.safe_load(text)
            documents[document["kind"]] = document
    return documents


def gpu_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(GPU_VALUES.read_text())
    return values


def validate(manifests: Manifests, directory: Path) -> str:
    files = []
    for kind, document in manifests.items():
        path = directory / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(document))
        files.append(str(path))
    result = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            *files,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_chart_passes_strict_lint() -> None:
    for values in (None, gpu_values()):
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"], report
        assert not problems, report


def test_default_values_render_a_cpu_deployment_that_validates(
    chart: helm.Chart, tmp_path: Path
) -> None:
    manifests = render(chart)
    assert set(manifests) == {
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    }
    output = validate(manifests, tmp_path)
    assert output.count("passed") == 5
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["image"] == "slmserve:0.1.0-cpu"
    assert "nvidia.com/gpu" not in str(server["resources"])
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["initContainers"][0]["command"] == ["slmserve", "fetch-model", "--dest", "/models"]
    # The pod outlives its drain: running requests finish before Kubernetes kills it.
    drain = next(e for e in server["env"] if e["name"] == "SLMSERVE_DRAIN_TIMEOUT_S")
    assert pod["terminationGracePeriodSeconds"] > float(drain["value"])
    # No admin key unless one is given: /admin/* answers 403 on the pod's 0.0.0.0.
    assert "SLMSERVE_ADMIN_KEY" not in {e["name"] for e in server["env"]}


def test_rollouts_and_node_drains_keep_pods_serving(chart: helm.Chart, tmp_path: Path) -> None:
    """A rollout adds a ready pod before one drains; a node drain evicts one pod at a time; the
    pre-stop pause stands in for the server's own drain grace (not both)."""
    manifests = render(chart, {"replicaCount": 3})
    validate(manifests, tmp_path)
    deployment = manifests["Deployment"]
    strategy = deployment["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    budget = manifests["PodDisruptionBudget"]["spec"]
    assert budget == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SLMSERVE_DRAIN_GRACE_S"] == "0"
    assert pod["terminationGracePeriodSeconds"] == 30 + 5 + 10
    # Without the pre-stop pause the server's grace does its job, and the pod waits for it.
    manifests = render(chart, {"server": {"preStopSleepSeconds": 0}})
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SLMSERVE_DRAIN_GRACE_S"] == "5"
    assert pod["terminationGracePeriodSeconds"] == 30 + 5 + 10
    assert "lifecycle" not in pod["containers"][0]
    # minAvailable (a count or a percentage) replaces maxUnavailable; the budget can be off.
    for minimum in (2, "50%"):
        values = {
            "podDisruptionBudget": {"minAvailable": minimum},
            "rollingUpdate": {"maxSurge": "25%"},
        }
        manifests = render(chart, values)
        validate({"PodDisruptionBudget": manifests["PodDisruptionBudget"]}, tmp_path)
        assert set(manifests["PodDisruptionBudget"]["spec"]) == {"minAvailable", "selector"}
        assert manifests["PodDisruptionBudget"]["spec"]["minAvailable"] == minimum
        assert manifests["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "25%"
    assert "PodDisruptionBudget" not in render(chart, {"podDisruptionBudget": {"enabled": False}})


def test_gpu_values_render_gpu_requests_and_an_hpa_on_waiting_requests(
    chart: helm.Chart, tmp_path: Path
) -> None:
    manifests = render(chart, gpu_values())
    assert {"HorizontalPodAutoscaler", "ServiceMonitor"} <= set(manifests)
    # kubernetes-validate has no schema for prometheus-operator's ServiceMonitor (a CRD).
    service_monitor = manifests.pop("ServiceMonitor")
    output = validate(manifests, tmp_path)
    assert output.count("passed") == 6
    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["image"] == "slmserve:0.1.0-cuda"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "slmserve_num_requests_waiting"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 8)
    # The ServiceMonitor scrapes the Service's named port at /metrics.
    service = manifests["Service"]
    assert service_monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_admin_key_comes_from_the_named_secret(chart: helm.Chart, tmp_path: Path) -> None:
    values = {"server": {"adminKey": {"existingSecret": "slmserve-admin", "secretKey": "token"}}}
    manifests = render(chart, values)
    validate(manifests, tmp_path)
    env = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    (admin,) = [e for e in env if e["name"] == "SLMSERVE_ADMIN_KEY"]
    assert admin == {
        "name": "SLMSERVE_ADMIN_KEY",
        "valueFrom": {"secretKeyRef": {"name": "slmserve-admin", "key": "token"}},
    }
    # The secret's key defaults to admin-key.
    manifests = render(chart, {"server": {"adminKey": {"existingSecret": "slmserve-admin"}}})
    env = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    (admin,) = [e for e in env if e["name"] == "SLMSERVE_ADMIN_KEY"]
    assert admin["valueFrom"]["secretKeyRef"] == {"name": "slmserve-admin", "key": "admin-key"}


def test_kubernetes_validate_does_reject_a_bad_manifest(chart: helm.Chart, tmp_path: Path) -> None:
    """The validation above can fail: an unknown field in the pod spec is caught."""
    manifests = render(chart)
    manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(AssertionError, match="gpus"):
        validate({"Deployment": manifests["Deployment"]}, tmp_path)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"preset": "tpu"}, "/preset"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"models": []}, "/models"),
        ({"models": [{"name": "m", "engine": "pytorch", "path": "/m"}]}, "/models/0/engine"),
        ({"models": [{"name": "m", "engine": "gguf"}]}, "path"),
        ({"models": [{"name": "m", "engine": "gguf", "path": "/m", "paralel": 2}]}, "paralel"),
        ({"image": {"repository": "slmserve", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"autoscaling": {"enabled": True, "targetWaitingRequests": 0}}, "targetWaiting"),
        ({"server": {"extraEnv": {"PATH": "/tmp"}}}, "PATH"),
        ({"server": {"adminKey": {"existingSecret": "Not A Name"}}}, "existingSecret"),
        ({"server": {"adminKey": {"existingSecret": "s", "secretKey": "a/b"}}}, "secretKey"),
        ({"server": {"adminKey": {"secret": "s"}}}, "secret"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
        ({"podDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable"),
        ({"podDisruptionBudget": {"minAvailable": "half"}}, "minAvailable"),
        ({"podDisruptionBudget": {"maxUnavaliable": 1}}, "maxUnavaliable"),
        ({"rollingUpdate": {"maxSurge": 0}}, "maxSurge"),
        ({"rollingUpdate": {"maxUnavailable": 1}}, "maxUnavailable"),
        ({"unknown": True}, "unknown"),
    ],
)
def test_schema_rejects_bad_values(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=complaint):
        chart.render(values, name="demo")


def test_min_replicas_above_max_is_refused(chart: helm.Chart) -> None:
    values = {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}
    with pytest.raises(helm.HelmRenderError, match="minReplicas must not exceed"):
        chart.render(values, name="demo")


@pytest.mark.parametrize("values", [None, "gpu"])
def test_rendered_models_yaml_is_accepted_by_the_server(
    chart: helm.Chart, values: str | None
) -> None:
    manifests = render(chart, gpu_values() if values else None)
    models_yaml = manifests["ConfigMap"]["data"]["models.yaml"]
    parsed = ModelsFile.model_validate(yaml.safe_load(models_yaml))
    assert parsed.models[0].path == Path("/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_schema_knows_every_models_yaml_field() -> None:
    """values.schema.json mirrors engines/config.py: a new model option needs a schema entry."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    definitions = schema["definitions"]
    assert set(definitions["model"]["properties"]) == set(ModelConfig.model_fields)
    assert set(schema["properties"]["pool"]["properties"]) == set(PoolConfig.model_fields)
    sampling = ModelConfig.model_fields["defaults"].annotation
    assert sampling is not None
    assert set(definitions["samplingDefaults"]["properties"]) == set(sampling.model_fields)
