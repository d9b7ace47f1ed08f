"""Reading the proxy's /metrics as numbers, so tests compare values, not text lines."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families


def scrape(p) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} from the proxy's /metrics."""
    text = requests.get(p.metrics_url(), timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, *sorted(labels.items())), 0.0)
