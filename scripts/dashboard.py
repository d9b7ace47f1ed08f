"""Write config/grafana/wsgiproxy-dashboard.json: the Grafana dashboard of the SLIs.

Every query reads a recording rule of config/prometheus/rules/wsgiproxy-recording.yml
(a test checks it). Run after changing a panel:  .venv/bin/python scripts/dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "config" / "grafana" / "wsgiproxy-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'service=~"$service"'
INST = 'instance=~"$instance"'


def panel(i: int, title: str, description: str, unit: str,
          targets: list[tuple[str, str]], kind: str = "timeseries") -> dict:
    return {
        "id": i + 1, "type": kind, "title": title, "description": description,
        "datasource": DS, "gridPos": {"x": (i % 2) * 12, "y": (i // 2) * 8, "w": 12, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(targets)],
    }


def percentiles(metric: str, quantiles: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(f"service:{metric}:{q}_5m{{{SEL}}}", f"{q} {{{{service}}}}") for q in quantiles]


PANELS = [
    ("Request volume", "Requests answered per second (SLI: volume).", "reqps",
     [(f"service:proxy_requests:rate5m{{{SEL}}}", "{{service}}")]),
    ("Success rate", "Share of requests not answered with a 5xx (SLI; SLO 99.9 %).",
     "percentunit", [(f"service:proxy_requests_success:ratio_rate5m{{{SEL}}}", "{{service}}")]),
    ("Latency (request received → response finished)",
     "Percentiles of proxy_request_duration_seconds (SLI: latency).", "s",
     percentiles("proxy_request_duration_seconds", ("p50", "p95", "p99"))),
    ("Request processing time (received → forwarded)",
     "The proxy's work before the request reaches a host, failed attempts included (SLI).",
     "s", percentiles("proxy_request_processing_seconds", ("p50", "p99"))),
    ("Response processing time (answered → finished)",
     "From the host's response head to the end of the response to the client (SLI).", "s",
     percentiles("proxy_response_processing_seconds", ("p50", "p99"))),
    ("Cache hit ratio", "Share of cache lookups answered with a stored body (hit or "
     "revalidated).", "percentunit",
     [(f"service:proxy_cache_hit:ratio_rate5m{{{SEL}}}", "{{service}}")]),
    ("Upstream attempts by outcome", "Attempts to reach hosts per second: response, "
     "retryable_status, refused, connect_timeout, read_timeout, reset, invalid_response.",
     "reqps", [(f"service_outcome:proxy_upstream_attempts:rate5m{{{SEL}}}",
                "{{service}} {{outcome}}")]),
    ("Hosts up", "1 while a host is in rotation, 0 while it is out: refusing connections, "
     "failing its health checks or ejected for errors.",
     "none", [(f"service_host:proxy_upstream_host_up:min{{{SEL}}}", "{{service}} {{host}}")]),
    ("Responses by status", "Requests answered per second, by status code.", "reqps",
     [(f"service_code:proxy_requests:rate5m{{{SEL}}}", "{{service}} {{code}}")]),
    ("In flight and cache errors", "Requests being served (all replicas), and failed "
     "Redis operations per second.", "short",
     [("job:proxy_requests_in_flight:sum", "in flight"),
      ("operation:proxy_cache_errors:rate5m", "redis {{operation}} errors/s")]),
    ("Error budget left (30 days)", "Share of the 30-day error budget not yet spent: 1 "
     "untouched, 0 spent, below 0 over. SLOs: slo:*:objective in the recording rules.",
     "percentunit",
     [(f"service:proxy_availability_budget:remaining30d{{{SEL}}}", "availability {{service}}"),
      (f"service:proxy_latency_budget:remaining30d{{{SEL}}}", "latency {{service}}")]),
    ("Error-budget burn rate (1 h)", "How many times faster than it renews the budget is "
     "spent: 1 spends it in exactly 30 days; the fast-burn page is at 14.4.", "none",
     [(f"service:proxy_requests_errors:ratio_rate1h{{{SEL}}} / on() group_left() "
       "(1 - slo:proxy_availability:objective)", "availability {{service}}"),
      (f"service:proxy_requests_slow:ratio_rate1h{{{SEL}}} / on() group_left() "
       "(1 - slo:proxy_latency:objective)", "latency {{service}}")]),
    ("Requests per instance", "Requests answered per second by each pod (or host): an "
     "uneven share points at the load balancer in front.", "reqps",
     [(f"instance:proxy_requests:rate5m{{{INST}}}", "{{instance}}")]),
    ("CPU per instance", "Cores used by each pod, and by each of its processes (gunicorn's "
     "master and workers): a worker near 1 core is saturated.", "short",
     [(f"instance:process_cpu_seconds:rate5m{{{INST}}}", "{{instance}}"),
      (f"instance_pid:process_cpu_seconds:rate5m{{{INST}}}",
       "{{instance}} {{role}} {{pid}}")]),
    ("Memory per instance", "Resident memory of each pod (sum of its processes; compare "
     "with the 512Mi limit) and of each process.", "bytes",
     [(f"instance:process_resident_memory_bytes:sum{{{INST}}}", "{{instance}}"),
      (f"instance_pid:process_resident_memory_bytes:sum{{{INST}}}",
       "{{instance}} {{role}} {{pid}}")]),
    ("Rate limited and filter errors", "Share of each service's requests answered 429 "
     "by a rate_limit filter; filter hooks raising per second (answered 500); requests "
     "let through uncounted because the rate-limit Redis failed.", "short",
     [(f"service:proxy_rate_limited:ratio_rate5m{{{SEL}}}", "limited share {{service}}"),
      (f"service_filter:proxy_filter_errors:rate5m{{{SEL}}}",
       "errors/s {{service}} {{filter}}"),
      (f"instance:proxy_rate_limit_errors:rate5m{{{INST}}}", "uncounted/s {{instance}}")]),
    ("Open connections and tunnels per instance", "Open file descriptors (client and "
     "upstream sockets) and WebSocket tunnels of each pod.", "short",
     [(f"instance:process_open_fds:sum{{{INST}}}", "fds {{instance}}"),
      (f"instance:proxy_tunnels_active:sum{{{INST}}}", "tunnels {{instance}}")]),
    ("Hosts out of rotation and ejections", "Hosts of each service out of rotation now, "
     "and ejections per second by reason (refused, consecutive_5xx, health_check); "
     "docs/health.md.", "short",
     [(f"service:proxy_upstream_hosts_out:count{{{SEL}}}", "out {{service}}"),
      (f"service_reason:proxy_upstream_ejections:rate5m{{{SEL}}}",
       "ejections/s {{service}} {{reason}}")]),
    ("Retry budget and failing probes", "Retries refused by each service's retry budget, "
     "requests sent while every host was out, and failed health probes by result, per "
     "second.", "short",
     [(f"service:proxy_retry_budget_exhausted:rate5m{{{SEL}}}", "budget spent {{service}}"),
      (f"service:proxy_upstream_all_hosts_down:rate5m{{{SEL}}}", "all down {{service}}"),
      (f'service_result:proxy_health_checks:rate5m{{{SEL},result!="pass"}}',
       "probes {{service}} {{result}}")]),
]


def selector(label: str, rule: str) -> dict:
    """A multi-value variable listing the values of ``label`` in ``rule``, All by default."""
    query = f"label_values({rule}, {label})"
    return {"name": label, "type": "query", "datasource": DS, "label": label.capitalize(),
            "query": {"query": query, "refId": f"{label}s"}, "definition": query,
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
            "current": {"text": "All", "value": "$__all"}}


def dashboard() -> dict:
    panels = [panel(i, *spec) for i, spec in enumerate(PANELS)]
    panels[7]["type"] = "state-timeline"
    panels[7]["options"] = {"showValue": "never"}
    return {
        "uid": "wsgiproxy", "title": "wsgiproxy", "tags": ["wsgiproxy", "proxy"],
        "description": "SLIs of wsgiproxy: volume, latency, success rate, request and "
                       "response processing time, cache, upstream health, error budgets, "
                       "each instance's load, CPU and memory. Reads the "
                       "recording rules of config/prometheus/rules.",
        "schemaVersion": 39, "version": 3, "editable": True, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Prometheus"},
            selector("service", "service:proxy_requests:rate5m"),
            selector("instance", "instance:proxy_requests:rate5m"),
        ]},
        "panels": panels,
    }


def main() -> None:
    OUT.write_text(json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
