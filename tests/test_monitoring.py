"""The monitoring stack, checked with the real tools: promtool on the config, the rules,
their unit tests and a real /metrics scrape; the Compose specification's schema on
docker-compose.yml; and a real Prometheus server scraping a running proxy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources

import jsonschema
import pytest
import requests
import yaml

from support.backends import Reply
from support.client import session
from support.net import reserve_port, wait_until
from support.proxy import REPO
from support.scripts import load_script
from wsgiproxy.routes_file import parse_routes

PROM = REPO / "config" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
ALERTMANAGER_CONFIG = REPO / "config" / "alertmanager" / "alertmanager.yml"
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package: prometheus)")
DOMAIN = "mon.test"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], cwd=PROM, input=stdin, capture_output=True,
                          text=True, timeout=60)


def rules() -> list[dict]:
    return [r for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]
            for r in g["rules"]]


def series_names(expr: str) -> set[str]:
    """Metric and rule names in a PromQL expression (not functions, labels or keywords)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(?:\{|\)|$|\s|==|<|>|/|\*|-|\+))",
                           expr))
    words = {"sum", "by", "rate", "histogram_quantile", "count", "min", "max", "and", "or",
             "unless", "without", "avg", "le", "service", "host", "code", "outcome",
             "operation", "job", "bool", "on", "instance", "pid", "role", "ignoring",
             "filter", "reason", "result"}
    return {n for n in names if n not in words and not n.isdigit()}


