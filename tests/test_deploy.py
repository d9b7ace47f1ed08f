"""docs/deployment.md: the container, PaaS and Kubernetes files are checked, not just present, and
what they name (ports, probe paths, settings, metric names) is what the code serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import kubernetes_validate
import pytest
import requests
import yaml

from support.backends import Reply
from support.net import reserve_port, wait_until
from support.proxy import REPO, routes_yaml
from support.scripts import load_script
from wsgiproxy.routes_file import parse_routes
from wsgiproxy.settings import SETTINGS, load_settings

K8S = REPO / "k8s"
MONITORING = K8S / "monitoring"


def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind: str, name: str) -> dict:
    [doc] = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


# -- container -------------------------------------------------------------------------
def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_production_config_as_a_user():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim-\w+$", text, re.M)  # pinned, slim
    assert re.search(r"^USER 10001$", text, re.M)
    assert re.search(r"^EXPOSE 8080 8090$", text, re.M)
    assert 'CMD ["gunicorn", "-k", "gevent", "wsgiproxy:app"]' in text  # the README's command
    assert re.search(r"^COPY gunicorn.conf.py \.$", text, re.M)  # which gunicorn reads by itself
    assert "PROMETHEUS_MULTIPROC_DIR=" in text
    # dependencies are installed before the code is copied (their own layer)
    assert text.index("pip install") < text.index("COPY wsgiproxy/")
    ignored = (REPO / ".dockerignore").read_text()
    assert ignored.splitlines()[1] == "*"
    assert "!wsgiproxy/" in ignored


# -- PaaS ----------------------------------------------------------------------------------
def test_procfile_command_serves_the_proxy(backend, tmp_path):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=60")], b"via procfile"))
    [line] = (REPO / "Procfile").read_text().splitlines()
    kind, command = line.split(": ", 1)
    assert kind == "web"
    assert "0.0.0.0:$PORT" in command
    port = reserve_port()
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(reserve_port(), {"paas.test": [b.port]}))
    env = {"PATH": f"{REPO / '.venv' / 'bin'}:{os.path.dirname(sys.executable)}:/usr/bin:/bin",
           "PORT": str(port), "CONFIGURATION_FILENAME": str(routes),
           "METRICS_ADDR": f"127.0.0.1:{reserve_port()}", "WEB_CONCURRENCY": "1"}
    proc = subprocess.Popen(["sh", "-c", command], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def answer():
            try:
                return requests.get(f"http://127.0.0.1:{port}/proxy/x",
                                    headers={"Host": "paas.test"}, timeout=2)
            except requests.ConnectionError:
                return None
        r = wait_until(answer, 20, 0.05, "the Procfile's gunicorn")
        assert (r.status_code, r.content) == (200, b"via procfile")
        again = answer()  # one worker: its cache answers the second request
        assert (again.status_code, again.content) == (200, b"via procfile")
        assert again.headers["X-Cache"] == "HIT"
        assert b.count == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0


# -- Kubernetes ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_passes_strict_schema_validation(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


@pytest.mark.parametrize("path", sorted(MONITORING.glob("*.yaml")), ids=lambda p: p.name)
def test_operator_manifest_is_a_known_crd_kind(path):
    """kubernetes-validate holds the built-in API's schemas only, not the Prometheus
    Operator's CRDs (and the CRDs cannot be fetched here), so the strict check is
    skipped for these with that reason; their content is checked against what it
    names below, and the rules by promtool (test_monitoring.py)."""
    [doc] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] in ("ServiceMonitor", "PrometheusRule")
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_core_manifests_need_no_crd():
    """`kubectl apply -f k8s/` works on a cluster without the Prometheus Operator: the
    operator's kinds live in k8s/monitoring/, which a non-recursive apply skips."""
    assert all(d["apiVersion"].split("/")[0] != "monitoring.coreos.com" for d in manifests())
    assert {p.name for p in MONITORING.glob("*.yaml")} == {"servicemonitor.yaml",
                                                          "prometheusrule.yaml"}


def test_settings_checksum_and_prometheus_rule_are_up_to_date():
    script = load_script("k8s_manifests")
    hint = "run: .venv/bin/python scripts/k8s_manifests.py"
    assert (K8S / "deployment.yaml").read_text() == script.deployment_text(), hint
    assert (MONITORING / "prometheusrule.yaml").read_text() == script.prometheus_rule_text(), \
        hint
    annotations = find("Deployment", "wsgiproxy")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/settings"] == script.settings_checksum()


def test_a_settings_change_changes_the_checksum(tmp_path, monkeypatch):
    script = load_script("k8s_manifests")
    before = script.settings_checksum()
    edited = tmp_path / "k8s"
    edited.mkdir()
    text = (K8S / "configmap.yaml").read_text()
    (edited / "configmap.yaml").write_text(text.replace('LOG_LEVEL: INFO', 'LOG_LEVEL: DEBUG'))
    monkeypatch.setattr(script, "K8S", edited)
    assert script.settings_checksum() != before
    # the routes ConfigMap is not part of it: routes reload without a restart
    (edited / "configmap.yaml").write_text(text.replace("port: 9090", "port: 9191"))
    assert script.settings_checksum() == before


