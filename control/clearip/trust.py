"""The trusted list: `trust.sources` from the config plus the state file that `allow` edits."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

STATE_FILE = "trusted.json"


@dataclass(frozen=True, slots=True)
class TrustedEntry:
    cidr: IPNetwork
    note: str
    origin: str  # "config" | "state"


def state_path(state_dir: str) -> Path:
    return Path(state_dir) / STATE_FILE


def load_state(state_dir: str) -> list[TrustedEntry]:
    """Entries from the state file; a missing file is an empty list."""
    path = state_path(state_dir)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    entries = []
    for item in doc.get("entries", []):
        entries.append(
            TrustedEntry(ipaddress.ip_network(item["cidr"]), str(item.get("note", "")), "state")
        )
    return entries


def save_state(state_dir: str, entries: Iterable[TrustedEntry]) -> None:
    """Write the state file atomically (temp file + rename), so a crash never leaves half."""
    path = state_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "version": 1,
        "entries": [{"cidr": str(e.cidr), "note": e.note} for e in entries if e.origin == "state"],
    }
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TrustList:
    """Fast membership test for source addresses; results cached per address string."""

    CACHE_MAX = 65536

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.set(networks)

    def set(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        result = any(addr in net for net in self.networks)
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()  # a spoofed flood must not grow it without bound
        self._cache[ip] = result
        return result
