"""`clearipctl top`: the pure screen (`render`) from fixed snapshots, the `--once` output, and the
full-screen mode in a real pseudo-terminal (tmux), against a stopped proxy and against the real
proxy in the network-namespace lab while calls run. Every wait is a bounded poll."""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab.netlab import NetLab
from rich.console import Console

from clearip import trust
from clearip.top import Snapshot, add_arguments, format_mix, render, rows
from tests.calllab import INBOUND, OUTBOUND, SWITCH_IP, Lab
from tests.helpers import wait_until
from tests.netlab import skip_unless_netns

ROOT = Path(__file__).resolve().parent.parent
CLEARIPCTL = str(ROOT / ".venv" / "bin" / "clearipctl")


def status(n: int, *, uptime: float = 100.0, fastpath: bool = False) -> dict[str, Any]:
    """A status reply after `n` rounds of traffic: each round, the switch sends 10 messages and
    2 INVITEs, the carrier 3 messages and 1 INVITE, a flooder 1 message (and, with the fast
    path, 50 packets the kernel drops)."""
    kernel_on = {"passed_pkts": 12 * n, "dropped_untrusted_pkts": 0, "dropped_nonsip_pkts": n}
    return {
        "version": "9.9",
        "uptime_s": uptime,
        "upstream": {"state": "connected", "transport": "tls", "tls_version": "TLSv1.3"},
        "fastpath": {"enabled": fastpath, "reason": "disabled in the config", "interfaces": []},
        "counters": {"invites": 3 * n, "calls_active": 2, "clearip_302": 2 * n},
        "clearip_rtt_ms": {"p50": 4.25, "p99": 31.0},
        "attestation": {"A": 3, "B": 1},
        "verstat": {"No-TN-Validation": 1, "TN-Validation-Passed": 3},
        "workers": [{"alive": True}, {"alive": True}],
        "sources": [
            {
                "address": "10.0.0.11",
                "trusted": True,
                "kernel": kernel_on if fastpath else {},
                "sip": {"messages_in": 10 * n, "invites": 2 * n, "clearip_302": 2 * n},
            },
            {
                "address": "10.0.0.9",
                "trusted": True,
                "kernel": {},
                "sip": {"messages_in": 3 * n, "invites": n, "calls_active": 2, "clearip_603": n},
            },
            {
                "address": "192.0.2.66",
                "trusted": False,
                "kernel": {"dropped_untrusted_pkts": 50 * n} if fastpath else {},
                "sip": {"messages_in": n},
            },
        ],
    }


def text(renderable: Any, width: int = 200) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    console.file.close()
    return console.export_text()


def source_line(screen: str, address: str) -> list[str]:
    [line] = [ln for ln in screen.splitlines() if ln.strip().startswith(address + " ")]
    return line.split()


# ---------------------------------------------------------------------------------------------
# render(): pure


def test_rates_are_deltas_between_two_snapshots() -> None:
    before, now = Snapshot(50.0, status(1)), Snapshot(52.0, status(5))
    by_address = {r.address: r for r in rows(now, before)}
    # no fast path: SIP messages per second over the 2 s between the snapshots
    assert by_address["10.0.0.11"].rate == 20.0
    assert by_address["10.0.0.9"].rate == 6.0
    assert by_address["192.0.2.66"].rate == 2.0
    screen = text(render(now, before))
    assert "calls        6.0/s · active 2" in screen
    assert source_line(screen, "10.0.0.11")[:3] == ["10.0.0.11", "yes", "20.0"]
    assert "msg/s ▼" in screen
    # the first frame has nothing to compare with; a restarted proxy neither
    assert all(r.rate is None for r in rows(now, None))
    restarted = Snapshot(53.0, status(1, uptime=1.0))
    assert all(r.rate is None for r in rows(restarted, now))
    assert source_line(text(render(restarted, now)), "10.0.0.11")[2] == "-"


def test_kernel_packets_per_second_when_the_fast_path_is_on() -> None:
    before = Snapshot(10.0, status(1, fastpath=True))
    now = Snapshot(11.0, status(3, fastpath=True))
    by_address = {r.address: r for r in rows(now, before)}
    assert by_address["10.0.0.11"].rate == 26.0  # (12 passed + 1 non-SIP dropped) x 2 rounds
    assert by_address["192.0.2.66"].rate == 100.0  # dropped in the kernel, never seen as SIP
    screen = text(render(now, before, "drops"))
    assert "pkt/s" in screen
    flooder = source_line(screen, "192.0.2.66")
    assert flooder[:6] == ["192.0.2.66", "no", "100.0", "0", "150", "0"]
    assert "kernel untrusted 150 · kernel non-SIP 3" in screen


