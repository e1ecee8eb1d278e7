"""The supervisor, its worker link and `clearipctl run/status/reload`, with tests/fake_worker.py
standing in for the relay. Waits are bounded polls, never fixed sleeps."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from clearip import __version__
from clearip.config import ConfigError, default_config, parse_config
from clearip.ctlsock import ControlError, request
from clearip.logsetup import journal_stream, setup_logging
from clearip.relay.counters import COUNTER_NAMES, SOURCE_COUNTER_NAMES
from clearip.statusreport import (
    ADDED_STATUS_KEYS,
    KERNEL_COUNTER_NAMES,
    STATUS_KEYS,
    aggregate_stats,
    status_contract,
)
from clearip.supervisor import Supervisor
from clearip.workerlink import WorkerChannel, WorkerError, WorkerLink, config_from_dict
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
FAKE_WORKER = "tests.fake_worker"
_SCRIPT = Path(sys.executable).with_name("clearipctl")
CLEARIPCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "clearip.cli"]


def process_gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")  # a zombie has run its course; only the reaping is left


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["CLEARIP_WORKER_MODULE"] = FAKE_WORKER
    env.update(extra)
    return env


def write_config(path: Path, run_dir: Path, extra: str = "") -> None:
    path.write_text(
        "[relay]\nworkers = 2\n"
        "[fastpath]\nenabled = false\n"  # never touch the host's own interfaces and nftables
        "[clearip]\ntimeout = 0.1\n"  # grace at stop = 2.1 s
        f'[control]\nsocket = "{run_dir}/control.sock"\nstate_dir = "{run_dir}/state"\n'
        'log_level = "debug"\n' + extra
    )


# ---------------------------------------------------------------------------------------------
# Pure parts: status assembly and the config's trip over the link


def worker_stats(index: int, state: str = "connected", rtt: float | None = 10.0) -> dict[str, Any]:
    return {
        "counters": {"messages_in": 5, "invites": 2, "clearip_302": 1, "extra_count": index},
        "sources": {
            "192.0.2.1": {"messages_in": 3, "invites": 1, "clearip_302": 1, "calls_active": index},
            "other": {"messages_in": 1},
        },
        "listeners": [
            {"transport": "udp", "address": "0.0.0.0:5060"},
            {"transport": "tls", "address": "0.0.0.0:5061"},
        ],
        "upstream": {"state": state, "transport": "tls", "tls_version": "TLSv1.3", "rtt_ms": rtt},
        "latency": {"p50": 1.0 + index, "p99": None},
        "finals": {"200": 2, "503": index},
        "attestation": {"A": 1, "C": index},
        "verstat": {"TN-Validation-Passed": 2, "No-TN-Validation": index},
    }


def test_aggregate_sums_counters_and_sources() -> None:
    config = parse_config('[trust]\nsources = ["192.0.2.0/24"]\n')
    merged = aggregate_stats([worker_stats(0), worker_stats(1, rtt=25.5)], config)
    assert merged["counters"] == {
        **dict.fromkeys(COUNTER_NAMES, 0),
        "messages_in": 10,
        "invites": 4,
        "clearip_302": 2,
        "extra_count": 1,
    }
    assert merged["listeners"] == [
        {"transport": "udp", "address": "0.0.0.0:5060"},
        {"transport": "tls", "address": "0.0.0.0:5061"},
    ]
    zeros = dict.fromkeys(KERNEL_COUNTER_NAMES, 0)
    sip_zeros = dict.fromkeys(SOURCE_COUNTER_NAMES, 0)
    assert merged["sources"] == [
        {
            "address": "192.0.2.1",
            "trusted": True,
            "kernel": zeros,
            "sip": {
                **sip_zeros,
                "messages_in": 6,
                "invites": 2,
                "clearip_302": 2,
                "calls_active": 1,
            },
        },
        {
            "address": "other",
            "trusted": False,
            "kernel": zeros,
            "sip": {**sip_zeros, "messages_in": 2},
        },
    ]
    assert merged["upstream"] == {
        "state": "connected",
        "transport": "tls",
        "tls_version": "TLSv1.3",
        "rtt_ms": 25.5,
    }
    assert merged["latency"] == {"p50": 2.0}  # worst of the workers
    assert merged["finals"] == {"200": 4, "503": 1}  # summed
    assert merged["attestation"] == {"A": 2, "C": 1}
    assert merged["verstat"] == {"TN-Validation-Passed": 4, "No-TN-Validation": 1}


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["connected", "connected"], "connected"),
        (["connected", "down"], "connecting"),
        (["connecting", "down"], "connecting"),
        (["down", "down"], "down"),
        ([], "down"),
    ],
)
def test_upstream_state_merge(states: list[str], expected: str) -> None:
    stats = [worker_stats(i, state) for i, state in enumerate(states)]
    upstream = aggregate_stats(stats, default_config())["upstream"]
    assert upstream["state"] == expected
    assert upstream["transport"] == "tls"  # from the config when no worker answered


def test_status_contract_has_exactly_the_spec_keys() -> None:
    old_proxy_source = {"address": "192.0.2.1", "trusted": True, "sip": {"invites": 1}}
    out = status_contract(
        {"version": "x", "counters": {"invites": 3}, "workers": [], "sources": [old_proxy_source]}
    )
    assert tuple(out) == STATUS_KEYS + ADDED_STATUS_KEYS
    assert out["counters"] == {**dict.fromkeys(COUNTER_NAMES, 0), "invites": 3}
    # every per-source key, whatever the proxy reported (more keys may come, none go)
    [source] = out["sources"]
    assert source["kernel"] == dict.fromkeys(KERNEL_COUNTER_NAMES, 0)
    assert source["sip"] == {**dict.fromkeys(SOURCE_COUNTER_NAMES, 0), "invites": 1}
    assert {"messages_in", "invites"} <= set(SOURCE_COUNTER_NAMES)


def test_config_survives_the_link() -> None:
    config = parse_config(
        '[listen]\nudp = ["[::1]:5070"]\nadvertise = "203.0.113.9"\n'
        '[clearip]\ntimeout = 2\n[fastpath]\nenabled = false\n[trust]\nsources = ["10.0.0.0/8"]\n'
        '[routing]\nemergency_action = "sip:psap@192.0.2.5"\n'
    )
    wire = json.loads(json.dumps(config.to_dict()))
    assert config_from_dict(wire) == config
    with pytest.raises(ConfigError) as info:
        config_from_dict({"relay": {"workers": True}})
    assert info.value.key == "relay.workers"


# ---------------------------------------------------------------------------------------------
# The link in one process: WorkerChannel <-> WorkerLink over a socketpair, on both loops


class RecordingHandler:
    def __init__(self) -> None:
        self.reloaded: list[Any] = []
        self.trusted: list[str] = []
        self.shutdowns: list[float] = []

    def stats(self) -> dict[str, Any]:
        return {"counters": {"invites": 1}}

    async def reload(self, config: Any) -> None:
        self.reloaded.append(config)

    def set_trusted(self, cidrs: list[str]) -> None:
        if "bad" in cidrs:
            raise ValueError("'bad' is not a CIDR")
        self.trusted = cidrs

    async def shutdown(self, grace: float) -> None:
        self.shutdowns.append(grace)


LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_link_ops_and_events(loop: str) -> None:
    handler = RecordingHandler()

    async def main() -> None:
        ours, theirs = socket.socketpair()
        link = WorkerLink(theirs.detach(), handler)
        await link.start()
        events: list[dict[str, Any]] = []
        channel = await WorkerChannel.open(ours, events.append, "worker 0")
        link.send_event({"event": "ready"})
        assert await channel.call("stats", timeout=5) == {"counters": {"invites": 1}}
        assert await channel.call("reload", config=default_config().to_dict(), timeout=5) is None
        assert handler.reloaded == [default_config()]
        await channel.call("trusted", cidrs=["192.0.2.0/24"], timeout=5)
        assert handler.trusted == ["192.0.2.0/24"]
        with pytest.raises(WorkerError, match="worker 0: ValueError: 'bad' is not a CIDR"):
            await channel.call("trusted", cidrs=["bad"], timeout=5)
        with pytest.raises(WorkerError, match=r"config error: relay\.workers"):
            await channel.call("reload", config={"relay": {"workers": -1}}, timeout=5)
        with pytest.raises(WorkerError, match="unknown op 'dance'"):
            await channel.call("dance", timeout=5)
        assert events == [{"event": "ready"}]
        await channel.call("shutdown", grace=1.5, timeout=5)
        await asyncio.wait_for(link.wait_closed(), 5)
        assert handler.shutdowns == [1.5]
        await asyncio.wait_for(channel.wait_closed(), 5)  # the worker closed its end
        with pytest.raises(WorkerError, match="link closed"):
            await channel.call("stats", timeout=5)
        await channel.close()

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", list(LOOPS))
def test_channel_close_survives_a_cancelled_closer(loop: str) -> None:
    """The watcher closes a dead worker's channel and may be cancelled while it waits; `_stop`
    closing the same channel afterwards must not inherit that cancellation (CI saw it)."""

    async def main() -> None:
        ours, theirs = socket.socketpair()
        channel = await WorkerChannel.open(ours, lambda _: None, "worker 0")
        # the far end stays open, so the first close is still waiting when it is cancelled
        first = asyncio.create_task(channel.close())
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(channel.close(), 5)  # not CancelledError
        await asyncio.wait_for(channel.close(), 5)  # idempotent
        assert channel.closed
        theirs.close()

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", list(LOOPS))
def test_worker_shuts_down_when_the_supervisor_goes(loop: str) -> None:
    handler = RecordingHandler()

    async def main() -> None:
        ours, theirs = socket.socketpair()
        link = WorkerLink(theirs.detach(), handler)
        await link.start()
        ours.close()  # the supervisor died
        await asyncio.wait_for(link.wait_closed(), 5)
        assert handler.shutdowns == [0.0]

    LOOPS[loop](main())


# ---------------------------------------------------------------------------------------------
# Start-up failures, in process


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key, value in child_env().items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def run_supervisor(tmp_path: Path, **options: Any) -> int:
    config_file = tmp_path / "proxy.toml"
    write_config(config_file, tmp_path / "run")
    config = parse_config(config_file.read_text())
    supervisor = Supervisor(str(config_file), config, FAKE_WORKER, **options)
    return asyncio.run(asyncio.wait_for(supervisor.run(), 30))


def test_start_fails_when_a_worker_dies_before_ready(
    tmp_path: Path, fake_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_env.setenv("FAKE_WORKER_MODE", "crash")
    caplog.set_level(logging.INFO, "clearip")
    assert run_supervisor(tmp_path) == 1
    assert "exited with status 3 before it was ready" in caplog.text
    assert not (tmp_path / "run" / "control.sock").exists()


def test_start_fails_when_a_worker_is_never_ready(
    tmp_path: Path, fake_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_env.setenv("FAKE_WORKER_MODE", "noready")
    caplog.set_level(logging.INFO, "clearip")
    assert run_supervisor(tmp_path, ready_timeout=0.5) == 1
    assert "not ready after 0.5 s" in caplog.text
    assert not (tmp_path / "run" / "control.sock").exists()


# ---------------------------------------------------------------------------------------------
# `clearipctl run` as a process


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    config: Path
    socket: Path
    log: Path

    def status(self) -> dict[str, Any]:
        result = request(str(self.socket), "status")
        assert isinstance(result, dict)
        return result

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLEARIPCTL, *args, "--config", str(self.config)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def log_text(self) -> str:
        return self.log.read_text()

    def workers_ready(self) -> list[dict[str, Any]] | None:
        try:
            workers = self.status()["workers"]
        except ControlError:
            return None
        return workers if all(w["ready"] and w["answered"] for w in workers) else None


def start_proxy(tmp_path: Path, **env: str) -> Proxy:
    run_dir = tmp_path / "run"
    config = tmp_path / "proxy.toml"
    write_config(config, run_dir)
    log = tmp_path / "proxy.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [*CLEARIPCTL, "run", "--config", str(config)],
            env=child_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    proxy = Proxy(proc, config, run_dir / "control.sock", log)
    try:
        wait_until(
            lambda: proc.poll() is not None or proxy.workers_ready(), 30, "the proxy to start"
        )
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert proc.poll() is None, proxy.log_text()
    return proxy


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    proxy = start_proxy(tmp_path)
    yield proxy
    if proxy.proc.poll() is None:
        proxy.proc.send_signal(signal.SIGTERM)
        try:
            proxy.proc.wait(15)
        except subprocess.TimeoutExpired:
            proxy.proc.kill()
            proxy.proc.wait()


def test_status_json_is_the_contract_with_summed_counters(proxy: Proxy) -> None:
    result = proxy.ctl("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert tuple(status) == STATUS_KEYS + ADDED_STATUS_KEYS
    assert status["version"] == __version__
    assert isinstance(status["uptime_s"], int | float)
    assert set(COUNTER_NAMES) <= set(status["counters"])
    # tests/fake_worker.py reports 5 messages, 2 INVITEs, one 302, one call per worker.
    counters = status["counters"]
    assert (counters["messages_in"], counters["invites"], counters["clearip_302"]) == (10, 4, 2)
    assert counters["calls_active"] == 2
    assert counters["clearip_503"] == 0
    assert status["listeners"] == [
        {"transport": "udp", "address": "0.0.0.0:5060"},
        {"transport": "tcp", "address": "0.0.0.0:5060"},
        {"transport": "tls", "address": "0.0.0.0:5061"},
    ]
    assert status["upstream"] == {
        "state": "connected",
        "transport": "tls",
        "tls_version": "TLSv1.3",
        "rtt_ms": 11.0,
    }
    assert status["fastpath"]["enabled"] is False
    assert status["fastpath"]["interfaces"] == []
    by_address = {s["address"]: s for s in status["sources"]}
    assert by_address["192.0.2.1"]["sip"] == {
        **dict.fromkeys(SOURCE_COUNTER_NAMES, 0),
        "messages_in": 6,
        "invites": 2,
    }
    assert set(by_address) == {"192.0.2.1", "198.51.100.1", "198.51.100.2"}
    for source in status["sources"]:
        assert set(source) == {"address", "trusted", "kernel", "sip"}
        assert source["kernel"] == dict.fromkeys(KERNEL_COUNTER_NAMES, 0)

    human = proxy.ctl("status")
    assert human.returncode == 0, human.stderr
    assert f"ClearIP In-Line Proxy {__version__}" in human.stdout
    assert "connected (tls, TLSv1.3, rtt 11.0 ms)" in human.stdout
    assert "2/2 running" in human.stdout
    assert "sources (3; clearipctl top for the live view)" in human.stdout


def test_reload_and_a_bad_config_on_sighup(proxy: Proxy) -> None:
    proxy.config.write_text(proxy.config.read_text().replace("timeout = 0.1", "timeout = 0.3"))
    result = proxy.ctl("reload")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reloaded {proxy.config} into 2 relay workers"
    assert proxy.status()["counters"]["fake_reloads"] == 2  # one reload in each worker
    wait_until(lambda: proxy.log_text().count("reloaded: clearip.timeout=0.3") == 2)

    # A broken file on SIGHUP: refused with the key named, the running config kept.
    proxy.config.write_text(proxy.config.read_text() + "[limits]\nbogus = 1\n")
    proxy.proc.send_signal(signal.SIGHUP)
    line = wait_until(
        lambda: next((ln for ln in proxy.log_text().splitlines() if "reload refused" in ln), None)
    )
    assert "config error: limits.bogus: unknown key" in line
    assert proxy.status()["counters"]["fake_reloads"] == 2
    assert proxy.log_text().count("reloaded: clearip.timeout") == 2


def test_bad_config_refused_by_the_running_proxy(proxy: Proxy, tmp_path: Path) -> None:
    # The CLI's own copy of the config is valid; the proxy's file is not: the proxy refuses.
    good = tmp_path / "cli.toml"
    good.write_text(proxy.config.read_text())
    proxy.config.write_text(proxy.config.read_text() + "[limits]\nmax_headers = 1\n")
    result = subprocess.run(
        [*CLEARIPCTL, "reload", "--config", str(good)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("config error: limits.max_headers: ")
    assert result.stderr.count("\n") == 1
    assert proxy.status()["counters"]["fake_reloads"] == 0


def test_a_dead_worker_is_restarted(proxy: Proxy) -> None:
    before = proxy.status()["workers"]
    victim = before[0]["pid"]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> list[dict[str, Any]] | None:
        status = proxy.status()
        workers = status["workers"]
        fresh = workers[0]["pid"] != victim and workers[0]["ready"] and workers[0]["answered"]
        return workers if fresh and status["workers_restarted"] == 1 else None

    workers = wait_until(replaced, 15, "worker 0 to be restarted")
    assert workers[1]["pid"] == before[1]["pid"]  # the other one was left alone
    assert "was killed by SIGKILL" in proxy.log_text()
    # The restarted worker was handed the running config.
    assert proxy.status()["counters"]["fake_reloads"] == 1


def test_sigterm_stops_everything(proxy: Proxy) -> None:
    pids = [w["pid"] for w in proxy.status()["workers"]]
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(15) == 0
    assert all(process_gone(pid) for pid in pids)
    assert not proxy.socket.exists()
    log = proxy.log_text()
    assert "shutting down (grace 2.1 s)" in log  # the workers were asked, not killed
    assert "killing" not in log
    result = proxy.ctl("status")
    assert result.returncode == 1
    assert result.stderr == (
        f"proxy not running: no control socket at {proxy.socket} (start it with `clearipctl run`)\n"
    )


def test_workers_do_not_outlive_a_killed_supervisor(proxy: Proxy) -> None:
    pids = [w["pid"] for w in proxy.status()["workers"]]
    proxy.proc.kill()
    proxy.proc.wait(5)
    wait_until(lambda: all(process_gone(pid) for pid in pids), 10, "orphaned workers to exit")


@pytest.mark.slow
def test_stubborn_worker_is_killed_at_stop(tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, FAKE_WORKER_MODE="stubborn")
    pids = [w["pid"] for w in proxy.status()["workers"]]
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(20) == 0
    assert all(process_gone(pid) for pid in pids)
    assert "did not stop within 2.1 s; killing it" in proxy.log_text()
    assert not proxy.socket.exists()


def test_a_second_proxy_refuses_to_start(proxy: Proxy) -> None:
    result = proxy.ctl("run")
    assert result.returncode == 1
    assert "another proxy is already running" in result.stderr
    assert proxy.status()["workers_restarted"] == 0


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[clearip]\ntimeout = -1\n")
    for command in ("run", "status", "reload"):
        result = subprocess.run(
            [*CLEARIPCTL, command, "--config", str(bad)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert result.stderr == "config error: clearip.timeout: must be a positive number, got -1\n"
    missing = subprocess.run(
        [*CLEARIPCTL, "status", "--config", str(tmp_path / "nope.toml")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1
    assert missing.stderr == f"config error: {tmp_path / 'nope.toml'}: no such file\n"


def test_every_command_has_help() -> None:
    for command in ("run", "status", "reload"):
        result = subprocess.run(
            [*CLEARIPCTL, command, "--help"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0
        assert "--config FILE" in result.stdout


# ---------------------------------------------------------------------------------------------
# Logging


def test_log_lines_for_the_journal_and_for_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = os.pipe()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        with os.fdopen(write_fd, "w") as stream, os.fdopen(read_fd) as reader:
            st = os.fstat(write_fd)
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
            assert journal_stream(stream)
            setup_logging("warning", tag="worker 1", stream=stream)
            logging.getLogger("clearip.test").info("not shown at warning")
            logging.getLogger("clearip.test").warning("upstream down")
            # Elsewhere (a file, a terminal): a timestamp instead of the priority.
            monkeypatch.setenv("JOURNAL_STREAM", "1:2")
            assert not journal_stream(stream)
            setup_logging("info", stream=stream)
            logging.getLogger("clearip.test").info("hello")
            stream.close()
            lines = reader.read().splitlines()
        assert lines[0] == "<4>[worker 1] WARNING clearip.test: upstream down"
        assert lines[1].endswith(" INFO clearip.test: hello")
        assert lines[1][:4].isdigit()  # starts with the date
        assert len(lines) == 2
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