# -- promtool -------------------------------------------------------------------------------
@needs_promtool
def test_prometheus_config_and_rules_pass_promtool():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout
    result = promtool("check", "rules", *[str(p) for p in RULE_FILES])
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_prometheus_operator_rule_carries_the_same_rules(tmp_path):
    rule = yaml.safe_load((REPO / "k8s" / "monitoring" / "prometheusrule.yaml").read_text())
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = promtool("check", "rules", str(tmp_path / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert rule["spec"]["groups"] == [g for path in RULE_FILES
                                      for g in yaml.safe_load(path.read_text())["groups"]]


@needs_promtool
def test_alert_rules_unit_tests_pass():
    result = promtool("test", "rules", "tests/wsgiproxy-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # every group is in the evaluation order, recording groups first: otherwise promtool
    # may evaluate an alert before the rules it reads, and the tests flap
    order = yaml.safe_load((PROM / "tests" / "wsgiproxy-rules.test.yml").read_text())[
        "group_eval_order"]
    groups = [g["name"] for path in (PROM / "rules" / "wsgiproxy-recording.yml",
                                     PROM / "rules" / "wsgiproxy-alerts.yml")
              for g in yaml.safe_load(path.read_text())["groups"]]
    assert order == groups


def test_every_alert_is_unit_tested_and_explains_itself():
    tests = (PROM / "tests" / "wsgiproxy-rules.test.yml").read_text()
    alerts = [r for r in rules() if "alert" in r]
    assert {a["alert"] for a in alerts} == {
        "WsgiproxyAvailabilityBudgetBurnFast", "WsgiproxyAvailabilityBudgetBurnSlow",
        "WsgiproxyLatencyBudgetBurnFast", "WsgiproxyLatencyBudgetBurnSlow",
        "WsgiproxyAllHostsDown", "WsgiproxyHostDown", "WsgiproxyCacheBackendErrors",
        "WsgiproxyConfigReloadFailed", "WsgiproxyInstanceDown", "WsgiproxyMetricsAbsent",
        "WsgiproxyRateLimitedHeavily", "WsgiproxyRateLimitStoreFailing", "WsgiproxyFilterErrors",
        "WsgiproxyHostsEjectedRepeatedly", "WsgiproxyRetryBudgetExhausted"}
    for alert in alerts:
        name = alert["alert"]
        # each alert has a case where it fires and one where it must not (exp_alerts: [])
        cases = re.findall(rf"alertname: {name}\n(\s+)exp_alerts:(.*)", tests)
        assert any(rest.strip() == "[]" for _, rest in cases), f"{name}: no must-not-fire case"
        assert any(rest.strip() != "[]" for _, rest in cases), f"{name}: no firing case"
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert len(alert["annotations"]["description"]) > 80  # says what to look at
        assert "job" not in alert["expr"], f"{name} depends on a scrape job's name"


def test_slos_are_stated_once_and_burn_alerts_use_them():
    objectives = {r["record"]: r["expr"] for r in rules()
                  if r.get("record", "").startswith("slo:")}
    assert objectives == {"slo:proxy_availability:objective": "vector(0.999)",
                          "slo:proxy_latency:objective": "vector(0.99)"}
    numbers = re.compile(r"0\.99\d*")
    for rule in rules():
        if not rule.get("record", "").startswith("slo:"):
            expr = re.sub(r"histogram_quantile\(0\.\d+", "", rule["expr"])
            assert not numbers.search(expr), (rule.get("record") or rule["alert"])
    burns = {r["alert"]: r["expr"] for r in rules() if "BudgetBurn" in r.get("alert", "")}
    # Google SRE workbook: page on 1h/5m at 14.4x or 6h/30m at 6x; ticket on 1d/2h at 3x
    # or 3d/6h at 1x; each long window paired with its short one.
    for name, windows in (("Fast", (("1h", "5m", "14.4"), ("6h", "30m", "6"))),
                          ("Slow", (("1d", "2h", "3"), ("3d", "6h", "1")))):
        for kind, slo in (("Availability", "availability"), ("Latency", "latency")):
            expr = burns[f"Wsgiproxy{kind}BudgetBurn{name}"]
            for long, short, factor in windows:
                for window in (long, short):
                    assert re.search(rf"ratio_rate{window}\s+> on\(\) group_left\(\) "
                                     rf"\({factor} \* \(1 - slo:proxy_{slo}:objective\)\)",
                                     expr), (name, kind, window)


@needs_promtool
def test_promtool_check_metrics_on_a_real_scrape(backend, start_proxy):
    p = start_proxy({DOMAIN: [backend().port]}, server="gunicorn")
    with session() as s:
        s.get(p.url("/proxy/x"), headers={"Host": DOMAIN})
    result = promtool("check", "metrics", stdin=requests.get(p.metrics_url(), timeout=5).text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


# -- dashboard, rules and metrics agree ---------------------------------------------------------
def exported_metric_names(backend, start_proxy) -> set[str]:
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=60")], b"x"))
    # with a filter and health checks, so that the filters' and the probes' series exist too
    p = start_proxy({DOMAIN: {"hosts": [b.port], "health_check": True, "filters": [
        {"use": "rate_limit", "config": {"limit": "1000/second"}}]}})
    with session() as s:
        for _ in range(2):
            s.get(p.url("/proxy/x"), headers={"Host": DOMAIN})
    return {line.split("{")[0].split(" ")[0]
            for line in requests.get(p.metrics_url(), timeout=5).text.splitlines()
            if line and not line.startswith("#")}


def test_dashboard_reads_recording_rules_and_rules_read_exported_metrics(backend, start_proxy):
    dashboard = json.loads((REPO / "config" / "grafana" / "wsgiproxy-dashboard.json")
                           .read_text())
    recorded = {r["record"] for r in rules() if "record" in r}
    used = {name for p in dashboard["panels"] for t in p["targets"]
            for name in series_names(t["expr"])}
    assert used, "the dashboard queries nothing"
    assert used <= recorded, used - recorded  # the dashboard reads rules only
    exported = exported_metric_names(backend, start_proxy) | {"up"}
    for rule in rules():
        names = series_names(rule["expr"])
        assert names <= exported | recorded, (rule.get("record") or rule["alert"],
                                              names - exported - recorded)


def test_the_dashboard_file_is_generated_from_scripts_dashboard():
    module = load_script("dashboard")
    on_disk = json.loads(module.OUT.read_text())
    assert on_disk == module.dashboard(), "run: .venv/bin/python scripts/dashboard.py"


# -- docker compose -----------------------------------------------------------------------------
COMPOSE = REPO / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_specification():
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(compose()), key=str)
    assert not errors, errors[0].message


def test_compose_names_only_files_that_exist():
    services = compose()["services"]
    for name, service in services.items():
        if "build" in service:
            assert (REPO / service["build"] / "Dockerfile").is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (REPO / source).exists(), f"{name}: {source}"
    routes = services["wsgiproxy"]["environment"]["CONFIGURATION_FILENAME"]
    assert routes.startswith("/app/")
    assert (REPO / routes[len("/app/"):]).is_file()
    prometheus = yaml.safe_load((PROM / "prometheus.yml").read_text())
    for rule_file in prometheus["rule_files"]:
        assert (PROM / rule_file).is_file()
    provisioning = REPO / "config" / "grafana" / "provisioning"
    assert (provisioning / "datasources" / "prometheus.yml").is_file()
    assert (provisioning / "dashboards" / "wsgiproxy.yml").is_file()


def test_compose_services_point_at_each_other():
    services = compose()["services"]
    assert {"wsgiproxy", "backend-1", "backend-2", "backend-3", "redis", "prometheus",
            "alertmanager", "grafana"} <= set(services)
    proxy_env = services["wsgiproxy"]["environment"]
    assert proxy_env["CACHE_URL"].endswith("@redis:6379/0")  # password: test_deploy.py
    # the routes file sends traffic to the backends on the ports their commands use
    routes = parse_routes(yaml.safe_load((REPO / proxy_env["CONFIGURATION_FILENAME"][5:])
                                         .read_text()), "compose routes")
    for host in routes.services[0].hosts:
        command = services[host.address]["command"]
        assert command[command.index("--port") + 1] == str(host.port)
    # Prometheus scrapes the proxy's metrics port; Grafana reads that Prometheus
    [job] = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["wsgiproxy:8090"]
    assert "127.0.0.1:8090:8090" in services["wsgiproxy"]["ports"]
    datasource = yaml.safe_load((REPO / "config/grafana/provisioning/datasources/"
                                 "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    # Prometheus loads the alert rules and sends to the Alertmanager compose runs, whose
    # config is the project's
    prometheus = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert "rules/wsgiproxy-alerts.yml" in prometheus["rule_files"]
    [alertmanagers] = prometheus["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    alertmanager = services["alertmanager"]
    assert "127.0.0.1:9093:9093" in alertmanager["ports"]
    [volume] = alertmanager["volumes"]
    source, target = volume.split(":")[:2]
    assert (REPO / source).resolve() == ALERTMANAGER_CONFIG.parent
    assert f"--config.file={target}/{ALERTMANAGER_CONFIG.name}" in alertmanager["command"]
    assert "alertmanager" in services["prometheus"]["depends_on"]


# -- Alertmanager -------------------------------------------------------------------------------
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool is not installed (Debian package: prometheus-alertmanager)")


@needs_amtool
def test_alertmanager_config_passes_amtool_and_pages_only_critical_alerts():
    def amtool(*args: str) -> str:
        assert AMTOOL
        result = subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.strip()

    assert "SUCCESS" in amtool("check-config", str(ALERTMANAGER_CONFIG))
    for alert in (r for r in rules() if "alert" in r):
        receiver = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                          f"alertname={alert['alert']}", f"severity={alert['labels']['severity']}",
                          "service=shop")
        expected = "wsgiproxy-pager" if alert["labels"]["severity"] == "critical" \
            else "wsgiproxy-team"
        assert receiver == expected, alert["alert"]


# -- a real Prometheus --------------------------------------------------------------------------
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus server is not installed (Debian package: prometheus)")


class Prometheus:
    """A real Prometheus with the project's prometheus.yml and rules, scraping one proxy
    every second; ``alertmanager`` replaces the compose Alertmanager's address."""

    def __init__(self, tmp_path, metrics_port: int, *, alertmanager: str | None = None,
                 rules_dir=None):
        config = yaml.safe_load((PROM / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str((rules_dir or PROM) / f) for f in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{metrics_port}"]}]
        if alertmanager:
            config["alerting"]["alertmanagers"][0]["static_configs"] = [
                {"targets": [alertmanager]}]
        else:
            del config["alerting"]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = reserve_port()
        assert PROMETHEUS
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _get(f"http://127.0.0.1:{self.port}/-/ready"), 30, 0.2,
                   "Prometheus")

    def query(self, promql: str) -> list[dict]:
        return requests.get(f"http://127.0.0.1:{self.port}/api/v1/query",
                            params={"query": promql}, timeout=5).json()["data"]["result"]

    def by_service(self, promql: str) -> dict[str, float]:
        return {r["metric"].get("service", ""): float(r["value"][1])
                for r in self.query(promql)}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


@pytest.mark.slow
@needs_prometheus
def test_prometheus_scrapes_the_proxy_and_records_the_slis(backend, start_proxy, tmp_path):
    b = backend(lambda seen: Reply(200, [("Cache-Control", "max-age=60")], b"x"))
    p = start_proxy({DOMAIN: {"hosts": [b.port], "health_check": True, "filters": [
        {"use": "rate_limit", "config": {"limit": "1000/second"}}]}},
        server="gunicorn", workers=2)
    prometheus = Prometheus(tmp_path, p.metrics_port)
    query = prometheus.by_service
    try:
        service = "mon-test"
        counted = f'sum by (service) (proxy_requests_total{{service="{service}"}})'
        with session() as s:
            # Two phases: rate() needs the counter to grow between two scrapes it saw.
            for sent, batch in ((10, 10), (50, 40)):
                for _ in range(batch):
                    assert s.get(p.url("/proxy/x"), headers={"Host": DOMAIN}).ok
                total = wait_until(lambda sent=sent: query(counted).get(service) == sent
                                   and sent, 30, 0.2, f"Prometheus to scrape {sent} requests")
        rate = wait_until(lambda: query("service:proxy_requests:rate5m").get(service), 30,
                          0.5, "the volume rule")
        success = wait_until(lambda: query("service:proxy_requests_success:ratio_rate5m")
                             .get(service), 30, 0.5, "the success-rate rule")
        hit_ratio = wait_until(lambda: query("service:proxy_cache_hit:ratio_rate5m")
                               .get(service), 30, 0.5, "the cache hit-ratio rule")
        p99 = wait_until(lambda: query("service:proxy_request_duration_seconds:p99_5m")
                         .get(service), 30, 0.5, "the latency rule")
        print(f"\nPrometheus: proxy_requests_total={total} rate5m={rate:.3f}/s "
              f"success={success} cache_hit_ratio={hit_ratio:.3f} p99={p99:.4f}s")
        assert rate > 0
        assert success == 1.0
        assert 0.9 < hit_ratio <= 1  # 1 miss, 49 hits (the miss may precede the window)
        assert 0 < p99 < 1
        budget = wait_until(lambda: query("service:proxy_availability_budget:remaining30d")
                            .get(service), 30, 0.5, "the error-budget rule")
        assert budget == 1.0  # no 5xx: the budget is untouched

        # every query of the dashboard answers from this live scrape, per instance too
        dashboard = json.loads((REPO / "config" / "grafana" / "wsgiproxy-dashboard.json")
                               .read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$service", ".*").replace("$instance", ".*")
                wait_until(lambda expr=expr: prometheus.query(expr), 30, 0.5,
                           f"{panel['title']!r}: {expr}")
        [cpu] = prometheus.query("instance:process_cpu_seconds:rate5m")
        roles = {r["metric"]["role"]
                 for r in prometheus.query("instance_pid:process_resident_memory_bytes:sum")}
        assert cpu["metric"]["instance"] == f"127.0.0.1:{p.metrics_port}"
        assert roles == {"master", "worker"}
    finally:
        prometheus.stop()


@pytest.mark.slow
@needs_prometheus
@pytest.mark.skipif(ALERTMANAGER is None, reason="the alertmanager server is not installed "
                    "(Debian package: prometheus-alertmanager)")
def test_a_stopped_host_reaches_alertmanager_as_host_down(backend, start_proxy, tmp_path):
    """What `docker compose up` shows when a backend is stopped, on loopback: the
    project's Prometheus config, rules and Alertmanager config, with the alerts' `for`
    shortened to 1 s so the test need not wait 5 minutes."""
    up, down = backend(), backend()
    p = start_proxy({DOMAIN: [up.port, down.port]}, server="gunicorn", workers=1)
    rules_dir = tmp_path / "prom"
    (rules_dir / "rules").mkdir(parents=True)
    for path in RULE_FILES:
        text = re.sub(r"^(\s+for: ).*$", r"\g<1>1s", path.read_text(), flags=re.M)
        (rules_dir / "rules" / path.name).write_text(text)
    am_port = reserve_port()
    assert ALERTMANAGER
    alertmanager = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={ALERTMANAGER_CONFIG}",
         f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
         "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prometheus = None
    try:
        am = f"http://127.0.0.1:{am_port}"
        wait_until(lambda: _get(f"{am}/-/ready"), 30, 0.2, "Alertmanager")
        prometheus = Prometheus(tmp_path, p.metrics_port, alertmanager=f"127.0.0.1:{am_port}",
                                rules_dir=rules_dir)
        down.stop()
        with session() as s:  # traffic finds the stopped host and ejects it
            for _ in range(4):
                assert s.get(p.url("/proxy/x"), headers={"Host": DOMAIN}).ok

        def host_down_alerts():
            alerts = requests.get(f"{am}/api/v2/alerts", timeout=5).json()
            return [a["labels"] for a in alerts if a["labels"]["alertname"] ==
                    "WsgiproxyHostDown"]

        [labels] = wait_until(host_down_alerts, 60, 0.5, "WsgiproxyHostDown in Alertmanager")
        assert labels["host"] == f"127.0.0.1:{down.port}"
        assert (labels["service"], labels["severity"]) == ("mon-test", "warning")
        # the healthy host, and the service as a whole, raise nothing
        firing = {a["labels"]["alertname"]
                  for a in requests.get(f"{am}/api/v2/alerts", timeout=5).json()}
        assert firing == {"WsgiproxyHostDown"}
    finally:
        if prometheus:
            prometheus.stop()
        alertmanager.terminate()
        alertmanager.wait(20)


def _get(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False
