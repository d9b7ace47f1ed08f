"""Locust load test: a mix of cached GET, uncached GET and JSON POST through the proxy.

Run it with ``make load-test`` (which starts three sample backends and the proxy under
gunicorn's production config), or by hand against a running proxy::

    locust -f locustfiles/locustfile.py --host http://127.0.0.1:8080

LOAD_TEST_DOMAIN is the Host header sent (default: the example routes file's service).
Every answer is checked: a wrong status or body counts as a failure.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task

DOMAIN = os.environ.get("LOAD_TEST_DOMAIN", "my-service.my-company.com")


class ProxyUser(FastHttpUser):
    wait_time = between(0.005, 0.02)

    def on_start(self) -> None:
        self.headers = {"Host": DOMAIN}

    @task(5)
    def cached_get(self) -> None:
        with self.client.get("/proxy/cacheable", headers=self.headers, name="cached GET",
                             catch_response=True) as resp:
            if resp.status_code != 200 or resp.json().get("cacheable") is not True:
                resp.failure(f"unexpected answer {resp.status_code}: {resp.text[:100]}")

    @task(3)
    def uncached_get(self) -> None:
        n = random.randrange(1_000_000)
        with self.client.get(f"/proxy/uncacheable?n={n}", headers=self.headers,
                             name="uncached GET", catch_response=True) as resp:
            if resp.status_code != 200 or resp.headers.get("X-Cache") != "MISS":
                resp.failure(f"unexpected answer {resp.status_code}: {resp.text[:100]}")

    @task(2)
    def json_post(self) -> None:
        payload = {"order": random.randrange(1_000_000), "items": ["a", "b", "c"]}
        with self.client.post("/proxy/orders", json=payload, headers=self.headers,
                              name="JSON POST", catch_response=True) as resp:
            data = resp.json() if resp.status_code == 200 else {}
            if data.get("method") != "POST" or data.get("body_bytes", 0) < 10:
                resp.failure(f"unexpected answer {resp.status_code}: {resp.text[:100]}")
