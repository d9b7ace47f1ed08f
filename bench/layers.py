"""Where the proxy's CPU goes, by layer: py-spy's raw samples (``py-spy record -f raw``)
summed by the package whose code was running (self time), idle threads left out.

    py-spy record -p <worker pid> -d 10 -r 400 -f raw -o profile.raw
    python bench/layers.py profile.raw
"""

from __future__ import annotations

import argparse
import collections
import re

LAYERS = [  # first match wins: (layer, pattern on the frame's file)
    ("idle (gevent's resolver thread)", r"gevent/_threading\.py"),
    ("wsgiproxy", r"wsgiproxy/"),
    ("gunicorn (HTTP parse and write)", r"gunicorn/"),
    ("gevent (sockets, hub, timeouts)", r"gevent/"),
    ("urllib3", r"urllib3/"),
    ("requests", r"requests/"),
    ("cachecontrol", r"cachecontrol/"),
    ("prometheus_client", r"prometheus_client/"),
    ("http.client", r"http/client\.py"),
    ("json / logging", r"json/|logging/"),
    ("other standard library", r"python3\.\d+/"),
]


def layer_of(frame: str) -> str:
    for name, pattern in LAYERS:
        if re.search(pattern, frame):
            return name
    return "other"


def main(path: str) -> None:
    counts: collections.Counter[str] = collections.Counter()
    with open(path) as samples:
        for line in samples:
            stack, _, n = line.rstrip().rpartition(" ")
            counts[layer_of(stack.split(";")[-1])] += int(n)
    busy = sum(n for name, n in counts.items() if not name.startswith("idle"))
    print(f"{'layer':36} {'share of busy CPU':>18}")
    for name, n in counts.most_common():
        if not name.startswith("idle"):
            print(f"{name:36} {100 * n / busy:17.1f}%")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="py-spy's raw samples (record -f raw)")
    main(parser.parse_args().profile)
