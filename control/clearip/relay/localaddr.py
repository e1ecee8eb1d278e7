"""The worker's own addresses: which hosts and ports are this proxy (a Route or Request-URI
that names us), and which source address the kernel uses toward a peer when a socket is bound
to a wildcard (what goes in Via, Record-Route and capture records)."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

from clearip.config import Config
from clearip.relay.events import PRIVATE_PORT_OFFSET
from clearip.relay.routing import is_ip_literal

ROUTE_CACHE_MAX = 4096  # peers whose source address is remembered


def wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def host_addresses() -> set[str]:
    """Every address configured on this host (for recognising Routes that name us)."""
    addrs = {"127.0.0.1", "::1"}
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, timeout=5, check=True
        ).stdout
        for link in json.loads(out):
            for info in link.get("addr_info", []):
                addrs.add(info["local"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        pass
    return addrs


class LocalAddresses:
    def __init__(self) -> None:
        self.ips: set[str] = set()
        self.ports: set[int] = set()
        self._route_cache: dict[str, str] = {}

    def discover(self, cfg: Config, workers: int) -> None:
        """The host's addresses, the listeners' and the advertised ones, and every worker's
        private port (a response to any of them is for this proxy)."""
        self.ips = host_addresses()
        listen = cfg.listen
        if listen.advertise is not None:
            self.ips.add(listen.advertise.host)
            if listen.advertise.port:
                self.ports.add(listen.advertise.port)
        for lst in (*listen.udp, *listen.tcp, *listen.tls):
            self.ports.add(lst.port)
            if not wildcard(lst.host):
                self.ips.add(lst.host)
        for lst in listen.udp:
            self.ports.update(lst.port + PRIVATE_PORT_OFFSET + i for i in range(workers))

    def is_local(self, host: str, port: int | None) -> bool:
        return host in self.ips and (port is None or port in self.ports)

    def toward(self, dest_host: str, listeners: tuple[Any, ...] = ()) -> str:
        """Our address as `dest_host` sees it: the first listener bound to an address, else
        the source the kernel would pick toward that peer (cached)."""
        for lst in listeners:
            if not wildcard(lst.host):
                return lst.host
        cached = self._route_cache.get(dest_host)
        if cached is not None:
            return cached
        host = "127.0.0.1"
        if is_ip_literal(dest_host):
            family = socket.AF_INET6 if ":" in dest_host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                try:
                    s.connect((dest_host, 9))  # no packet: only the route is looked up
                    host = s.getsockname()[0]
                except OSError:
                    pass
        if len(self._route_cache) < ROUTE_CACHE_MAX:
            self._route_cache[dest_host] = host
        return host
