"""Active health checks (docs/health.md): one prober per proxy instance probes the hosts
of every service that has a ``health_check``, and every process that serves requests
takes its verdicts into its balancers.

* :mod:`.probe` — one probe of one host (``GET path``, the service's TLS settings);
* :mod:`.prober` — :class:`Prober`: a loop per host, the thresholds, the verdicts;
* :mod:`.state` — the verdicts as a value, written to and read from a small file (how
  gunicorn's master hands them to its workers), and applied to a process's balancers.

Under ``python -m wsgiproxy`` the prober runs in the serving process and applies its
verdicts directly; under gunicorn it runs in the master (so the hosts see one probe per
interval whatever the number of workers), which writes the verdicts to its runtime
directory, and each worker reads that file when it changes, looking once a second.
"""

from __future__ import annotations

from .prober import Prober
from .state import HealthState, HostHealth

__all__ = ["HealthState", "HostHealth", "Prober"]
