"""Draw ``make bench``'s results (reports/bench.json) as one PNG: per scenario, the
throughput of wsgiproxy, its ceiling, the aiohttp peer and nginx side by side, and
their p50 and p99.

    python bench/chart.py [reports/bench.json] [out.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

COLOURS = {"wsgiproxy": "#1f77b4", "wsgiproxy-pywsgi": "#9ecae1", "hello": "#2ca02c",
           "nginx": "#7f7f7f", "nginx-cache": "#7f7f7f", "aiohttp": "#ff7f0e"}
LABELS = {"hello": "ceiling (hello, same gunicorn)", "nginx-cache": "nginx proxy_cache",
          "aiohttp": "aiohttp peer (no cache)",
          "wsgiproxy-pywsgi": "wsgiproxy (pywsgi)"}


def draw(summary: dict, out: Path) -> None:
    scenarios = summary["scenarios"]
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(11, 2.4 * len(scenarios) + 1),
                             squeeze=False)
    for row, scenario in zip(axes, scenarios, strict=True):
        names = list(scenario["targets"])
        values = [scenario["targets"][n] for n in names]
        labels = [LABELS.get(n, n) for n in names]
        colours = [COLOURS.get(n, "#444") for n in names]
        metric = scenario["metric"]
        throughput, latency = row
        bars = throughput.barh(labels, [v[metric] for v in values], color=colours)
        throughput.bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
        throughput.invert_yaxis()
        throughput.set_title(f"{scenario['name']}: {scenario['note']}", fontsize=9, loc="left")
        throughput.set_xlabel("MiB/s" if metric == "mib_s" else "req/s", fontsize=8)
        throughput.margins(x=0.2)
        y = range(len(names))
        latency.barh([i - 0.2 for i in y], [v["p50_ms"] for v in values], height=0.4,
                     color=colours, alpha=0.5, label="p50")
        p99 = latency.barh([i + 0.2 for i in y], [v["p99_ms"] for v in values], height=0.4,
                           color=colours, label="p99")
        latency.bar_label(p99, fmt="%.0f", padding=3, fontsize=7)
        latency.set_yticks(list(y), labels)
        latency.invert_yaxis()
        latency.set_xscale("log")
        latency.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        latency.xaxis.set_minor_formatter(NullFormatter())
        latency.set_xlabel("latency, ms (log): pale p50, dark p99", fontsize=8)
        latency.margins(x=0.3)
        for ax in row:
            ax.tick_params(labelsize=8)
    m = summary["machine"]
    fig.suptitle(f"make bench, {summary['when']}: {m['cpu']}, {m['cores']} cores; medians of "
                 f"{summary['rounds']} rounds of {summary['seconds']:g} s, "
                 f"{summary['workers']} workers", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("out", nargs="?", type=Path, help="default: SOURCE with .png")
    args = parser.parse_args()
    out = args.out or args.source.with_suffix(".png")
    draw(json.loads(args.source.read_text()), out)
    print(out)


if __name__ == "__main__":
    main()
