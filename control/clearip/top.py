"""`clearipctl top`: a full-screen live table of the proxy's sources, refreshed every second
(SPEC §6), in the manner of bcc's tcptop: read the status, compute rates, sort, draw, repeat.

Everything comes from the control socket's `status` op. `render()` is a pure function of two
snapshots (now and the previous refresh, for the rates), so it is tested without a terminal;
`run()` is the thin loop around it: rich `Live` on the alternate screen, single-key commands read
from the terminal in cbreak mode, and the terminal's mode restored however the loop ends.

rich is imported inside the functions that draw: `clearipctl` imports this module for its
command table, and the other commands should not pay for rich's import.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clearip import trust
from clearip.ctlsock import ControlError, NotRunning, request

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from clearip.config import Config

__all__ = ["SORT_KEYS", "Row", "Snapshot", "add_arguments", "read_snapshot", "render", "run"]

# key -> sort name; the footer lists them in this order
SORT_KEYS = {
    "r": "rate",
    "m": "messages",
    "i": "invites",
    "d": "drops",
    "c": "calls",
    "a": "address",
}
QUIT_KEYS = frozenset("qQ\x03\x04")  # q, Ctrl-C and Ctrl-D in case the terminal sends them raw
DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.1
# rich's own default is 80 columns when stdout is not a terminal: too narrow for the table
PIPE_WIDTH = 132
# from this console width on, each ClearIP verdict gets a column; below, they are grouped
WIDE = 150
# lines the header, the table's head and the footer take in full-screen mode
CHROME_LINES = 16
ATTEST_ORDER = ("A", "B", "C")
VERSTAT_ORDER = ("TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation")
REJECTED = ("clearip_404", "clearip_503", "clearip_603", "clearip_other")
FAILED = ("clearip_timeout", "clearip_unavailable")


@dataclass(frozen=True)
class Snapshot:
    """One read of the proxy: its status reply, or why there is none."""

    at: float  # time.monotonic() when read: rates are deltas over this
    status: Mapping[str, Any] | None  # the supervisor's `status` result
    socket: str = ""  # the control socket path, for the not-running notice
    stopped: bool = False  # nobody serves the control socket
    error: str = ""  # why `status` is None
    trusted: list[Mapping[str, str]] = field(default_factory=list)  # config + state, if stopped


@dataclass(frozen=True)
class Row:
    """One source, its counters flattened, and its rate since the previous snapshot."""

    address: str
    trusted: bool
    rate: float | None  # kernel packets/s (fast path on) or SIP messages/s; None: not known yet
    passed: int
    dropped_untrusted: int
    dropped_nonsip: int
    sip: Mapping[str, int]

    @property
    def drops(self) -> int:
        return self.dropped_untrusted + self.dropped_nonsip

    def count(self, *names: str) -> int:
        return sum(_int(self.sip.get(name)) for name in names)


# ---------------------------------------------------------------------------------------------
# Pure: snapshots -> rows -> a rich renderable


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _table(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seconds(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _kernel_on(status: Mapping[str, Any]) -> bool:
    return bool(_table(status.get("fastpath")).get("enabled"))


def _traffic(source: Mapping[str, Any], kernel: bool) -> int:
    """What the rate counts: every packet the kernel saw from it, else the SIP messages."""
    if kernel:
        k = _table(source.get("kernel"))
        return (
            _int(k.get("passed_pkts"))
            + _int(k.get("dropped_untrusted_pkts"))
            + _int(k.get("dropped_nonsip_pkts"))
        )
    return _int(_table(source.get("sip")).get("messages_in"))


def _comparable(now: Snapshot, previous: Snapshot | None) -> Mapping[str, Any] | None:
    """The previous status if deltas against it mean something (same proxy, time went on)."""
    if previous is None or previous.status is None or now.status is None:
        return None
    if now.at <= previous.at:
        return None
    if _seconds(now.status.get("uptime_s")) < _seconds(previous.status.get("uptime_s")):
        return None  # restarted in between: its counters started again from 0
    return previous.status


def _per_second(now: int, before: int | None, seconds: float) -> float | None:
    if before is None or now < before:  # a restarted worker's counters went back to 0
        return None
    return (now - before) / seconds


def rows(now: Snapshot, previous: Snapshot | None, sort_key: str = "rate") -> list[Row]:
    """The sources of `now`, with rates against `previous`, sorted by `sort_key`."""
    status = now.status or {}
    kernel = _kernel_on(status)
    before = _comparable(now, previous)
    if before is not None and _kernel_on(before) != kernel:
        before = None  # the fast path came or went: packets and messages do not subtract
    seconds = now.at - previous.at if before is not None and previous is not None else 0.0
    old = {
        str(source.get("address")): _traffic(source, kernel)
        for source in (before or {}).get("sources") or ()
        if isinstance(source, Mapping)
    }
    out = []
    for source in status.get("sources") or ():
        if not isinstance(source, Mapping):
            continue
        address = str(source.get("address", "?"))
        k = _table(source.get("kernel"))
        rate = None
        if before is not None:
            # a source absent from the previous status had counted nothing yet
            rate = _per_second(_traffic(source, kernel), old.get(address, 0), seconds)
        out.append(
            Row(
                address=address,
                trusted=bool(source.get("trusted")),
                rate=rate,
                passed=_int(k.get("passed_pkts")),
                dropped_untrusted=_int(k.get("dropped_untrusted_pkts")),
                dropped_nonsip=_int(k.get("dropped_nonsip_pkts")),
                sip={str(n): _int(v) for n, v in _table(source.get("sip")).items()},
            )
        )
    return sort_rows(out, sort_key)


def _address_order(address: str) -> tuple[int, int, str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (1, 0, address)  # "other" (sources past the table's limit) after the addresses
    return (0, ip.version, f"{int(ip):040d}")


def sort_rows(items: list[Row], sort_key: str) -> list[Row]:
    """Largest first (address: in address order); ties in address order."""
    by_address = sorted(items, key=lambda r: _address_order(r.address))
    if sort_key == "address":
        return by_address
    metric = {
        "rate": lambda r: r.rate if r.rate is not None else -1.0,
        "messages": lambda r: float(r.count("messages_in")),
        "invites": lambda r: float(r.count("invites")),
        "drops": lambda r: float(r.drops),
        "calls": lambda r: float(r.count("calls_active")),
    }.get(sort_key)
    if metric is None:
        raise ValueError(f"unknown sort key {sort_key!r}")
    return sorted(by_address, key=metric, reverse=True)  # stable: ties keep address order


def mix(table: Mapping[str, Any], order: tuple[str, ...]) -> list[tuple[str, int, float]]:
    """(name, count, percent of the total) for each entry, `order` first, the rest by name."""
    counts = {str(k): _int(v) for k, v in table.items() if _int(v) > 0}
    total = sum(counts.values())
    names = [n for n in order if n in counts] + sorted(n for n in counts if n not in order)
    return [(n, counts[n], 100.0 * counts[n] / total) for n in names]


def format_mix(table: Mapping[str, Any], order: tuple[str, ...]) -> str:
    """`A 3 (75%) · B 1 (25%)`; `none yet` for an empty table."""
    parts = [f"{name} {n:,} ({_percent(pct)})" for name, n, pct in mix(table, order)]
    return " · ".join(parts) or "none yet"


def _percent(pct: float) -> str:
    if 0 < pct < 1:
        return "<1%"  # never print 0% for something that did happen
    if 99 < pct < 100:
        return ">99%"
    return f"{pct:.0f}%"


def _ms(value: object) -> str:
    return f"{value:,.1f} ms" if isinstance(value, int | float) else "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _rate_of(now: Snapshot, previous: Snapshot | None, counter: str) -> float | None:
    before = _comparable(now, previous)
    if before is None or previous is None or now.status is None:
        return None
    return _per_second(
        _int(_table(now.status.get("counters")).get(counter)),
        _int(_table(before.get("counters")).get(counter)),
        now.at - previous.at,
    )


def _header(now: Snapshot, previous: Snapshot | None) -> RenderableType:
    from rich.table import Table
    from rich.text import Text

    from clearip.cmdutil import duration

    status = now.status or {}
    counters = _table(status.get("counters"))
    upstream = _table(status.get("upstream"))
    fastpath = _table(status.get("fastpath"))
    rtt = _table(status.get("clearip_rtt_ms"))
    workers = [w for w in status.get("workers") or () if isinstance(w, Mapping)]

    state = str(upstream.get("state") or "?")
    colour = {"connected": "green", "connecting": "yellow"}.get(state, "red")
    link = Text.assemble((state, f"bold {colour}"), f" · {upstream.get('transport') or '?'}")
    if upstream.get("tls_version"):
        link.append(f" {upstream['tls_version']}")
    link.append(f" · keepalive {_ms(upstream.get('rtt_ms'))}")
    if fastpath.get("enabled"):
        interfaces = ", ".join(map(str, fastpath.get("interfaces") or ())) or "all interfaces"
        fast = Text(f"on ({interfaces})", "green")
    else:
        fast = Text(f"off: {fastpath.get('reason') or 'no reason given'}", "yellow")
    verdicts = " · ".join(
        f"{name} {_int(counters.get(f'clearip_{name}')):,}"
        for name in ("302", "404", "503", "603", "other", "timeout", "unavailable")
    )
    kernel_drops = [
        sum(_int(_table(_table(s).get("kernel")).get(key)) for s in status.get("sources") or ())
        for key in ("dropped_untrusted_pkts", "dropped_nonsip_pkts")
    ]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(
        "proxy",
        Text.assemble(
            (f"ClearIP In-Line Proxy {status.get('version', '?')}", "bold"),
            f" · up {duration(float(status.get('uptime_s') or 0))}"
            f" · workers {sum(1 for w in workers if w.get('alive'))}/{len(workers)}",
        ),
    )
    grid.add_row("upstream", link)
    # Text, not str: a str cell is read as rich markup, and these are the proxy's words
    grid.add_row("ClearIP rtt", Text(f"p50 {_ms(rtt.get('p50'))} · p99 {_ms(rtt.get('p99'))}"))
    grid.add_row(
        "calls",
        Text(
            f"{_rate(_rate_of(now, previous, 'invites'))}/s · active "
            f"{_int(counters.get('calls_active')):,} · INVITEs {_int(counters.get('invites')):,}"
            f" · failovers {_int(counters.get('failovers')):,}"
            f" · emergency {_int(counters.get('emergency_bypass')):,}"
        ),
    )
    grid.add_row("verdicts", Text(verdicts))
    grid.add_row("attestation", Text(format_mix(_table(status.get("attestation")), ATTEST_ORDER)))
    grid.add_row("verstat", Text(format_mix(_table(status.get("verstat")), VERSTAT_ORDER)))
    grid.add_row(
        "drops",
        Text(
            f"kernel untrusted {kernel_drops[0]:,} · kernel non-SIP {kernel_drops[1]:,}"
            f" · relay untrusted {_int(counters.get('dropped_untrusted')):,}"
            f" · malformed {_int(counters.get('malformed')):,}"
        ),
    )
    grid.add_row("fast path", fast)
    return grid


def _sources_table(
    now: Snapshot, items: list[Row], sort_key: str, width: int, max_rows: int | None
) -> RenderableType:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    kernel = _kernel_on(now.status or {})
    wide = width >= WIDE
    shown = items if max_rows is None else items[: max(1, max_rows)]
    hidden = len(items) - len(shown)
    title = Text(f"sources ({len(items):,})", "bold")
    if hidden:
        title.append(f", the first {len(shown):,} shown", "not bold")
    # (heading, the sort it shows); two-line headings keep the columns narrow
    numbers: list[tuple[str, str]] = [
        ("pkt/s" if kernel else "msg/s", "rate"),
        ("kernel\npassed", ""),
        ("dropped\nuntrusted", "drops"),
        ("dropped\nnon-SIP", "drops"),
        ("SIP\nmessages", "messages"),
        ("INVITEs", "invites"),
        ("ClearIP\n302", ""),
    ]
    if wide:
        numbers += [(f"ClearIP\n{v}", "") for v in ("404", "503", "603", "other", "timeout")]
        numbers.append(("ClearIP\nunavail.", ""))
    else:  # 404/503/603/other, then no answer at all: timeout or no link
        numbers += [("ClearIP\nrejected", ""), ("ClearIP\nno answer", "")]
    numbers.append(("calls\nactive", "calls"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    # minimum widths: rich would rather cut a heading or an address to "…" than narrow the rest
    longest = max((len(row.address) for row in shown), default=0)
    table.add_column(
        "address" + (" ▲" if sort_key == "address" else ""), no_wrap=True, min_width=longest
    )
    table.add_column("trusted", no_wrap=True)
    for heading, key in numbers:
        heading += " ▼" if key == sort_key else ""
        width = max(len(line) for line in heading.splitlines())
        table.add_column(heading, justify="right", no_wrap=True, min_width=width)
    for row in shown:
        verdicts = (
            [row.count(name) for name in (*REJECTED, *FAILED)]
            if wide
            else [row.count(*REJECTED), row.count(*FAILED)]
        )
        counts = (
            row.passed,
            row.dropped_untrusted,
            row.dropped_nonsip,
            row.count("messages_in"),
            row.count("invites"),
            row.count("clearip_302"),
            *verdicts,
            row.count("calls_active"),
        )
        table.add_row(
            Text(row.address),
            "yes" if row.trusted else "no",
            _rate(row.rate),
            *(f"{n:,}" for n in counts),
            style=None if row.trusted else "red",
        )
    return Group(title, table)


def _stopped(now: Snapshot, live: bool) -> RenderableType:
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    if now.stopped:
        notice = Text.assemble(
            ("proxy not running", "bold"),
            f" (control socket {now.socket}): start it with ",
            ("clearipctl run", "bold"),
            " or ",
            ("systemctl start clearip", "bold"),
            "; this screen picks it up when it starts" if live else "",
        )
    else:
        notice = Text.assemble(("cannot read the proxy's status: ", "bold"), now.error)
    banner = Panel(notice, border_style="red", expand=True)
    if not now.stopped:
        return banner
    title = Text(f"trusted sources ({len(now.trusted)}), from the config and the state file")
    title.stylize("bold")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("cidr", no_wrap=True)
    table.add_column("origin", no_wrap=True)
    table.add_column("note")
    for entry in now.trusted:
        table.add_row(*(Text(str(entry.get(key))) for key in ("cidr", "origin", "note")))
    if not now.trusted:
        table.add_row("none: every SIP request is refused (add one with `clearipctl allow`)")
    return Group(banner, title, table)


def _footer(sort_key: str, interval: float, live: bool) -> RenderableType:
    from rich.text import Text

    if not live:
        return Text(f"rates over {interval:g} s", "dim")
    footer = Text("sort: ")
    for key, name in SORT_KEYS.items():  # every name starts with its key: "[r]ate"
        footer.append(f"[{key}]", "reverse bold" if name == sort_key else "bold")
        footer.append(f"{name[1:]}  ")
    footer.append("[q]", "bold")
    footer.append("uit  ")
    footer.append(f"refresh {interval:g} s", "dim")
    return footer


def render(
    now: Snapshot,
    previous: Snapshot | None,
    sort_key: str = "rate",
    *,
    interval: float = DEFAULT_INTERVAL,
    width: int = PIPE_WIDTH,
    max_rows: int | None = None,
    live: bool = False,
) -> RenderableType:
    """One screen: the header, the sources sorted by `sort_key` (at most `max_rows` of them),
    and the footer (the keys, when `live`: the full-screen mode). Rates are per second between
    `previous` and `now`."""
    from rich.console import Group
    from rich.text import Text

    footer = _footer(sort_key, interval, live)
    if now.status is None:
        return Group(_stopped(now, live), Text(), footer) if live else _stopped(now, live)
    return Group(
        _header(now, previous),
        Text(),
        _sources_table(now, rows(now, previous, sort_key), sort_key, width, max_rows),
        footer,
    )


# ---------------------------------------------------------------------------------------------
# I/O: the control socket, the terminal


def read_snapshot(config: Config) -> Snapshot:
    socket = config.control.socket
    try:
        status = request(socket, "status")
    except NotRunning:
        try:
            entries = trust.as_json(trust.entries(config.trust.sources, config.control.state_dir))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a bad file
            entries = [{"cidr": "?", "origin": "state", "note": f"unreadable state file: {e}"}]
        return Snapshot(time.monotonic(), None, socket, stopped=True, trusted=entries)
    except ControlError as e:
        return Snapshot(time.monotonic(), None, socket, error=str(e))
    if not isinstance(status, Mapping):
        return Snapshot(time.monotonic(), None, socket, error="bad reply: status is not an object")
    return Snapshot(time.monotonic(), status, socket)


@contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """Single keys without Enter or echo (signals still work), the old mode restored after."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_keys(fd: int, timeout: float) -> str | None:
    """The keys pressed within `timeout` s ("" at end of input), None if none."""
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return None
    data = os.read(fd, 64)
    if not data:
        return ""
    if data.startswith(b"\x1b"):
        return None  # an arrow or function key's escape sequence: not ours
    return data.decode("latin-1")


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # through the `finally`s: the terminal is given back


