"""The vocabulary between the sans-IO proxy core and its transports.

The core never touches a socket: it is told where a message came from (`Flow`) and answers with
`Send` records naming where bytes must go (`Target`). The asyncio adapter does the rest and
reports failures back with the `Send.token` it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Address = tuple[str, int]

# The records made per message have an `__init__` of their own (`init=False`): the compiled
# build compiles it, where the one `@dataclass` generates stays interpreted (and a frozen one
# sets each field through object.__setattr__): 4 % of a worker's CPU at the knee. They are not
# frozen for the same reason; nothing assigns to a Flow or a Target, and `__hash__` is kept.

# Worker i sends its requests from UDP port (listener port + PRIVATE_PORT_OFFSET + i), so the
# answers come straight back to it (and `clearipctl check` knows which ports must be free).
PRIVATE_PORT_OFFSET = 10


@dataclass(slots=True, init=False)
class Flow:
    """How a message arrived: enough to answer on the same path (RFC 3261 §18.2.2)."""

    transport: str  # "udp" | "tcp" | "tls"
    remote: Address  # the peer's IP and port as seen by the socket
    local: Address  # the local address it arrived on (listener or private port)
    conn: int | None = None  # stream connection id; None for UDP
    upstream: bool = False  # came over the ClearIP link

    def __init__(
        self,
        transport: str,
        remote: Address,
        local: Address,
        conn: int | None = None,
        upstream: bool = False,
    ) -> None:
        self.transport = transport
        self.remote = remote
        self.local = local
        self.conn = conn
        self.upstream = upstream

    def __hash__(self) -> int:
        return hash((self.transport, self.remote, self.local, self.conn, self.upstream))


@dataclass(slots=True, init=False)
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

    def __init__(
        self,
        transport: str,
        host: str,
        port: int,
        conn: int | None = None,
        upstream: bool = False,
        local: Address | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.conn = conn
        self.upstream = upstream
        self.local = local

    def __hash__(self) -> int:
        return hash((self.transport, self.host, self.port, self.conn, self.upstream, self.local))


@dataclass(slots=True, init=False)
class Send:
    data: bytes
    target: Target
    token: Any = None  # handed back to ProxyCore.send_failed() if the send fails

    def __init__(self, data: bytes, target: Target, token: Any = None) -> None:
        self.data = data
        self.target = target
        self.token = token