@pytest.mark.parametrize(
    ("sort_key", "order"),
    [
        ("rate", ["192.0.2.66", "10.0.0.11", "10.0.0.9"]),  # the kernel's packets
        ("messages", ["10.0.0.11", "10.0.0.9", "192.0.2.66"]),
        ("invites", ["10.0.0.11", "10.0.0.9", "192.0.2.66"]),
        ("calls", ["10.0.0.9", "10.0.0.11", "192.0.2.66"]),
        ("drops", ["192.0.2.66", "10.0.0.11", "10.0.0.9"]),
        ("address", ["10.0.0.9", "10.0.0.11", "192.0.2.66"]),  # numeric, not text, order
    ],
)
def test_sort_keys(sort_key: str, order: list[str]) -> None:
    before = Snapshot(0.0, status(1, fastpath=True))
    now = Snapshot(1.0, status(2, fastpath=True))
    assert [r.address for r in rows(now, before, sort_key)] == order
    screen = text(render(now, before, sort_key))
    shown = [ln.split()[0] for ln in screen.splitlines() if re.match(r"^\s*(10|192)\.", ln)]
    assert shown == order


def test_header_and_per_source_verdicts() -> None:
    screen = text(render(Snapshot(1.0, status(2)), Snapshot(0.0, status(1)), width=200))
    assert "connected · tls TLSv1.3" in screen
    assert "p50 4.2 ms · p99 31.0 ms" in screen or "p50 4.3 ms · p99 31.0 ms" in screen
    assert "attestation  A 3 (75%) · B 1 (25%)" in screen
    assert "verstat      TN-Validation-Passed 3 (75%) · No-TN-Validation 1 (25%)" in screen
    assert "workers 2/2" in screen
    # wide: one column per verdict, then calls active last
    carrier = source_line(screen, "10.0.0.9")
    assert carrier[6:8] == ["6", "2"]  # SIP messages, INVITEs
    assert carrier[8:15] == ["0", "0", "0", "2", "0", "0", "0"]  # 302 404 503 603 other t/o unav
    assert carrier[-1] == "2"  # calls active
    # narrow: 302, rejected (404/503/603/other), no answer (timeout/unavailable)
    narrow = text(render(Snapshot(1.0, status(2)), None, width=120), width=120)
    assert source_line(narrow, "10.0.0.9")[8:] == ["0", "2", "0", "2"]
    assert "rejected" in narrow and "603" not in narrow.split("sources")[1]


def test_attestation_percentages() -> None:
    assert format_mix({"A": 3, "B": 1}, ("A", "B", "C")) == "A 3 (75%) · B 1 (25%)"
    assert format_mix({"C": 1, "A": 2, "?": 1, "B": 0}, ("A", "B", "C")) == (
        "A 2 (50%) · C 1 (25%) · ? 1 (25%)"  # the known levels first, zeros left out
    )
    assert format_mix({"A": 999, "B": 1}, ("A",)) == "A 999 (>99%) · B 1 (<1%)"
    assert format_mix({"A": 1234}, ("A",)) == "A 1,234 (100%)"
    assert format_mix({}, ("A",)) == "none yet"
    screen = text(render(Snapshot(0.0, {**status(1), "attestation": {}, "verstat": {}}), None))
    assert "attestation  none yet" in screen


def test_max_rows_says_how_many_are_shown() -> None:
    screen = text(render(Snapshot(0.0, status(1)), None, "address", max_rows=2))
    assert "sources (3), the first 2 shown" in screen
    assert "192.0.2.66" not in screen


