"""The nftables half of the kernel fast path (SPEC §5): one table of ours, changed atomically.

The table ``inet <name>`` is described by the template ``nft/clearip.nft.json.in`` (see
``nft/README.md``); this module fills it and talks to the kernel through python-nftables.

Every change is ONE JSON batch through ``_run()`` (the single ``json_cmd()`` call), which nft
commits as one netlink transaction: either all of it applies or none of it does, and no packet
ever sees a half-made table or an emptied set. ``self.trusted`` (our bookkeeping) is only
updated after the batch succeeded. A failure raises ``NftError`` carrying nft's error text and
the batch, one numbered command per line, because nft's JSON errors carry no useful location
("internal:0:0-0") beyond "command array at index N".

    fp = NftFastPath("clearip", udp_ports=[5060], tcp_ports=[5060, 5061])
    fp.load(["192.0.2.0/24", "2001:db8::/32"])     # (re)creates the table
    fp.set_trusted(["192.0.2.0/24"])                # replaces both trusted sets at once
    fp.add_pinhole("198.51.100.7", ttl_s=32)        # a next hop's answers may come in
    fp.counters()["dropped_untrusted"]["packets"]
    fp.unload()                                     # the table is gone; idempotent

Nothing here touches another table: the only table-level commands name ``inet <name>``.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from clearip.trust import TrustError, normal_address, normal_network

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Json = Any  # a decoded JSON value; python-nftables has no type hints to offer anything better
Batch = list[dict[str, Json]]

# The template lives beside the package in the source tree (control/clearip/fastpath/ ->
# the repository root -> nft/), like the eBPF C source in bpf/.
TEMPLATE = Path(__file__).resolve().parents[3] / "nft" / "clearip.nft.json.in"
FAMILY = "inet"  # one table for IPv4 and IPv6
TRUSTED_SETS = {4: "trusted4", 6: "trusted6"}
PINHOLE_SETS = {4: "pinhole4", 6: "pinhole6"}
COUNTERS = ("passed", "passed_pinhole", "passed_reply", "dropped_untrusted")
# The schema version the template and the commands below were written against; nft refuses a
# batch declaring a version it does not know instead of misreading it.
JSON_SCHEMA_VERSION = 1
# Same rule as config's fastpath.name: a valid nft table name and a /sys/fs/bpf directory.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_PLACEHOLDER_RE = re.compile(r"\$\{([A-Z0-9_]+)\}")
_ERROR_LINE_MAX = 400  # characters of one batch command shown in an error (sets can be huge)


class NftError(RuntimeError):
    """nft refused a batch, or the input could not be turned into one.

    ``str()`` starts with one line saying what failed (for ``clearipctl``'s one-line errors);
    the following lines show nft's own error text and the batch, numbered as nft counts.
    ``nft_error`` and ``batch`` hold them in full (``batch`` is None when nothing was sent).
    """

    def __init__(self, message: str, *, nft_error: str = "", batch: Batch | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.nft_error = nft_error
        self.batch = batch

    def __str__(self) -> str:
        lines = [self.message]
        if self.nft_error:
            lines += ["nft said:", *("  " + ln for ln in self.nft_error.splitlines())]
        if self.batch is not None:
            lines.append("batch (index: command):")
            for i, cmd in enumerate(self.batch):
                text = json.dumps(cmd, separators=(",", ":"))
                if len(text) > _ERROR_LINE_MAX:
                    text = f"{text[:_ERROR_LINE_MAX]}... (+{len(text) - _ERROR_LINE_MAX} chars)"
                lines.append(f"  [{i}] {text}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- input checks


def normalise_sources(cidrs: Iterable[str | IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    """(IPv4, IPv6) networks from CIDRs or bare addresses, collapsed; NftError on bad input.

    Checked here, before any batch is made, for two reasons: nft resolves a set element that is
    not an address as a host name (a DNS lookup from the kernel-facing path, or a wrong but
    resolvable name silently trusted), and an interval set refuses overlapping elements. So
    overlapping or adjacent networks ("10.0.0.0/8" + "10.1.0.0/16") are collapsed into the
    fewest covering prefixes, which is exactly the same set of addresses. A network with host
    bits set ("10.0.0.1/8") is refused, not "repaired": it is the same rule as `trust.py`.
    """
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for item in cidrs:
        try:
            net = normal_network(item if isinstance(item, str | IPNetwork) else str(item))
        except (TrustError, TypeError) as exc:
            raise NftError(f"bad trusted source {item!r}: {exc}") from exc
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        else:
            v6.append(net)
    return list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))


def pinhole_address(ip: str | IPAddress) -> IPAddress:
    """The address a pinhole is for; an IPv4-mapped IPv6 address means its IPv4 address.

    A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d, but their packets reach the
    input hook as IPv4, so that is the set the address must go in.
    """
    addr = normal_address(str(ip))
    if addr is None:
        raise NftError(f"bad pinhole address {ip!r}: not an IP address")
    return addr


def pinhole_seconds(ttl_s: float) -> int:
    """`ttl_s` rounded UP to whole seconds (at least 1): what the nft JSON element takes.

    nft's JSON parser reads an element's "timeout" as an integer of seconds and silently
    ignores any other type -- a float would make a pinhole that never expires. Rounding up
    keeps a pinhole open at least as long as asked.
    """
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not math.isfinite(ttl_s):
        raise NftError(f"bad pinhole lifetime {ttl_s!r}: a finite number of seconds")
    if ttl_s <= 0:
        raise NftError(f"bad pinhole lifetime {ttl_s!r}: must be > 0")
    return max(1, math.ceil(ttl_s))


def _ports(kind: str, ports: Iterable[int]) -> list[int]:
    out = set()
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise NftError(f"bad {kind} SIP port {p!r}: an integer 1-65535")
        out.add(p)
    return sorted(out)


def _element(net: IPNetwork) -> Json:
    """One interval-set element, in the form `nft -j` lists it (so lists compare equal)."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


# ---------------------------------------------------------------------- the template


def fill_template(node: Json, values: dict[str, Json]) -> Json:
    """A copy of `node` with each string that is exactly ``${KEY}`` replaced by values[KEY].

    Whole strings only, never text inside a string, so a value keeps its JSON type (a list
    of ports stays a list) and nothing can be injected into nft's syntax. An "elem" that
    comes out empty is left out: nft refuses ``"elem": []`` ("Invalid set elem expression").
    """
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            filled = fill_template(value, values)
            if key == "elem" and filled == []:
                continue
            out[key] = filled
        return out
    if isinstance(node, list):
        return [fill_template(v, values) for v in node]
    if isinstance(node, str):
        m = _PLACEHOLDER_RE.fullmatch(node)
        if m:
            if m.group(1) not in values:
                raise NftError(f"nft template: no value for {node}")
            return copy.deepcopy(values[m.group(1)])
        if _PLACEHOLDER_RE.search(node):
            raise NftError(f"nft template: placeholder inside a string: {node!r}")
    return node


def read_template(path: Path = TEMPLATE) -> list[dict[str, Json]]:
    """The template's object list (``"nftables"``); NftError when missing or malformed."""
    try:
        doc = json.loads(path.read_text())
        objects = doc["nftables"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NftError(f"nft template {path} unreadable: {exc}") from exc
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise NftError(f"nft template {path}: 'nftables' must be a list of objects")
    return objects


# ---------------------------------------------------------------------- the table


class NftFastPath:
    """Table ``inet <name>``: accepts trusted and pinholed sources on the SIP ports, counts
    and drops every other packet to those ports, and leaves all other traffic alone.

    Not loaded by construction: call load(). Safe to call from several threads (one lock
    around the nft context, which is not thread-safe).
    """

    def __init__(
        self,
        name: str = "clearip",
        udp_ports: Sequence[int] = (),
        tcp_ports: Sequence[int] = (),
        reply_ports: Sequence[int] = (),
        *,
        template: Path = TEMPLATE,
    ) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise NftError(f"bad table name {name!r}: a letter, then letters, digits, _ or -")
        self.name = name
        self.udp_ports = _ports("UDP", udp_ports)
        self.tcp_ports = _ports("TCP", tcp_ports)
        # the relay workers' own UDP ports: answers to what they send come here (SPEC §5)
        self.reply_ports = _ports("UDP reply", reply_ports)
        if set(self.reply_ports) & set(self.udp_ports):
            raise NftError(f"UDP ports {self.udp_ports} and reply ports {self.reply_ports} overlap")
        self.template_path = template
        self._template = read_template(template)  # read once: fail at start, not at load
        # What the kernel holds after our last successful batch (load or set_trusted).
        self.trusted: tuple[IPNetwork, ...] = ()
        self._lock = threading.Lock()
        self._ctx: Any = None  # nftables.Nftables, made on first use

    def __repr__(self) -> str:
        return (
            f"NftFastPath({self.name!r}, udp={self.udp_ports}, tcp={self.tcp_ports}, "
            f"reply={self.reply_ports})"
        )

    # ------------------------------------------------------------------ batches
    def _table(self) -> dict[str, str]:
        return {"family": FAMILY, "name": self.name}

    def _set(self, name: str) -> dict[str, str]:
        return {"family": FAMILY, "table": self.name, "name": name}

    def load_batch(self, trusted: Iterable[str | IPNetwork]) -> Batch:
        """The batch load() sends: replace our table with the filled template."""
        v4, v6 = normalise_sources(trusted)
        objects = fill_template(
            self._template,
            {
                "NAME": self.name,
                "UDP_PORTS": self.udp_ports,
                "TCP_PORTS": self.tcp_ports,
                "REPLY_PORTS": self.reply_ports,
                "TRUSTED4": [_element(n) for n in v4],
                "TRUSTED6": [_element(n) for n in v6],
            },
        )
        tables = [o["table"] for o in objects if "table" in o]
        if tables != [self._table()]:
            # unload() and exists() name inet <name>: the template must make that one table
            raise NftError(
                f"nft template {self.template_path}: must define exactly the table "
                f"{self._table()}, found {tables}"
            )
        # add + delete + (template's) add: drops an old table of ours whether or not one
        # exists, within the same transaction -- there is no "delete if exists" in nft 1.0.6.
        return [
            {"add": {"table": self._table()}},
            {"delete": {"table": self._table()}},
            *({"add": obj} for obj in objects),
        ]

    def trusted_batch(self, cidrs: Iterable[str | IPNetwork]) -> Batch:
        """The batch set_trusted() sends: flush both trusted sets, add the new elements."""
        batch: Batch = []
        for version, nets in zip((4, 6), normalise_sources(cidrs), strict=True):
            name = TRUSTED_SETS[version]
            batch.append({"flush": {"set": self._set(name)}})
            if nets:  # nft refuses an empty element list
                elems = [_element(n) for n in nets]
                batch.append({"add": {"element": {**self._set(name), "elem": elems}}})
        return batch

    # ------------------------------------------------------------------ operations
    def load(self, trusted: Iterable[str | IPNetwork]) -> None:
        """(Re)creates the table with these trusted sources: one atomic batch.

        A table of ours from before (a crashed run, a reload) is replaced, with its pinholes
        and counters; nothing else is touched. To change only the trusted list, keeping
        pinholes and counters, use set_trusted().
        """
        nets = self._flat(trusted)
        self._run(self.load_batch(nets), f"load of table {FAMILY} {self.name}")
        self.trusted = tuple(nets)

    def check(self, trusted: Iterable[str | IPNetwork] = ()) -> None:
        """Dry run of load(): nft parses and evaluates the batch, the kernel gets nothing.

        For `clearipctl check`: proves python-nftables, libnftables and the template agree.
        """
        batch = self.load_batch(trusted)
        with self._lock:
            ctx = self._context()
            ctx.set_dry_run(True)
            try:
                self._run_locked(batch, f"check (dry run) of table {FAMILY} {self.name}")
            finally:
                ctx.set_dry_run(False)

    def set_trusted(self, cidrs: Iterable[str | IPNetwork]) -> None:
        """Replaces the contents of trusted4 and trusted6 in one batch.

        Packets see either the old list or the new one, never an empty set in between; on
        any error (a bad CIDR, nft refusing) the old list stays in force.
        """
        nets = self._flat(cidrs)
        self._run(self.trusted_batch(nets), f"update of the trusted sets of {self.name}")
        self.trusted = tuple(nets)

    def add_pinhole(self, ip: str | IPAddress, ttl_s: float) -> None:
        """Admits `ip` to the SIP ports for `ttl_s` seconds (rounded up to whole seconds).

        The pinhole's expiry is set to now + ttl_s, replacing any earlier one (shorter or
        longer): the relay owns the lifetime of what it opens. The kernel removes the element
        when it expires; remove_pinhole() closes it early.
        """
        self.add_pinholes([ip], ttl_s)

    def add_pinholes(self, ips: Iterable[str | IPAddress], ttl_s: float) -> None:
        """add_pinhole() for many addresses in one batch: how the supervisor re-arms them."""
        addrs = list(dict.fromkeys(pinhole_address(ip) for ip in ips))
        if not addrs:
            return
        secs = pinhole_seconds(ttl_s)
        batch: Batch = []
        for version in (4, 6):
            vals = [str(a) for a in addrs if a.version == version]
            if not vals:
                continue
            target = self._set(PINHOLE_SETS[version])
            timed = {**target, "elem": [{"elem": {"val": v, "timeout": secs}} for v in vals]}
            plain = {**target, "elem": vals}
            # add + delete + add: on kernels without element timeout updates (Debian 12's
            # 6.1) re-adding an existing element keeps its old timeout, so it is re-created.
            batch += [{"add": {"element": timed}}, {"delete": {"element": plain}}]
            batch.append({"add": {"element": timed}})
        what = f"pinhole for {addrs[0]}" if len(addrs) == 1 else f"{len(addrs)} pinholes"
        self._run(batch, f"{what} in {self.name}")

    def remove_pinhole(self, ip: str | IPAddress) -> None:
        """Closes the pinhole for `ip`; no error if there is none (it may have expired)."""
        addr = pinhole_address(ip)
        target = self._set(PINHOLE_SETS[addr.version])
        # add (short-lived, in case it has just expired) + delete: deleting an absent element
        # is an error in nft, and there is no "destroy" before nft 1.0.8 / Linux 6.3.
        timed = {**target, "elem": [{"elem": {"val": str(addr), "timeout": 1}}]}
        plain = {**target, "elem": [str(addr)]}
        self._run(
            [{"add": {"element": timed}}, {"delete": {"element": plain}}],
            f"pinhole removal for {addr} in {self.name}",
        )

    def pinholes(self) -> dict[str, int]:
        """Open pinholes: address -> seconds left (as nft reports, whole seconds)."""
        out: dict[str, int] = {}
        for name in PINHOLE_SETS.values():
            listed = self._run([{"list": {"set": self._set(name)}}], f"listing of set {name}")
            for obj in _objects(listed, "set"):
                for elem in obj.get("elem", []):
                    if isinstance(elem, dict) and "elem" in elem:
                        out[str(elem["elem"]["val"])] = int(elem["elem"].get("expires", 0))
                    else:  # no timeout: only if someone added one by hand
                        out[str(elem)] = 0
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        """Named counters of the table: {"passed": {"packets": P, "bytes": B}, ...}."""
        listed = self._run(
            [{"list": {"counters": {"family": FAMILY, "table": self.name}}}],
            f"listing of the counters of {self.name}",
        )
        return {
            str(c["name"]): {"packets": int(c["packets"]), "bytes": int(c["bytes"])}
            for c in _objects(listed, "counter")
            if c.get("table") == self.name and c.get("family") == FAMILY
        }

    def unload(self) -> None:
        """Deletes the table (sets, counters, chains with it); no error when it is absent."""
        self._run(
            [{"add": {"table": self._table()}}, {"delete": {"table": self._table()}}],
            f"removal of table {FAMILY} {self.name}",
        )
        self.trusted = ()

    def exists(self) -> bool:
        """True when table ``inet <name>`` is in the kernel (of this network namespace)."""
        listed = self._run([{"list": {"tables": {"family": FAMILY}}}], "listing of tables")
        return any(t.get("name") == self.name for t in _objects(listed, "table"))

    # ------------------------------------------------------------------ the one nft call
    @staticmethod
    def _flat(cidrs: Iterable[str | IPNetwork]) -> list[IPNetwork]:
        v4, v6 = normalise_sources(cidrs)
        return [*v4, *v6]

    def _context(self) -> Any:
        if self._ctx is None:
            try:
                import nftables  # Debian python3-nftables; not on PyPI
            except ImportError as exc:
                raise NftError(
                    "python-nftables is not installed (apt install python3-nftables)"
                ) from exc
            try:
                self._ctx = nftables.Nftables()
            except OSError as exc:  # libnftables.so.1 missing or unloadable
                raise NftError(f"libnftables unusable: {exc} (apt install nftables)") from exc
        return self._ctx

    def _run(self, commands: Batch, what: str) -> Json:
        with self._lock:
            return self._run_locked(commands, what)

    def _run_locked(self, commands: Batch, what: str) -> Json:
        """Sends `commands` as one batch (one transaction); its output, or NftError."""
        batch: Batch = [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}}, *commands]
        try:
            rc, output, error = self._context().json_cmd({"nftables": batch})
        except (OSError, ValueError) as exc:  # e.g. unparsable output
            raise NftError(f"nft {what} failed: {exc}", batch=batch) from exc
        if rc != 0:
            err = (error or "").strip()
            first = next((ln for ln in err.splitlines() if ln.strip()), f"exit status {rc}")
            first = first.removeprefix("internal:0:0-0: ")  # JSON input has no useful place
            raise NftError(f"nft {what} failed: {first}", nft_error=err, batch=batch)
        return output


def _objects(listed: Json, kind: str) -> list[dict[str, Json]]:
    """The `kind` objects ("set", "counter", "table") of a `list` command's output."""
    items = listed.get("nftables", []) if isinstance(listed, dict) else []
    return [item[kind] for item in items if isinstance(item, dict) and kind in item]
