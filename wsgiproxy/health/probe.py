"""One active probe of one host: ``GET <path>`` with the service's domain as Host, over
the service's TLS settings, on a fresh connection; its result is a label of
``proxy_health_checks_total``.

The standard library's ``http.client`` does the request, not urllib3: under gunicorn
the probes run in the master, before gevent patches the workers it forks, and urllib3
keeps references to ``ssl`` classes taken at import time, which a worker would then
use unpatched. ``http.client`` looks ``socket`` and ``ssl`` up at each call.
"""

from __future__ import annotations

import http.client
import ssl
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..policy import HealthCheckPolicy
    from ..routes_file import TLS, Backend

__all__ = ["MAX_PROBE_BODY_BYTES", "Result", "probe", "tls_context"]

#: A probe reads at most this much of the answer's body before closing.
MAX_PROBE_BODY_BYTES: Final = 65536


class Result:
    """The ``result`` label of ``proxy_health_checks_total``: a small, fixed set."""

    PASS: Final = "pass"  # answered with an expected status
    STATUS: Final = "status"  # answered with another status
    REFUSED: Final = "refused"
    CONNECT_TIMEOUT: Final = "connect_timeout"
    TLS_ERROR: Final = "tls_error"
    READ_TIMEOUT: Final = "read_timeout"
    RESET: Final = "reset"
    INVALID_RESPONSE: Final = "invalid_response"


def tls_context(tls: TLS) -> ssl.SSLContext:
    """The client context of a service's ``tls`` settings (docs/tls.md)."""
    if tls.verify:
        context = ssl.create_default_context(cafile=tls.ca_file)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class _TLSConnection(http.client.HTTPSConnection):
    """``HTTPSConnection`` with the SNI name (and the name checked) given apart from the
    address connected to."""

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext,
                 server_name: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self._server_name)


def probe(host: Backend, domain: str, check: HealthCheckPolicy,
          context: ssl.SSLContext | None, server_name: str) -> str:
    """Probe ``host`` once; the :class:`Result`.

    :param domain: the service's, sent as Host.
    :param context: the service's TLS context; None: plain HTTP.
    :param server_name: the TLS name (SNI and the certificate's name).
    """
    timeout = check.timeout_seconds
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host.address, host.port, timeout=timeout)
    else:
        conn = _TLSConnection(host.address, host.port, timeout, context, server_name)
    try:
        try:
            conn.connect()
        except (ssl.SSLError, ssl.CertificateError):
            return Result.TLS_ERROR
        except TimeoutError:
            return Result.CONNECT_TIMEOUT
        except OSError:
            return Result.REFUSED
        try:
            conn.request("GET", check.path, headers={
                "Host": domain, "User-Agent": "wsgiproxy-health-check",
                "Connection": "close"})
            response = conn.getresponse()
            response.read(MAX_PROBE_BODY_BYTES)
        except TimeoutError:
            return Result.READ_TIMEOUT
        except (ConnectionError, http.client.RemoteDisconnected):
            return Result.RESET
        except (http.client.HTTPException, ValueError):
            return Result.INVALID_RESPONSE
        except OSError:
            return Result.RESET
        return Result.PASS if response.status in check.expect_status else Result.STATUS
    finally:
        conn.close()
