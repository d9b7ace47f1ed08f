"""docs/deployment.md: the container, PaaS and Kubernetes files are checked, not just present, and
what they name (ports, probe paths, settings, metric names) is what the code serves."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import redis
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
COMPOSE = REPO / "docker-compose.yml"
#: The Secret holding Redis' password; no applied manifest creates it.
SECRET = "wsgiproxy-redis"
SECRET_EXAMPLE = K8S / "redis-secret.yaml.example"
#: What `kubectl apply -f <folder>` reads from it: files with these suffixes, no others.
KUBECTL_SUFFIXES = {".json", ".yaml", ".yml"}


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


def test_every_file_the_image_copies_gets_past_dockerignore():
    """.dockerignore excludes everything ("*") and lets files back in with "!": a COPY
    of anything it does not let in fails the build (no engine here to notice)."""
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text()
               .splitlines() if line.startswith("!")]
    copied = re.findall(r"^COPY (\S+) ", (REPO / "Dockerfile").read_text(), re.M)
    assert copied
    for source in copied:
        assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), \
            source


# -- the shipped commands run filters ------------------------------------------------------
def shipped_command(which: str) -> tuple[list[str], bool]:
    """The image's CMD (a JSON list in the Dockerfile) or the Procfile's line, exactly as
    they are written; and whether it listens on $PORT (else where the routes file says)."""
    if which == "image":
        [cmd] = re.findall(r"^CMD (\[.*\])$", (REPO / "Dockerfile").read_text(), re.M)
        return json.loads(cmd), False
    [line] = (REPO / "Procfile").read_text().splitlines()
    return ["sh", "-c", line.split(": ", 1)[1]], True


@pytest.mark.parametrize("which", ["image", "procfile"])
def test_the_shipped_commands_run_built_in_and_installed_filters(backend, tmp_path, which):
    """The image's CMD and the Procfile line find a filter by its entry point (the example
    distribution make install puts in the venv) and run the built-ins, with their counts
    per process."""
    from wsgiproxy_apikey import digest

    b = backend(lambda seen: Reply(200, [("X-Client-Seen", seen.header("X-Api-Client") or "")],
                                   b"ok"))
    argv, on_port = shipped_command(which)
    port = reserve_port()
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(reserve_port() if on_port else port, {"filtered.test": {
        "hosts": [("localhost", b.port)], "filters": [  # a name: looked up by the workers
            {"use": "api_key", "config": {"keys": {"billing": digest("s3cret")}}},
            {"use": "rate_limit", "config": {"limit": "2/minute",
                                             "key": "header:X-Api-Client"}},
            {"use": "headers", "config": {"response": {"set": {"X-Frame-Options": "DENY"}}}},
        ]}}))
    env = {"PATH": f"{REPO / '.venv' / 'bin'}:{os.path.dirname(sys.executable)}:/usr/bin:/bin",
           "PORT": str(port), "CONFIGURATION_FILENAME": str(routes),
           "METRICS_ADDR": f"127.0.0.1:{reserve_port()}", "WEB_CONCURRENCY": "1"}
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/proxy/x"
    try:
        def up():  # a list: a 401 response is false
            try:
                return [requests.get(url, headers={"Host": "filtered.test"}, timeout=2)]
            except requests.ConnectionError:
                assert proc.poll() is None, log.read_text()
                return None
        [refused] = wait_until(up, 30, 0.05, f"the {which} command")
        assert refused.status_code == 401
        assert b.count == 0
        keyed = [requests.get(url, headers={"Host": "filtered.test", "X-Api-Key": "s3cret"},
                              timeout=5) for _ in range(3)]
        assert [r.status_code for r in keyed] == [200, 200, 429]
        assert keyed[0].headers["X-Client-Seen"] == "billing"
        assert keyed[0].headers["X-Frame-Options"] == "DENY"
        assert b.count == 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0


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
    password = secrets.token_hex(32)
    env = container_env(container, {SECRET: {"password": password}})

    # every variable is a setting the code reads (or gunicorn's, or REDIS_PASSWORD, there
    # for CACHE_URL's $(REDIS_PASSWORD)), and each one parses
    known = {s.name for s in SETTINGS} | {"PORT", "WEB_CONCURRENCY", "REDIS_PASSWORD"}
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

    # replicas share the cache in the Redis the manifests run, with the Secret's password
    redis_service = find("Service", "wsgiproxy-redis")
    url = urlsplit(settings.cache_url)
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "redis", redis_service["metadata"]["name"], redis_service["spec"]["ports"][0]["port"],
        "/0")
    assert (url.username, url.password) == ("", password)


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


_K8S_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def k8s_expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' expansion of env values, command and args: ``$(NAME)`` of a variable
    defined before becomes its value, an unknown one stays as written, ``$$`` is ``$``."""
    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))
    return _K8S_REF.sub(one, value)