def test_stopped_notice_with_the_trusted_list() -> None:
    stopped = Snapshot(
        0.0,
        None,
        "/run/clearip/control.sock",
        stopped=True,
        trusted=[{"cidr": "192.0.2.0/24", "origin": "config", "note": ""}],
    )
    screen = text(render(stopped, None, live=True))
    flat = " ".join(screen.split())
    assert "proxy not running (control socket /run/clearip/control.sock)" in flat
    assert "start it with clearipctl run or systemctl start clearip" in flat
    assert "picks it up when it starts" in flat
    assert "192.0.2.0/24" in screen and "config" in screen
    assert "[q]uit" in screen
    empty = text(render(Snapshot(0.0, None, "/x.sock", stopped=True), None))
    assert "none: every SIP request is refused" in empty
    failed = text(render(Snapshot(0.0, None, "/x.sock", error="permission denied on /x"), None))
    assert "cannot read the proxy's status: permission denied on /x" in failed


def test_arguments() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.sort, args.interval, args.once) == ("rate", 1.0, False)
    args = parser.parse_args(["--sort", "invites", "--interval", "0.5", "--once"])
    assert (args.sort, args.interval, args.once) == ("invites", 0.5, True)
    for bad in (["--sort", "bogus"], ["--interval", "0"], ["--interval", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


# ---------------------------------------------------------------------------------------------
# The command: --once, and the full-screen mode in tmux


def stopped_config(tmp_path: Path) -> Path:
    """A config whose control socket does not exist: the proxy is stopped."""
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[trust]\nsources = ["192.0.2.0/24"]\n'
        f'[control]\nsocket = "{tmp_path}/run/ctl.sock"\nstate_dir = "{tmp_path}/state"\n'
    )
    state = [trust.TrustedEntry(ipaddress.ip_network("198.51.100.7/32"), "carrier X", "state")]
    trust.save_state(str(tmp_path / "state"), state)
    return config


def test_once_when_the_proxy_is_stopped(tmp_path: Path) -> None:
    config = stopped_config(tmp_path)
    out = subprocess.run(
        [CLEARIPCTL, "top", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "300"},  # the long socket path on one line
    )
    assert out.returncode == 1, out.stderr  # for scripts: the proxy could not be read
    flat = " ".join(out.stdout.split())
    assert f"proxy not running (control socket {tmp_path}/run/ctl.sock)" in flat
    assert "192.0.2.0/24" in out.stdout and "198.51.100.7/32" in out.stdout
    assert "carrier X" in out.stdout


def wait_for(predicate: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    return wait_until(predicate, timeout, what, interval=0.1)  # a screen read is a tmux call


class Tmux:
    """One detached tmux session on a server of its own (-S, its socket in the test's directory):
    nothing else's tmux is touched.
    The command's exit status and `stty -g` before and after it land in files."""

    def __init__(self, workdir: Path, command: list[str]) -> None:
        self.workdir = workdir
        self.socket = str(workdir / "tmux.sock")
        self.name = "top"
        before, after, rc = (workdir / n for n in ("stty-before", "stty-after", "rc"))
        self.rc_file = rc
        script = (
            f"stty -g > {before}; {shlex.join(command)}; echo $? > {rc}.tmp; "
            f"stty -g > {after}; mv {rc}.tmp {rc}; exec sleep 120"
        )
        self.tmux("new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", script)

    def tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def exit_status(self) -> int | None:
        return int(self.rc_file.read_text()) if self.rc_file.exists() else None

    def tty_restored(self) -> bool:
        before = (self.workdir / "stty-before").read_text()
        return before == (self.workdir / "stty-after").read_text()

    def alternate_screen(self) -> bool:
        return self.tmux("display-message", "-p", "-t", self.name, "#{alternate_on}").strip() == "1"

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=10)
        Path(self.socket).unlink(missing_ok=True)  # kill-server leaves it behind


@pytest.fixture
def tmux_session(tmp_path: Path) -> Iterator[Callable[[list[str]], Tmux]]:
    sessions: list[Tmux] = []

    def start(command: list[str]) -> Tmux:
        session = Tmux(tmp_path, command)
        sessions.append(session)
        return session

    try:
        yield start
    finally:
        for session in sessions:
            session.close()


def quit_and_check(session: Tmux, key: str = "q", status: int = 0) -> None:
    session.keys(key)
    wait_for(lambda: session.exit_status() is not None, 15, session.screen)
    assert session.exit_status() == status, session.screen()
    assert session.tty_restored()  # cbreak undone: echo and line editing are back
    assert not session.alternate_screen()


@pytest.mark.slow
def test_full_screen_when_the_proxy_is_stopped(
    tmp_path: Path, tmux_session: Callable[[list[str]], Tmux]
) -> None:
    config = stopped_config(tmp_path)
    session = tmux_session([CLEARIPCTL, "top", "--config", str(config), "--interval", "0.2"])
    wait_for(lambda: "proxy not running" in session.screen(), 20, session.screen)
    screen = session.screen()
    assert "systemctl start clearip" in screen and "198.51.100.7/32" in screen
    assert "[q]uit" in screen
    assert session.alternate_screen()
    quit_and_check(session)


@pytest.mark.slow
def test_ctrl_c_gives_the_terminal_back(
    tmp_path: Path, tmux_session: Callable[[list[str]], Tmux]
) -> None:
    session = tmux_session([CLEARIPCTL, "top", "--config", str(stopped_config(tmp_path))])
    wait_for(lambda: "proxy not running" in session.screen(), 20, session.screen)
    quit_and_check(session, "C-c", 130)  # SIGINT: the shell's convention for an interrupt


@pytest.mark.slow
def test_full_screen_picks_up_the_proxy_when_it_starts_and_stops(
    tmp_path: Path, tmux_session: Callable[[list[str]], Tmux]
) -> None:
    # the supervisor with tests/fake_worker.py standing in for the relay: no SIP, no root
    from tests.test_supervisor import start_proxy, write_config

    config = tmp_path / "proxy.toml"
    write_config(config, tmp_path / "run")  # what start_proxy writes too
    session = tmux_session([CLEARIPCTL, "top", "--config", str(config), "--interval", "0.2"])
    wait_for(lambda: "proxy not running" in session.screen(), 20, session.screen)
    proxy = start_proxy(tmp_path)
    try:
        wait_for(lambda: "192.0.2.1 " in session.screen(), 20, session.screen)
        assert "connected · tls TLSv1.3" in session.screen()
    finally:
        proxy.proc.terminate()
        proxy.proc.wait(30)
    wait_for(lambda: "proxy not running" in session.screen(), 20, session.screen)
    quit_and_check(session)


# ---------------------------------------------------------------------------------------------
# The real proxy in the network-namespace lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    skip_unless_netns()
    with NetLab() as net:
        yield Lab(net)


def _switch_invites(screen: str) -> int:
    lines = [ln.split() for ln in screen.splitlines() if ln.strip().startswith(SWITCH_IP + " ")]
    return int(lines[0][7].replace(",", "")) if lines else 0  # the INVITEs column


def _attested(screen: str) -> bool:
    found = re.search(r"attestation\s+A ([\d,]+) \(", screen)
    return found is not None and int(found.group(1).replace(",", "")) > 0


@pytest.mark.root
@pytest.mark.slow
def test_full_screen_with_calls_running(
    lab: Lab, tmux_session: Callable[[list[str]], Tmux]
) -> None:
    # the control socket is a file: top reaches it from the root namespace
    session = tmux_session([CLEARIPCTL, "top", "--config", str(lab.config), "--sort", "invites"])
    wait_for(lambda: "upstream" in session.screen(), 20, session.screen)
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml", calls=3)
    res = lab.call("uac_call.xml", OUTBOUND, calls=3)
    assert (res.successful, res.failed) == (3, 0), res
    assert uas.wait().successful == 3
    switch_uas = lab.provider(lab.switch, "uas_provider_pai_ok.xml")
    res = lab.call("uac_call.xml", INBOUND, host=lab.prov_a)  # verification: verstat counted
    assert res.successful == 1, res
    assert switch_uas.wait().successful == 1

    def ready() -> bool:
        screen = session.screen()
        return (
            _switch_invites(screen) >= 3
            and "connected · tls TLSv1.3" in screen
            and _attested(screen)
            and "TN-Validation-Passed 1" in screen
        )

    wait_for(ready, 20, session.screen)
    screen = session.screen()
    switch = source_line(screen, SWITCH_IP)
    assert switch[1] == "yes" and int(switch[8]) >= 3  # trusted, ClearIP 302s
    assert "INVITEs ▼" in screen
    session.keys("a")  # another sort at once
    wait_for(lambda: "address ▲" in session.screen(), 10, session.screen)
    quit_and_check(session)

    once = subprocess.run(
        [CLEARIPCTL, "top", "--once", "--config", str(lab.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert once.returncode == 0, once.stderr
    assert _switch_invites(once.stdout) >= 3 and _attested(once.stdout)
