"""The proxy's fixed limits, each with one name (docs/bad-input.md, docs/forwarding.md).

They bound what a client or a host can make the proxy hold, and are the same under
both servers. Settings an operator may want to change are in :mod:`wsgiproxy.settings`;
these are the protocol's and the implementation's own.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "IO_CHUNK_BYTES",
    "MAX_CHUNK_LINE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_LINE_BYTES",
    "MAX_REQUEST_LINE_BYTES",
    "MAX_RESPONSE_HEADERS",
    "MAX_RESPONSE_LINE_BYTES",
    "ONE_SEND_BYTES",
    "REPLAYABLE_BODY_BYTES",
]

#: A request line, CRLF included; longer is 414.
MAX_REQUEST_LINE_BYTES: Final = 8 * 1024
#: One request header line, CRLF included; longer is 431.
MAX_HEADER_LINE_BYTES: Final = 8 * 1024
#: A request's whole header section; larger is 431.
MAX_HEADER_BYTES: Final = 64 * 1024
#: A chunk-size line of a chunked request body, extensions included.
MAX_CHUNK_LINE_BYTES: Final = 4096
#: A host's response header line, and how many header lines it may send.
MAX_RESPONSE_LINE_BYTES: Final = 64 * 1024
MAX_RESPONSE_HEADERS: Final = 100
#: Bytes read or relayed per step, both ways (bodies, tunnels).
IO_CHUNK_BYTES: Final = 64 * 1024
#: A request body up to this size is kept whole, so a retry can send it again.
REPLAYABLE_BODY_BYTES: Final = 64 * 1024
#: A response whose head and body together fit in this goes out in one send.
ONE_SEND_BYTES: Final = 64 * 1024
