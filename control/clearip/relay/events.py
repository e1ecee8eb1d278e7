"""The vocabulary between the sans-IO proxy core and its transports.

The core never touches a socket: it is told where a message came from (`Flow`) and answers with
`Send` records naming where bytes must go (`Target`). The asyncio adapter does the rest and
reports failures back with the `Send.token` it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Address = tuple[str, int]

# Worker i sends its requests from UDP port (listener port + PRIVATE_PORT_OFFSET + i), so the
# answers come straight back to it (and `clearipctl check` knows which ports must be free).
PRIVATE_PORT_OFFSET = 10


@dataclass(frozen=True, slots=True)
class Flow:
    """How a message arrived: enough to answer on the same path (RFC 3261 §18.2.2)."""

    transport: str  # "udp" | "tcp" | "tls"
    remote: Address  # the peer's IP and port as seen by the socket
    local: Address  # the local address it arrived on (listener or private port)
    conn: int | None = None  # stream connection id; None for UDP
    upstream: bool = False  # came over the ClearIP link


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: a host (IP literal or name to resolve) and port over a transport.

    `conn` asks for a specific existing stream connection (responses go back on the connection
    their request came on); `upstream` means the ClearIP link, whose connection is `conn`.
    """

    transport: str
    host: str
    port: int
    conn: int | None = None
    upstream: bool = False
    local: Address | None = None  # UDP: send from this local address (where the request came in)


@dataclass(slots=True)
class Send:
    data: bytes
    target: Target
    token: Any = None  # handed back to ProxyCore.send_failed() if the send fails
