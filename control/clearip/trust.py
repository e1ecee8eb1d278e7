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


class TrustError(Exception):
    """A trusted-list change that is refused, with the one line an operator needs."""


def parse_cidr(text: str) -> IPNetwork:
    """A bare address (= /32 or /128) or a CIDR; host bits set are refused, not masked."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise TrustError(f"{text!r} is not an IP address or CIDR") from None
    raise TrustError(f"{text} has host bits set; did you mean {loose}?")


def entries(config_sources: Iterable[IPNetwork], state_dir: str) -> list[TrustedEntry]:
    """The whole trusted list: `trust.sources` first, then the state file's entries."""
    listed = [TrustedEntry(net, "", "config") for net in config_sources]
    return listed + load_state(state_dir)


def with_added(current: list[TrustedEntry], cidr: IPNetwork, note: str) -> list[TrustedEntry]:
    for entry in current:
        if entry.cidr == cidr:
            where = "the config file (trust.sources)" if entry.origin == "config" else "the list"
            raise TrustError(f"{cidr} is already trusted (in {where})")
    return [*current, TrustedEntry(cidr, note, "state")]


def without(current: list[TrustedEntry], cidr: IPNetwork) -> list[TrustedEntry]:
    for entry in current:
        if entry.cidr == cidr:
            if entry.origin == "config":
                raise TrustError(
                    f"{cidr} comes from trust.sources in the config file: remove it there "
                    "and run `clearipctl reload`"
                )
            return [e for e in current if e is not entry]
    raise TrustError(f"{cidr} is not in the trusted list (see `clearipctl trusted`)")


def as_json(current: list[TrustedEntry]) -> list[dict[str, str]]:
    return [{"cidr": str(e.cidr), "note": e.note, "origin": e.origin} for e in current]


def state_path(state_dir: str) -> Path:
    return Path(state_dir) / STATE_FILE


def load_state(state_dir: str) -> list[TrustedEntry]:
    """Entries from the state file; a missing file is an empty list."""
    path = state_path(state_dir)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    found = []
    for item in doc.get("entries", []):
        found.append(
            TrustedEntry(ipaddress.ip_network(item["cidr"]), str(item.get("note", "")), "state")
        )
    return found


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