def container_env(container: dict, secret_data: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment the kubelet gives ``container``: its envFrom ConfigMaps, then its env
    in order, each value expanded against what came before; ``secret_data`` stands in for
    the Secrets (a reference to any other Secret or key is a KeyError)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_data[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = k8s_expand(var["value"], env)
    return env


# -- hardening: who can reach Redis and the metrics, and with what ---------------------------
def pod_template(name: str) -> dict:
    return find("Deployment", name)["spec"]["template"]


def redis_container() -> dict:
    [container] = pod_template("wsgiproxy-redis")["spec"]["containers"]
    return container


def redis_start_script() -> str:
    container = redis_container()
    assert container["command"] == ["/bin/sh", "-c"]
    [script] = container["args"]
    return script


def policies_selecting(labels: dict[str, str]) -> list[dict]:
    """The NetworkPolicies whose podSelector picks pods with ``labels`` (policies add up,
    so every one of them counts)."""
    return [d for d in manifests() if d["kind"] == "NetworkPolicy"
            and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]


def test_redis_requires_the_password_from_the_secret():
    container = redis_container()
    refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"]
            if "valueFrom" in v}
    # not `optional`: without the Secret the pod does not start at all
    assert refs == {"REDIS_PASSWORD": {"name": SECRET, "key": "password"}}
    password = secrets.token_hex(32)
    env = container_env(container, {SECRET: {"password": password}})
    assert env["REDISCLI_AUTH"] == password  # redis-cli's variable: the probes need no -a
    # after Kubernetes' expansion, no argument holds the password (it travels on stdin)
    for arg in container["command"] + container["args"]:
        assert password not in k8s_expand(arg, env)
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["/bin/sh", "-c"], probe
        words = shlex.split(command[2])
        assert words[:2] == ["redis-cli", "ping"], probe
        assert not {"-a", "--pass", "--user", "-u"} & set(words), probe


def _fake_redis_bin(directory: Path, port: int | None = None) -> Path:
    """``redis-server`` and ``redis-cli`` for the start script and the probes: each records
    its arguments, and runs the real one on loopback ``port`` (none: records only)."""
    directory.mkdir()
    for name in ("redis-server", "redis-cli"):
        real = shutil.which(name)
        run = "exit 0"
        if port is not None and name == "redis-server":
            run = f'exec {real} "$@" --port {port} --bind 127.0.0.1'
        elif port is not None:
            run = f'exec {real} -p {port} "$@"'
        (directory / name).write_text(f'#!/bin/sh\necho "$@" >> {directory}/{name}.argv\n{run}\n')
        (directory / name).chmod(0o755)
    return directory


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="redis-server is not installed (Debian package: redis-server)")
@pytest.mark.parametrize("shell", ["sh", "busybox"])
def test_redis_start_script_hands_the_password_over_on_stdin(tmp_path, shell):
    """The Redis container's script and probes, run here by sh (and busybox's, the
    image's shell) with the real redis-server on a loopback port: Redis asks for the
    password the environment held, none of its arguments holds it, the probes pass with
    it and fail without, and the proxy's CACHE_URL gets in."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    port = reserve_port()
    bin_dir = _fake_redis_bin(tmp_path / "bin", port)
    password = secrets.token_hex(32)
    container = redis_container()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin",
           **container_env(container, {SECRET: {"password": password}})}
    shell_command = [shell, "sh"] if shell == "busybox" else [shell]
    proc = subprocess.Popen([*shell_command, "-c", redis_start_script()], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def pong():
            try:
                return redis.Redis(port=port, password=password, socket_timeout=1).ping()
            except redis.ConnectionError:
                return False
        wait_until(pong, 10, 0.05, "redis-server")
        for wrong in (None, "not-" + password):
            with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
                redis.Redis(port=port, password=wrong, socket_timeout=1).ping()
        argv = (bin_dir / "redis-server.argv").read_text()
        assert argv.split()[0] == "-"  # the config comes from stdin
        assert password not in argv
        assert password.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        for probe in ("readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert subprocess.run(command, env=env, capture_output=True).returncode == 0, probe
            for wrong in ({"REDISCLI_AUTH": "not-" + password}, {}):
                bad = {k: v for k, v in env.items() if k != "REDISCLI_AUTH"} | wrong
                assert subprocess.run(command, env=bad, capture_output=True).returncode != 0, \
                    (probe, wrong)
        assert password not in (bin_dir / "redis-cli.argv").read_text()
        proxy_env = container_env(pod_template("wsgiproxy")["spec"]["containers"][0],
                                  {SECRET: {"password": password}})
        url = urlsplit(proxy_env["CACHE_URL"])._replace(netloc=f":{password}@127.0.0.1:{port}")
        with redis.Redis.from_url(url.geturl(), socket_timeout=1) as client:
            assert client.ping()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # redis-server itself got the SIGTERM (exec): a clean stop


def _example_password() -> str:
    [doc] = [d for d in yaml.safe_load_all(SECRET_EXAMPLE.read_text()) if d]
    return doc["stringData"]["password"]


@pytest.mark.parametrize(("password", "complaint"), [
    pytest.param(_example_password(), "placeholder", id="the example's placeholder"),
    pytest.param("0123456789abcdef", "shorter than 32", id="short"),
    pytest.param("", "shorter than 32", id="empty"),
    pytest.param("p@ss/word:" * 4, "may hold only", id="breaks the URL"),
])
def test_redis_start_script_refuses_a_weak_or_unusable_password(tmp_path, password, complaint):
    bin_dir = _fake_redis_bin(tmp_path / "bin")
    result = subprocess.run(["sh", "-c", redis_start_script()], cwd=tmp_path, text=True,
                            capture_output=True,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "REDIS_PASSWORD": password})
    assert result.returncode == 1
    assert complaint in result.stderr
    assert not (bin_dir / "redis-server.argv").exists()  # never started


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_no_applied_manifest_holds_a_password():
    """`kubectl apply -f k8s/` creates no Secret (its value would be in this repository,
    known to all); a variable that holds a password comes from the Secret, or is built
    from one that does by $(VAR) expansion; no redis URL or requirepass has a literal."""
    applied = {p for p in K8S.iterdir() if p.is_file() and p.suffix in KUBECTL_SUFFIXES}
    assert applied == set(K8S.glob("*.yaml"))  # manifests() reads what kubectl reads
    assert [d["metadata"]["name"] for d in manifests() if d["kind"] == "Secret"] == []
    sensitive = re.compile(r"PASSWORD|PASS$|AUTH|SECRET|TOKEN")
    for deployment in [d for d in manifests() if d["kind"] == "Deployment"]:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            from_secret = {v["name"] for v in container.get("env", [])
                           if "secretKeyRef" in v.get("valueFrom", {})}
            for var in container.get("env", []):
                if "value" in var and sensitive.search(var["name"]):
                    [ref] = _K8S_REF.findall(var["value"])
                    assert var["value"] == f"$({ref})", var
                    assert ref in from_secret, var
    for config_map in [d for d in manifests() if d["kind"] == "ConfigMap"]:
        assert not [k for k in config_map["data"] if sensitive.search(k)], config_map
    for text in [s for doc in manifests() for s in _strings(doc)]:
        for url in re.findall(r"rediss?://\S+", text):
            password = urlsplit(url).password
            assert password is None or re.fullmatch(r"\$\([A-Z_]+\)", password), url
        for value in re.findall(r"requirepass\s+(\S+)", text):
            assert value.startswith("$"), text


def test_the_secret_example_is_not_applied_and_says_how_to_make_a_real_one():
    assert SECRET_EXAMPLE.suffix not in KUBECTL_SUFFIXES  # `kubectl apply -f k8s/` skips it
    [doc] = [d for d in yaml.safe_load_all(SECRET_EXAMPLE.read_text()) if d]
    kubernetes_validate.validate(doc, "1.37.0", strict=True)  # a usable shape all the same
    assert (doc["kind"], doc["metadata"]["name"], list(doc["stringData"])) == (
        "Secret", SECRET, ["password"])
    assert "CHANGE-ME" in doc["stringData"]["password"]  # refused by the start script (above)
    command = ("kubectl create secret generic wsgiproxy-redis"
               " --from-literal=password=$(openssl rand -hex 32)")
    assert command in SECRET_EXAMPLE.read_text()
    assert command in (K8S / "redis.yaml").read_text()


def test_only_the_proxy_pods_reach_redis_and_redis_reaches_nothing():
    redis_pod, proxy_pod = pod_template("wsgiproxy-redis"), pod_template("wsgiproxy")
    [policy] = policies_selecting(redis_pod["metadata"]["labels"])
    spec = policy["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert spec["egress"] == []  # Redis opens no connection: REPLICAOF/MIGRATE go nowhere
    [rule] = spec["ingress"]
    [peer] = rule["from"]
    assert list(peer) == ["podSelector"]  # this namespace only: no namespaceSelector, no ipBlock
    assert list(peer["podSelector"]) == ["matchLabels"]
    admitted = peer["podSelector"]["matchLabels"]
    assert admitted
    assert admitted.items() <= proxy_pod["metadata"]["labels"].items()
    assert not admitted.items() <= redis_pod["metadata"]["labels"].items()
    [container] = redis_pod["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    [port] = rule["ports"]
    assert port.get("protocol", "TCP") == "TCP"
    assert container_ports.get(port["port"], port["port"]) == 6379
    [service_port] = find("Service", "wsgiproxy-redis")["spec"]["ports"]
    assert container_ports.get(service_port["targetPort"], service_port["targetPort"]) == 6379


def test_metrics_port_is_reachable_only_from_the_monitoring_namespace():
    pod = pod_template("wsgiproxy")
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    [policy] = policies_selecting(pod["metadata"]["labels"])
    sources: dict[int, list] = {}  # port number: each rule's `from` (None: anywhere)
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP"
            sources.setdefault(ports.get(port["port"], port["port"]), []).append(rule.get("from"))
    assert sources == {
        ports["http"]: [None],  # the public edge
        ports["metrics"]: [[{"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]],
    }
    # and those are the numbers the proxy listens on and Prometheus is told to scrape
    env = container_env(container, {SECRET: {"password": "x" * 32}})
    assert ports["http"] == int(env["PORT"]) == 8080
    assert ports["metrics"] == int(env["METRICS_ADDR"].rpartition(":")[2]) == 8090
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == ports["metrics"]


def _cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def dockerfile_env() -> dict[str, str]:
    """The variables the Dockerfile's ENV instructions set (KEY=VALUE form)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(word.split("=", 1) for word in shlex.split(line[4:]))
    return env


