"""The trusted list: `trust.sources` from the config plus the state file that `allow` edits."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from clearip.files import write_private

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

STATE_FILE = "trusted.json"


@dataclass(frozen=True, slots=True)
class TrustedEntry:
    cidr: IPNetwork
    note: str
    origin: str  # "config" | "state"


class TrustError(ValueError):
    """A trusted-list change that is refused, with the one line an operator needs."""


def parse_cidr(text: str) -> IPNetwork:
    """A bare address (= /32 or /128) or a CIDR, in the one normal form every enforcer uses
    (`normal_network`); host bits set are refused, not masked."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise TrustError(f"{text!r} is not an IP address or CIDR") from None
        raise TrustError(f"{text} has host bits set; did you mean {loose}?") from None
    return normal_network(net)


def normal_network(net: IPNetwork | str) -> IPNetwork:
    """The normal form of a trusted network, shared by nftables, eBPF and the relay.

    IPv4 arrives on the wire as IPv4 whatever a dual-stack socket reports, so an IPv4-mapped
    network (::ffff:a.b.c.d/96+n) means a.b.c.d/n. What cannot be matched the same way by all
    three is refused (TrustError): a network that only partly covers the mapped range
    (::ffff:0:0/95 holds IPv6 and every IPv4 address at once), a scoped address, and a
    network that trusts every address of a family (0.0.0.0/0, ::/0, ::ffff:0:0/96): that is
    an open relay, not a trusted list.
    """
    if isinstance(net, str):
        try:
            net = ipaddress.ip_network(net, strict=True)
        except ValueError as e:
            raise TrustError(f"{net!r} is not a CIDR: {e}") from None
    if isinstance(net, ipaddress.IPv6Network):
        if net.network_address.scope_id:
            raise TrustError(f"{net}: a scoped address cannot be trusted (drop the %zone)")
        if net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
            net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
        elif net.prefixlen < 96 and _V4_MAPPED.subnet_of(net) and net.prefixlen > 0:
            raise TrustError(
                f"{net} covers every IPv4-mapped address (::ffff:0:0/96) as well as IPv6 "
                "ones; list the IPv4 and IPv6 networks separately"
            )
    if net.prefixlen == 0:
        raise TrustError(
            f"{net} would trust every address: list your switches and carriers instead"
        )
    return net


def normal_address(text: str) -> IPAddress | None:
    """A source address as every enforcer compares it (IPv4-mapped means IPv4); None when
    `text` is not an address."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id:
            return None
    return addr


_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


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
    """Entries from the state file; a missing file is an empty list. An unreadable or corrupt
    one is a TrustError saying which file and what to do (never a half-read list)."""
    path = state_path(state_dir)
    try:
        doc = json.loads(path.read_text())
        found = [
            TrustedEntry(normal_network(str(item["cidr"])), str(item.get("note", "")), "state")
            for item in doc.get("entries", [])
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise TrustError(
            f"the trusted-list state file {path} cannot be read ({e}): fix it or move it away "
            "(`clearipctl allow` writes a new one)"
        ) from None
    return found


def save_state(state_dir: str, entries: Iterable[TrustedEntry]) -> None:
    """Write the state file atomically, 0600 and fsynced with its directory: a crash or a
    power cut leaves the old list or the new one, and only the proxy's user reads it."""
    doc = {
        "version": 1,
        "entries": [{"cidr": str(e.cidr), "note": e.note} for e in entries if e.origin == "state"],
    }
    write_private(state_path(state_dir), (json.dumps(doc, indent=2) + "\n").encode())


class TrustList:
    """Fast membership test for source addresses; results cached per address string."""

    CACHE_MAX = 65536

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.set(networks)

    def set(self, networks: Iterable[IPNetwork | str]) -> None:
        self.networks = tuple(normal_network(n) for n in networks)
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        addr = normal_address(ip)
        if addr is None:
            return False
        result = any(addr.version == net.version and addr in net for net in self.networks)
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()  # a spoofed flood must not grow it without bound
        self._cache[ip] = result
        return result
