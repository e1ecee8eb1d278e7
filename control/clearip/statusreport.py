"""The status report: the workers' `stats` replies merged into SPEC §6's `status` (pure
functions, no I/O), and the `status --json` contract a client prints. Its own module so that
`clearipctl status` and the metrics need neither the supervisor nor its imports."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from clearip import trust
from clearip.config import Config
from clearip.relay.counters import COUNTER_NAMES, DROP_REASONS, SOURCE_COUNTER_NAMES

__all__ = [
    "ADDED_STATUS_KEYS",
    "KERNEL_COUNTER_NAMES",
    "OWN_KEYS",
    "STATUS_KEYS",
    "aggregate_stats",
    "fastpath_placeholder",
    "int_count",
    "status_contract",
    "trust_check",
]

# SPEC §6 `status --json`: top-level keys, then every counter, always present even when 0.
STATUS_KEYS = ("version", "uptime_s", "listeners", "upstream", "fastpath", "counters", "sources")
# Keys added to the contract since (§6: more keys may be added, none renamed): what the relay
# dropped by reason, the workers, and the sizes of their tables (for leak watching).
ADDED_STATUS_KEYS = (
    "drops",
    "workers",
    "workers_restarted",
    "calls_lost",
    "transactions",
    "overload",
    "steering",
    "handoff",
    "build",
)
KERNEL_COUNTER_NAMES = (
    "passed_pkts",
    "passed_bytes",
    "dropped_untrusted_pkts",
    "dropped_nonsip_pkts",
)


def fastpath_placeholder(config: Config) -> dict[str, Any]:
    """Before the fast-path manager has run (the first moments of start-up)."""
    if config.fastpath.enabled == "off":
        reason = "disabled in the config (fastpath.enabled = false)"
    else:
        reason = "not loaded yet: the proxy is starting"
    return {"enabled": False, "reason": reason, "interfaces": []}


def int_count(value: object) -> int:
    # bool is an int in Python, but a counter that says `true` is a worker bug, not 1.
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _merge_upstream(stats: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    links = [s.get("upstream") for s in stats]
    links = [u for u in links if isinstance(u, dict)]
    states = [u.get("state") for u in links]
    # Every worker has its own link to ClearIP: "connected" only when all of them are.
    if states and all(state == "connected" for state in states):
        state = "connected"
    elif any(state in ("connected", "connecting") for state in states):
        state = "connecting"
    else:
        state = "down"
    transport = next((u["transport"] for u in links if u.get("transport")), None)
    tls_version = next(
        (u["tls_version"] for u in links if u.get("state") == "connected" and u.get("tls_version")),
        None,
    )
    rtts = [r for r in (_number(u.get("rtt_ms")) for u in links) if r is not None]
    return {
        "state": state,
        "transport": transport or config.clearip.transport,
        "tls_version": tls_version,
        "rtt_ms": max(rtts) if rtts else None,  # worst of the workers: what a call may see
    }


def trust_check(config: Config) -> Callable[[str], bool]:
    try:
        networks = [e.cidr for e in trust.entries(config.trust.sources, config.control.state_dir)]
    except (OSError, ValueError, KeyError):
        networks = list(config.trust.sources)  # an unreadable state file: the config's part

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in networks)

    return trusted


# Keys of a worker's stats reply merged field by field below; any other table of numbers is
# merged generically, so a worker can report more without a supervisor change.
OWN_KEYS = frozenset({"counters", "sources", "listeners", "upstream"})
_WORST_OF = frozenset({"latency", "clearip_rtt_ms", "overload"})


def aggregate_stats(stats: Iterable[Mapping[str, Any]], config: Config) -> dict[str, Any]:
    """Merge the workers' `stats` into the §6 `listeners`, `upstream`, `counters`, `sources`,
    plus each other table the workers report (`latency`: worst of; anything else: summed).
    Counts are summed because each worker counts only what the kernel handed to it."""
    replies = [dict(s) for s in stats if isinstance(s, Mapping)]
    counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
    per_source: dict[str, dict[str, int]] = {}
    listeners: list[dict[str, Any]] = []
    seen_listeners: set[tuple[Any, Any]] = set()
    extra: dict[str, dict[str, float]] = {}
    for reply in replies:
        for name, value in (reply.get("counters") or {}).items():
            counters[str(name)] = counters.get(str(name), 0) + int_count(value)
        for address, counts in (reply.get("sources") or {}).items():
            if not isinstance(counts, Mapping):
                continue
            entry = per_source.setdefault(str(address), dict.fromkeys(SOURCE_COUNTER_NAMES, 0))
            for name, value in counts.items():  # a worker creates a key when it first counts it
                entry[str(name)] = entry.get(str(name), 0) + int_count(value)
        for listener in reply.get("listeners") or ():
            if not isinstance(listener, Mapping):
                continue
            key = (listener.get("transport"), listener.get("address"))
            if key not in seen_listeners:  # every worker binds the same addresses
                seen_listeners.add(key)
                listeners.append({"transport": key[0], "address": key[1]})
        for key, table in reply.items():
            if key in OWN_KEYS or not isinstance(table, Mapping):
                continue
            merged = extra.setdefault(str(key), {})
            for name, value in table.items():
                number = _number(value)
                if number is None:
                    continue
                if key in _WORST_OF:
                    # Percentiles from separate workers cannot be combined exactly; the worst
                    # one is the honest upper bound.
                    merged[str(name)] = max(merged.get(str(name), number), number)
                else:  # a table of counts (final codes sent, attestation mix, ...): summed
                    merged[str(name)] = merged.get(str(name), 0) + int_count(value)
    trusted = trust_check(config)
    sources = [
        {
            "address": address,
            "trusted": trusted(address),
            # filled from the eBPF per-source map by Supervisor._with_kernel_counters; zeros
            # when the fast path is off
            "kernel": dict.fromkeys(KERNEL_COUNTER_NAMES, 0),
            "sip": counts,
        }
        for address, counts in sorted(
            per_source.items(), key=lambda item: (-item[1]["messages_in"], item[0])
        )
    ]
    return {
        "listeners": listeners,
        "upstream": _merge_upstream(replies, config),
        "counters": counters,
        "sources": sources,
        **extra,
    }


def status_contract(status: Mapping[str, Any]) -> dict[str, Any]:
    """The §6 `status --json` keys, in order, every counter present, then ADDED_STATUS_KEYS."""
    out = {key: status.get(key) for key in STATUS_KEYS}
    counters: dict[str, Any] = dict.fromkeys(COUNTER_NAMES, 0)
    counters.update(status.get("counters") or {})
    out["counters"] = counters
    # every per-source counter too, even from a proxy older than this client
    out["sources"] = [
        {
            **source,
            "kernel": {**dict.fromkeys(KERNEL_COUNTER_NAMES, 0), **(source.get("kernel") or {})},
            "sip": {**dict.fromkeys(SOURCE_COUNTER_NAMES, 0), **(source.get("sip") or {})},
        }
        for source in status.get("sources") or []
        if isinstance(source, Mapping)
    ]
    out["listeners"] = list(status.get("listeners") or [])
    out["drops"] = {**dict.fromkeys(DROP_REASONS, 0), **(status.get("drops") or {})}
    out["workers"] = list(status.get("workers") or [])
    out["workers_restarted"] = status.get("workers_restarted") or 0
    out["calls_lost"] = status.get("calls_lost") or 0
    out["transactions"] = dict(status.get("transactions") or {})
    # the worst worker's: active (1 while a worker refuses calls), admitted_per_s, lag_ms
    out["overload"] = dict(status.get("overload") or {})
    # how datagrams reach their call's worker: mode "ebpf" (the kernel steers by Call-ID),
    # "handoff" (the program did not load) or "off" (one worker, or relay.steering = off)
    out["steering"] = dict(status.get("steering") or {"mode": "off", "reason": ""})
    out["handoff"] = {"sent": 0, "local": 0, **(status.get("handoff") or {})}
    # the hot path's build: "compiled" (mypyc) or "pure", and why (clearip.build)
    out["build"] = {"build": "pure", "detail": "not reported", **(status.get("build") or {})}
    return out