def test_the_worker_count_is_explicit_in_the_image_the_deployment_and_compose():
    """Not the node's core count (the setting's default): a container sees them all."""
    assert int(dockerfile_env()["WEB_CONCURRENCY"]) >= 1
    [container] = pod_template("wsgiproxy")["spec"]["containers"]
    own = {v["name"]: v.get("value") for v in container["env"]}
    # one worker per started core of the CPU limit, set beside it (and nowhere else)
    cores = _cpu_cores(container["resources"]["limits"]["cpu"])
    assert int(own["WEB_CONCURRENCY"]) == max(1, math.ceil(cores)) == 1
    assert "WEB_CONCURRENCY" not in find("ConfigMap", "wsgiproxy-settings")["data"]
    assert int(compose()["services"]["wsgiproxy"]["environment"]["WEB_CONCURRENCY"]) >= 1


# -- docker compose ----------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


_REQUIRED_PASSWORD = re.compile(r"\$\{REDIS_PASSWORD:\?[^}]+\}")


def compose_interpolate(value: str, password: str) -> str:
    """Compose's interpolation of ``value`` with REDIS_PASSWORD set to ``password``; fails
    on any reference to it that is not ``${REDIS_PASSWORD:?message}`` (required, with a
    message), so no default can stand in for it."""
    rest = _REQUIRED_PASSWORD.sub("", value.replace("$$", ""))
    assert not re.search(r"\$\{?REDIS_PASSWORD\b", rest), value
    return _REQUIRED_PASSWORD.sub(password, value).replace("$$", "$")


