"""The fast path's tc filters and netlink: find, list and remove filters, watch for changes.

The netlink half of the fast path (pyroute2): which interfaces to filter
(``attach_candidates``), our filters at ``TC_PRIO`` on tc ingress and how to delete them, a
socket told of link and tc changes (``NetlinkEvents``), and ``remove_all``, which cleans what
a crashed run left. The loader (``bpf.BpfFastPath``) adds and replaces filters with these;
separate from it because none of this needs bcc, and from the maps because reading the maps
needs no pyroute2.

pyroute2 0.9's sync ``IPRoute`` runs an event loop of its own and refuses to start inside a
running one; every netlink call here therefore runs on a short-lived worker thread when this
thread has a running asyncio loop (see ``netlink``), so the supervisor may call ``attach()`` or
``detach()`` from a coroutine (it blocks the loop for the few milliseconds netlink takes).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from clearip.fastpath.maps import DEFAULT_PIN_ROOT, fstype, pin_dir, unpin_dir

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = ["TC_PRIO", "attach_candidates", "remove_all"]

T = TypeVar("T")

# tc placement. Priority 5060 (easy to spot in `tc filter show`) sits below the 49152 the
# kernel gives filters added without a priority, so ours runs before those. The handle is
# derived from fastpath.name, so two instances with different names can share an interface,
# and a restart with the same name lands on the same (prio, handle) and REPLACES the filter.
TC_PRIO = 5060
CLSACT_INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS): `tc ... ingress`
CLSACT_EGRESS = 0xFFFFFFF3
ETH_P_ALL = 0x0003

# ---------------------------------------------------------------------------------------------
# netlink (pyroute2)


def netlink(fn: Callable[[IPRoute], T]) -> T:
    """Runs `fn(ipr)` with a sync pyroute2 IPRoute of its own, in this network namespace.

    pyroute2 0.9's sync API drives a private asyncio loop and fails inside a running one, so
    when this thread runs a loop the call moves to a worker thread (same netns: namespaces
    are per process). Its loop is a plain SelectorEventLoop even if uvloop is the policy.
    """

    def call() -> T:
        from pyroute2 import IPRoute

        loop = asyncio.SelectorEventLoop()
        try:
            with IPRoute(use_event_loop=loop) as ipr:
                return fn(ipr)
        finally:
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call()
    with ThreadPoolExecutor(1, thread_name_prefix="clearip-netlink") as pool:
        return pool.submit(call).result()


@dataclass(frozen=True, slots=True)
class _Filter:
    handle: int
    name: str  # TCA_BPF_NAME


def ifindex_of(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def ingress_filters(ipr: IPRoute, ifindex: int, parent: int = CLSACT_INGRESS) -> list[Any]:
    """The filter messages on a clsact hook ([] when there is no clsact qdisc)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return [m for m in ipr.get_filters(index=ifindex, parent=parent) if m["handle"] != 0]
    except NetlinkError as exc:
        if exc.code in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
            return []
        raise


def our_prio_filters(ipr: IPRoute, ifindex: int) -> list[_Filter]:
    """bpf filters at TC_PRIO on ingress, whoever made them (handle 0 entries are the chain
    heads the dump lists for each priority, not filters)."""
    out = []
    for msg in ingress_filters(ipr, ifindex):
        if (msg["info"] >> 16) != TC_PRIO or msg.get_attr("TCA_KIND") != "bpf":
            continue
        opts = msg.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
        out.append(_Filter(int(msg["handle"]), name or ""))
    return out


def del_filter(ipr: IPRoute, ifindex: int, handle: int) -> None:
    ipr.tc(
        "del-filter",
        "bpf",
        ifindex,
        handle=handle,
        parent=CLSACT_INGRESS,
        prio=TC_PRIO,
        protocol=ETH_P_ALL,
    )


def tc_handle(name: str) -> int:
    """The tc filter handle of fast path `name` (stable across restarts, never 0)."""
    return zlib.crc32(name.encode()) or 1


def filter_prefix(name: str) -> str:
    return f"clearip:{name}:"


# Masters that receive their ports' frames again as their own (rx_handler -> another round
# of __netif_receive_skb, tc ingress included): their ports are left to them. A VRF or Open
# vSwitch port is not: its packets never pass the master's tc ingress, so it stays a candidate.
_REINJECTING_MASTERS = frozenset({"bond", "team", "bridge"})
_IFF_UP, _IFF_LOOPBACK = 0x1, 0x8


def _link_kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def attach_candidates() -> list[str]:
    """The interfaces to filter when fastpath.interfaces = []: up, not loopback, and not a
    port of a bond, team or bridge (the master judges what they receive, once). A VLAN device
    and its lower device are both candidates: the classifier leaves the lower device's tagged
    frames to the VLAN device."""

    def fn(ipr: IPRoute) -> list[str]:
        links = ipr.get_links()
        kinds = {int(lk["index"]): _link_kind(lk) for lk in links}
        out = []
        for link in links:
            if not link["flags"] & _IFF_UP or link["flags"] & _IFF_LOOPBACK:
                continue
            master = link.get_attr("IFLA_MASTER")
            if master and kinds.get(int(master)) in _REINJECTING_MASTERS:
                continue
            out.append(link.get_attr("IFLA_IFNAME"))
        return out

    return netlink(fn)


_RTMGRP_LINK = 0x1
_RTMGRP_TC = 0x8


class NetlinkEvents:
    """A netlink socket subscribed to this network namespace's link and tc notifications:
    tells reconcile() whether anything may have changed since it last looked, without a
    dump. Non-blocking; a notification lost to a full socket buffer (ENOBUFS) counts as a
    change."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            socket.NETLINK_ROUTE,
        )
        try:
            self._sock.bind((0, _RTMGRP_LINK | _RTMGRP_TC))
        except BaseException:
            self._sock.close()
            raise

    def changed(self) -> bool:
        """Drains what arrived; True if anything did."""
        seen = False
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                seen = True
                continue
            seen = seen or bool(data)

    def close(self) -> None:
        self._sock.close()


def remove_all(
    name: str,
    interfaces: Iterable[str] | None = None,
    pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT,
    *,
    keep_filter: str | None = None,
    filters_only: bool = False,
) -> list[str]:
    """Cleans what a crashed run of fast path `name` left: its tc filters (on `interfaces`, or
    every interface when None) and its pins. Other filters, and clsact, stay. What was removed,
    one line each. `keep_filter` (a filter name) and `filters_only` let a successor that has
    already attached and pinned sweep what its predecessor left elsewhere, without a moment
    with no filter where one was."""
    directory = pin_dir(name, pin_root)
    prefix = filter_prefix(name)
    wanted = None if interfaces is None else list(interfaces)

    def fn(ipr: IPRoute) -> list[str]:
        done = []
        if wanted is None:
            links = [(lk.get_attr("IFLA_IFNAME"), lk["index"]) for lk in ipr.get_links()]
        else:
            links = [(ifname, ifindex_of(ipr, ifname)) for ifname in wanted]
        for ifname, ifindex in links:
            if ifindex is None:
                continue
            for flt in our_prio_filters(ipr, ifindex):
                if flt.name.startswith(prefix) and flt.name != keep_filter:
                    del_filter(ipr, ifindex, flt.handle)
                    done.append(f"{ifname}: tc filter {flt.name} (prio {TC_PRIO})")
        return done

    removed = netlink(fn)
    if not filters_only and fstype(Path(pin_root)) == "bpf":
        removed += [f"pin {p}" for p in unpin_dir(directory)]
    return removed