def test_pods_spread_over_nodes_and_zones():
    pod = find("Deployment", "wsgiproxy")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    assert spread.keys() == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    replicas = find("Deployment", "wsgiproxy")["spec"]["replicas"]
    assert find("PodDisruptionBudget", "wsgiproxy")["spec"]["minAvailable"] < replicas


def test_hpa_scales_on_an_absolute_cpu_target_between_request_and_limit():
    [metric] = find("HorizontalPodAutoscaler", "wsgiproxy")["spec"]["metrics"]
    target = metric["resource"]["target"]
    assert metric["resource"]["name"] == "cpu"
    assert target["type"] == "AverageValue"
    [container] = find("Deployment", "wsgiproxy")["spec"]["template"]["spec"]["containers"]
    millicores = {name: int(value.rstrip("m")) for name, value in
                  (("target", target["averageValue"]),
                   ("request", container["resources"]["requests"]["cpu"]),
                   ("limit", container["resources"]["limits"]["cpu"]))}
    assert millicores["request"] < millicores["target"] < millicores["limit"]
    page = (REPO / "docs" / "deployment.md").read_text()
    assert f"averageValue: {target['averageValue']}" in page  # the arithmetic is there


def test_network_policy_admits_only_the_service_and_metrics_ports():
    policy = find("NetworkPolicy", "wsgiproxy")["spec"]
    pod = find("Deployment", "wsgiproxy")["spec"]["template"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    admitted = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    [container] = pod["spec"]["containers"]
    assert admitted == {p["name"] for p in container["ports"]} == {"http", "metrics"}
    service_ports = {p["targetPort"] for p in find("Service", "wsgiproxy")["spec"]["ports"]}
    assert service_ports <= admitted


def test_service_monitor_scrapes_the_metrics_port_of_the_service():
    [monitor] = [d for d in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text())
                 if d]
    service = find("Service", "wsgiproxy")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["port"] == "metrics"
    annotations = find("Deployment", "wsgiproxy")["spec"]["template"]["metadata"]["annotations"]
    assert endpoint["path"] == annotations["prometheus.io/path"]


def test_deployment_matches_the_code():
    deployment = find("Deployment", "wsgiproxy")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    settings_map = find("ConfigMap", "wsgiproxy-settings")["data"]
    env = {**settings_map, **{e["name"]: e["value"] for e in container["env"]}}

    # every variable is a setting the code reads (or gunicorn's), and each one parses
    known = {s.name for s in SETTINGS} | {"PORT", "WEB_CONCURRENCY"}
    assert set(env) <= known, set(env) - known
    settings = load_settings(_Env(env))

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(env["PORT"])
    assert ports["metrics"] == settings.metrics_addr[1]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "600m", "memory": "512Mi"}}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.graceful_timeout + pre_stop

    # the routes file is mounted where CONFIGURATION_FILENAME says, and is valid; as a
    # directory, not with subPath, so an edited ConfigMap reaches a running pod
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "routes"]
    assert "subPath" not in mount
    directory, _, key = env["CONFIGURATION_FILENAME"].rpartition("/")
    assert mount["mountPath"] == directory
    routes_text = find("ConfigMap", "wsgiproxy-routes")["data"][key]
    routes = parse_routes(yaml.safe_load(routes_text), "k8s/configmap.yaml")
    assert routes.listen.port == ports["http"]

    # replicas share the cache in the Redis the manifests run
    redis_service = find("Service", "wsgiproxy-redis")
    assert env["CACHE_URL"] == (f"redis://{redis_service['metadata']['name']}:"
                                f"{redis_service['spec']['ports'][0]['port']}/0")


def test_service_hpa_and_pdb_point_at_the_deployment():
    labels = find("Deployment", "wsgiproxy")["spec"]["template"]["metadata"]["labels"]
    assert find("Service", "wsgiproxy")["spec"]["selector"].items() <= labels.items()
    assert find("PodDisruptionBudget", "wsgiproxy")["spec"]["selector"]["matchLabels"] \
        .items() <= labels.items()
    target = find("HorizontalPodAutoscaler", "wsgiproxy")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "wsgiproxy")
    ports = {p["name"]: p["targetPort"] for p in find("Service", "wsgiproxy")["spec"]["ports"]}
    assert ports == {"http": "http", "metrics": "metrics"}


class _Env:
    def __init__(self, values):
        self.values = values

    def __call__(self, name, default=None, cast=None):
        return self.values.get(name, default)


# -- Grafana ---------------------------------------------------------------------------------
DASHBOARD = REPO / "config" / "grafana" / "wsgiproxy-dashboard.json"


def test_dashboard_covers_the_slis():
    titles = " | ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"])
    for sli in ("Request volume", "Latency", "Success rate", "Request processing time",
                "Response processing time", "Cache hit ratio", "Upstream attempts",
                "Hosts up"):
        assert sli in titles


# The dashboard's queries are checked against the recording rules, and the rules
# against a real scrape, in test_monitoring.py.