def _host_ip(port) -> str | None:
    if isinstance(port, dict):  # long syntax
        return port.get("host_ip")
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else None


def test_compose_publishes_its_ports_on_loopback_only_and_not_redis():
    services = compose()["services"]
    host_ips = {name: [_host_ip(p) for p in s.get("ports", [])] for name, s in services.items()}
    assert {name for name, ips in host_ips.items() if ips} == {
        "wsgiproxy", "prometheus", "alertmanager", "grafana"}
    assert {ip for ips in host_ips.values() for ip in ips} == {"127.0.0.1"}, host_ips
    assert "ports" not in services["redis"]
    # and Redis shares a network (with no route out) with the proxy alone
    networks = compose()["networks"]
    [network] = services["redis"]["networks"]
    assert networks[network]["internal"] is True
    assert {name for name, s in services.items() if network in s.get("networks", [])} == {
        "redis", "wsgiproxy"}


def test_compose_names_only_services_and_networks_it_defines():
    services, networks = compose()["services"], compose().get("networks", {})
    for name, service in services.items():
        assert set(service.get("depends_on", [])) <= set(services), name
        assert set(service.get("networks", [])) <= set(networks) | {"default"}, name


def test_compose_redis_needs_a_password_and_the_proxy_uses_it():
    services = compose()["services"]
    redis_service, proxy = services["redis"], services["wsgiproxy"]
    password = secrets.token_hex(32)
    for text in _strings(compose()):
        compose_interpolate(text, password)  # every reference to it is a required one
    env = {k: compose_interpolate(v, password) for k, v in redis_service["environment"].items()}
    assert env == {"REDIS_PASSWORD": password, "REDISCLI_AUTH": password}
    url = urlsplit(compose_interpolate(proxy["environment"]["CACHE_URL"], password))
    assert (url.scheme, url.password, url.hostname, url.port, url.path) == (
        "redis", password, "redis", 6379, "/0")
    assert proxy["depends_on"]["redis"]["condition"] == "service_healthy"
    # the same start script as Kubernetes' (checked to keep the password off argv above)
    assert redis_service["entrypoint"] == redis_container()["command"]
    [script] = redis_service["command"]
    assert compose_interpolate(script, password) == redis_start_script()
    assert password not in compose_interpolate(script, password)
    test = redis_service["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert shlex.split(test[1])[:2] == ["redis-cli", "ping"]
    assert not {"-a", "--pass", "-u"} & set(shlex.split(test[1]))


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