def _live(
    config: Config, console: Console, sort_key: str, interval: float, stdin_fd: int | None
) -> int:
    from rich.live import Live

    previous: Snapshot | None = None
    with ExitStack() as stack:
        if stdin_fd is not None:
            stack.enter_context(_cbreak(stdin_fd))
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
        stack.callback(signal.signal, signal.SIGTERM, old_term)
        live = stack.enter_context(
            Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False)
        )

        def draw(now: Snapshot, before: Snapshot | None) -> None:
            frame = render(
                now,
                before,
                sort_key,
                interval=interval,
                width=console.width,
                max_rows=console.height - CHROME_LINES,
                live=True,
            )
            live.update(frame, refresh=True)

        while True:
            now = read_snapshot(config)
            draw(now, previous)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if stdin_fd is None:
                    time.sleep(left)
                    continue
                keys = _read_keys(stdin_fd, left)
                if keys == "":  # stdin closed: keep refreshing, stop listening
                    stdin_fd = None
                for key in keys or "":
                    if key in QUIT_KEYS:
                        return 0
                    if key.lower() in SORT_KEYS:
                        sort_key = SORT_KEYS[key.lower()]
                        draw(now, previous)  # at once, with the same data
            if now.status is not None:
                previous = now  # after an unreadable moment, rates resume from the last good


# ---------------------------------------------------------------------------------------------
# The command


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= MIN_INTERVAL:  # also refuses nan
        raise argparse.ArgumentTypeError(f"at least {MIN_INTERVAL:g} s")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sort",
        choices=list(SORT_KEYS.values()),
        default="rate",
        help="initial order of the sources (keys: r m i d c a; default rate)",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"refresh period (default {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one frame to stdout and exit, for scripts (rates over one interval); "
        "exit status 1 when the proxy could not be read",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from clearip.cmdutil import load

    _path, config = load(args)
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH
    console = Console(width=width)
    if args.once:
        first = read_snapshot(config)
        now = first
        if first.status is not None:
            time.sleep(args.interval)
            now = read_snapshot(config)
        previous = first if now is not first else None
        console.print(render(now, previous, args.sort, interval=args.interval, width=console.width))
        return 0 if now.status is not None else 1
    if not sys.stdout.isatty():
        print("clearipctl top: stdout is not a terminal; use --once for scripts", file=sys.stderr)
        return 1
    stdin_fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    return _live(config, console, args.sort, args.interval, stdin_fd)
