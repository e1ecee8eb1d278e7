"""`clearipctl`: the one entry point for running and operating the proxy (SPEC §2).

Each sub-command is a small function registered in `COMMANDS` with its help and arguments.
Every one takes `--config FILE`, which is how it finds the control socket. Exit status is 0 on
success; on failure it is non-zero and stderr gets one line saying what went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clearip import __version__, build, capture, top, trust
from clearip.cmdutil import CommandError, control_request, duration, load
from clearip.config import DEFAULT_CONFIG_PATH, ConfigError
from clearip.ctlsock import ControlError, NotRunning, request

RELOAD_REQUEST_TIMEOUT = 30.0  # the supervisor waits up to 10 s per worker


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


# ---------------------------------------------------------------------------------------------
# run


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the other commands do not need the supervisor's imports.
    from clearip.logsetup import setup_logging
    from clearip.supervisor import Supervisor

    path, config = load(args)
    setup_logging(config.control.log_level)
    # The plain asyncio loop, not uvloop: pyroute2 (fast path) runs in this process.
    return asyncio.run(Supervisor(path, config).run())


# ---------------------------------------------------------------------------------------------
# status


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the SPEC §6 JSON contract, for scripts"
    )


def cmd_status(args: argparse.Namespace) -> int:
    from clearip.statusreport import status_contract

    status = control_request(args, "status")
    if not isinstance(status, dict):
        raise CommandError("bad reply from the proxy: status is not an object")
    if args.json:
        print(json.dumps(status_contract(status), indent=2))
    else:
        print(format_status(status))
    return 0


def _upstream_line(upstream: Mapping[str, Any]) -> str:
    details = [str(upstream.get("transport") or "?")]
    if upstream.get("tls_version"):
        details.append(str(upstream["tls_version"]))
    if isinstance(upstream.get("rtt_ms"), int | float):
        details.append(f"rtt {upstream['rtt_ms']:.1f} ms")
    return f"{upstream.get('state', '?')} ({', '.join(details)})"


SOURCES_SHOWN = 10


def _build_line(status: Mapping[str, Any]) -> str:
    built = status.get("build") or {}
    return f"{built.get('build', '?')} build ({built.get('detail') or 'not reported'})"


def _steering_line(status: Mapping[str, Any]) -> str:
    steering = status.get("steering") or {}
    sent = (status.get("handoff") or {}).get("sent", 0)
    mode = steering.get("mode") or "off"
    if mode == "ebpf":
        said = "in the kernel (Call-ID)"
    elif mode == "handoff":
        said = f"by hand-off: the program did not load ({steering.get('reason') or '?'})"
    else:
        said = f"off ({steering.get('reason') or 'relay.steering = off'})"
    return f"{said}, {sent:,} messages handed between workers"


def format_status(status: Mapping[str, Any]) -> str:
    """The human summary of a status reply."""
    workers = status.get("workers") or []
    alive = sum(1 for w in workers if w.get("alive"))
    fastpath = status.get("fastpath") or {}
    if fastpath.get("enabled"):
        fast = "on (" + (", ".join(fastpath.get("interfaces") or []) or "all interfaces") + ")"
    else:
        fast = f"off: {fastpath.get('reason') or 'no reason given'}"
    listeners = ", ".join(
        f"{item.get('transport')} {item.get('address')}" for item in status.get("listeners") or []
    )
    lines = [
        f"ClearIP In-Line Proxy {status.get('version', '?')}, "
        f"up {duration(float(status.get('uptime_s') or 0))}",
        f"  workers    {alive}/{len(workers)} running, "
        f"{status.get('workers_restarted', 0)} restarted",
        f"  upstream   {_upstream_line(status.get('upstream') or {})}",
        f"  fast path  {fast}",
        f"  steering   {_steering_line(status)}",
        f"  build      {_build_line(status)}",
        f"  listeners  {listeners or 'none'}",
    ]
    overload = status.get("overload") or {}
    if overload.get("active"):
        lines.append(
            f"  overload   BEHIND: new calls beyond {overload.get('admitted_per_s', 0):,.0f}/s "
            f"get 503 (lag {overload.get('lag_ms', 0):.0f} ms)"
        )
    lines += ["", "counters"]
    counters = status.get("counters") or {}
    width = max((len(name) for name in counters), default=0)
    lines += [f"  {name:<{width}}  {value:>12,}" for name, value in counters.items()]
    sources = status.get("sources") or []
    if sources:
        shown = sources[:SOURCES_SHOWN]
        more = f", busiest {len(shown)} shown" if len(sources) > len(shown) else ""
        lines += ["", f"sources ({len(sources)}{more}; clearipctl top for the live view)"]
        lines.append(
            f"  {'address':<40} {'trusted':<8} {'messages_in':>12} {'invites':>10} "
            f"{'302':>10} {'active':>8}"
        )
        for source in shown:
            sip = source.get("sip") or {}
            lines.append(
                f"  {source.get('address', '?'):<40} "
                f"{'yes' if source.get('trusted') else 'no':<8} "
                f"{sip.get('messages_in', 0):>12,} {sip.get('invites', 0):>10,} "
                f"{sip.get('clearip_302', 0):>10,} {sip.get('calls_active', 0):>8,}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# reload


def cmd_reload(args: argparse.Namespace) -> int:
    result = control_request(args, "reload", timeout=RELOAD_REQUEST_TIMEOUT)
    if not isinstance(result, dict):
        raise CommandError("bad reply from the proxy: reload result is not an object")
    source = result.get("config") or "built-in defaults"
    print(f"reloaded {source} into {result.get('workers', 0)} relay workers")
    return 0


# ---------------------------------------------------------------------------------------------
# allow / deny / trusted: through the running proxy (all enforcers at once), or, when it is
# stopped, in the state file it restores the list from at start (SPEC §2, §5).


def _cidr_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cidr", metavar="CIDR", help="an address (= /32 or /128) or a CIDR")


def _allow_arguments(parser: argparse.ArgumentParser) -> None:
    _cidr_arguments(parser)
    parser.add_argument("--note", default="", help="who or what this is, shown by `trusted`")


def _trust_change(args: argparse.Namespace, op: str) -> int:
    _path, config = load(args)
    try:
        cidr = trust.parse_cidr(args.cidr)
        try:
            result = request(
                config.control.socket, op, cidr=str(cidr), note=getattr(args, "note", "")
            )
            where = "applied to the running proxy (nftables, eBPF, relay) and saved"
        except NotRunning:
            current = trust.entries(config.trust.sources, config.control.state_dir)
            if op == "allow":
                new = trust.with_added(current, cidr, args.note)
            else:
                new = trust.without(current, cidr)
            trust.save_state(config.control.state_dir, new)
            result = {"cidr": str(cidr)}
            where = "saved; the proxy is stopped and applies it when it starts"
    except trust.TrustError as e:
        raise CommandError(str(e)) from None
    verb = "trusted" if op == "allow" else "no longer trusted"
    print(f"{verb}: {result['cidr']} ({where})")
    return 0


def cmd_allow(args: argparse.Namespace) -> int:
    return _trust_change(args, "allow")


def cmd_deny(args: argparse.Namespace) -> int:
    return _trust_change(args, "deny")


def _trusted_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


def cmd_trusted(args: argparse.Namespace) -> int:
    _path, config = load(args)
    counters: dict[str, dict[str, Any]] = {}
    try:
        entries = request(config.control.socket, "trusted")["entries"]
        status = request(config.control.socket, "status")
        sources = status.get("sources", [])
    except NotRunning:
        entries = trust.as_json(trust.entries(config.trust.sources, config.control.state_dir))
        sources = []
    for entry in entries:
        counters[entry["cidr"]] = _sum_sources(entry["cidr"], sources)
    if args.json:
        print(json.dumps([{**e, "counters": counters[e["cidr"]]} for e in entries], indent=2))
        return 0
    if not entries:
        print("no trusted sources: every SIP request is refused (add one with `clearipctl allow`)")
        return 0
    print(
        f"{'cidr':<24} {'origin':<7} {'messages':>9} {'invites':>8} "
        f"{'kernel pass':>11} {'kernel drop':>11}  note"
    )
    for e in entries:
        c = counters[e["cidr"]]
        print(
            f"{e['cidr']:<24} {e['origin']:<7} {c['messages_in']:>9} {c['invites']:>8} "
            f"{c['passed_pkts']:>11} {c['dropped_pkts']:>11}  {e['note']}"
        )
    return 0


def _sum_sources(cidr: str, sources: list[dict[str, Any]]) -> dict[str, int]:
    """The per-source counters of the addresses inside `cidr` (zeros when stopped)."""
    net = ipaddress.ip_network(cidr)
    total = {"messages_in": 0, "invites": 0, "passed_pkts": 0, "dropped_pkts": 0}
    for src in sources:
        try:
            if ipaddress.ip_address(src["address"]) not in net:
                continue
        except (KeyError, ValueError, TypeError):
            continue
        sip, kernel = src.get("sip", {}), src.get("kernel", {})
        total["messages_in"] += int(sip.get("messages_in", 0))
        total["invites"] += int(sip.get("invites", 0))
        total["passed_pkts"] += int(kernel.get("passed_pkts", 0))
        total["dropped_pkts"] += int(kernel.get("dropped_nonsip_pkts", 0))
    return total


# ---------------------------------------------------------------------------------------------
# check


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list, for scripts")
    parser.add_argument(
        "--no-network", action="store_true", help="skip the ClearIP DNS, TCP and TLS checks"
    )


def cmd_check(args: argparse.Namespace) -> int:
    from clearip import checks

    try:
        path, config = load(args)
    except ConfigError as e:
        results = [checks.config_failure(args.config or DEFAULT_CONFIG_PATH, e)]
    else:
        results = checks.run_checks(path, config, network=not args.no_network)
    print(checks.format_json(results) if args.json else checks.format_checklist(results))
    return 1 if checks.failed(results) else 0


# ---------------------------------------------------------------------------------------------
# The table. Other SPEC §2 commands (check, allow, deny, trusted, top, capture) join here.

COMMANDS: tuple[Command, ...] = (
    Command("run", "run the proxy in the foreground (what systemd starts)", cmd_run),
    Command(
        "status",
        "show the upstream link, fast path, listeners and counters",
        cmd_status,
        _status_arguments,
    ),
    Command("reload", "re-read the config without dropping calls in progress", cmd_reload),
    Command(
        "allow",
        "trust a source: saved, and applied live to nftables, the eBPF map and the relay",
        cmd_allow,
        _allow_arguments,
    ),
    Command("deny", "stop trusting a source (the same way as allow)", cmd_deny, _cidr_arguments),
    Command(
        "trusted",
        "list the trusted sources with their counters",
        cmd_trusted,
        _trusted_arguments,
    ),
    Command(
        "check",
        "validate the config and this host: ports, privileges, fast path, ClearIP link",
        cmd_check,
        _check_arguments,
    ),
    Command(
        "top",
        "live full-screen table of the sources: rates, INVITEs, verdicts, drops (q quits)",
        top.run,
        top.add_arguments,
    ),
    Command(
        "capture",
        "tcpdump-style SIP capture, live or from a pcap; --decrypted shows the TLS legs",
        capture.run,
        capture.add_arguments,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clearipctl",
        description="ClearIP In-Line Proxy: run the SIP relay and operate its fast path.",
    )
    parser.add_argument(
        "--version", action="version", version=f"clearipctl {__version__}, {build.describe()}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        sub_parser.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help=f"TOML config (default {DEFAULT_CONFIG_PATH}; "
            "built-in defaults if that is absent)",
        )
        command.arguments(sub_parser)
        sub_parser.set_defaults(handler=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
    except (ControlError, CommandError) as e:
        print(str(e), file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `clearipctl status | head`: not an error
        # Python would report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
