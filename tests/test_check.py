"""`clearipctl check` (SPEC §2): the checklist, its exit status and its JSON."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clearip import checks
from clearip.cli import main
from clearip.config import Config, load_config, parse_config


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A loopback port free for UDP and TCP both, and for the worker port above it (+10)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 11 > 65535:
            continue
        try:
            for p, k in ((port, socket.SOCK_STREAM), (port, socket.SOCK_DGRAM)):
                with socket.socket(socket.AF_INET, k) as s:
                    s.bind(("127.0.0.1", p))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port + 10))
        except OSError:
            continue
        return port
    raise RuntimeError("no free loopback port found")


def write_config(tmp_path: Path, *, trusted: bool = True, port: int = 0) -> Path:
    port = port or free_port()
    tls_port = free_port(socket.SOCK_STREAM)
    sources = '["192.0.2.0/24"]' if trusted else "[]"
    path = tmp_path / "proxy.toml"
    path.write_text(
        f"""
[listen]
udp = ["127.0.0.1:{port}"]
tcp = ["127.0.0.1:{port}"]
tls = ["127.0.0.1:{tls_port}"]

[clearip]
uri = "sip:clearip.invalid:5061;transport=tls"

[trust]
sources = {sources}

[fastpath]
enabled = false

[relay]
workers = 1

[control]
socket = "{tmp_path}/run/control.sock"
state_dir = "{tmp_path}/state"
metrics = ""
"""
    )
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Iterator[Path]:
    yield write_config(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def lines_of(out: str, status: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(status)]


def test_good_config_passes_without_network(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--config", str(config_file), "--no-network")
    assert code == 0, out
    assert not lines_of(out, "[FAIL]")
    for name in (
        "config",
        "privileges",
        "port udp 127.0.0.1:",
        "port tcp 127.0.0.1:",
        "port tls 127.0.0.1:",
        "worker ports udp 127.0.0.1",
        "fast path",
        "state_dir",
        "control socket",
        "tls certificate",
        "trusted sources",
        "clearip",
    ):
        assert name in out, name
    assert "not checked (--no-network)" in out
    assert "0 failed" in out.splitlines()[-1]
    assert (config_file.parent / "state").is_dir()  # created, as the proxy would
    assert not list((config_file.parent / "state").iterdir())  # the probe file is gone


def test_port_in_use_fails_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    path = write_config(tmp_path, port=port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        code, out, _ = run(capsys, "--config", str(path), "--no-network")
    assert code == 1
    failures = lines_of(out, "[FAIL]")
    assert len(failures) == 1, out
    assert f"port udp 127.0.0.1:{port}" in failures[0]
    assert "in use by another program" in failures[0]
    assert "fix: stop the other program" in out and "listen.udp" in out


def test_tcp_listener_in_use(tmp_path: Path) -> None:
    port = free_port()
    config = load_config(str(write_config(tmp_path, port=port)))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        results = checks.check_ports(config)
    bad = [c for c in results if c.status == "fail"]
    assert [c.name for c in bad] == [f"port tcp 127.0.0.1:{port}"]
    assert "listen.tcp" in bad[0].fix


def test_worker_port_in_use(tmp_path: Path) -> None:
    port = free_port()
    config = load_config(str(write_config(tmp_path, port=port)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port + 10))
        results = checks.check_ports(config)
    bad = [c for c in results if c.status == "fail"]
    assert len(bad) == 1 and str(port + 10) in bad[0].name + bad[0].detail


def test_port_of_running_proxy_is_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    config = load_config(str(write_config(tmp_path, port=port)))
    monkeypatch.setattr(checks, "request", lambda *a, **k: {"pong": True})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        results = checks.check_ports(config)
    mine = next(c for c in results if c.name == f"port udp 127.0.0.1:{port}")
    assert mine.ok and "in use by the running proxy" in mine.detail


@pytest.mark.timeout(30)  # a lookup that hung would fail the test here
def test_unresolvable_clearip_fails_fast_with_fix(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--config", str(config_file))
    assert code == 1
    failures = lines_of(out, "[FAIL]")
    assert len(failures) == 1 and "clearip dns" in failures[0], out
    assert "clearip.invalid" in failures[0]
    assert "fix: " in out


@pytest.mark.timeout(20)  # the stuck lookup sleeps 30 s: only the check's own bound ends it
def test_dns_timeout_is_a_failure_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    def stuck(*args: object, **kwargs: object) -> list[object]:
        time.sleep(30)
        return []

    monkeypatch.setattr(checks.socket, "getaddrinfo", stuck)
    config = Config()  # the default ClearIP host; the lookup never answers
    results = checks.check_clearip(config, timeout=0.2)
    assert [(c.name, c.status) for c in results] == [("clearip dns", "fail")]
    assert "no answer within" in results[0].detail and results[0].fix


def test_clearip_connect_refused(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_STREAM)  # nobody listens there
    config = load_config(str(_with_uri(tmp_path, f"sip:127.0.0.1:{port};transport=tcp")))
    results = checks.check_clearip(config, timeout=1.0)
    assert [(c.name, c.status) for c in results] == [
        ("clearip dns", "ok"),
        ("clearip connect", "fail"),
    ]
    assert results[1].fix


def test_clearip_tls_verify_failure_names_ca_file(tmp_path: Path) -> None:
    """A TLS server with a self-signed certificate: refused by the system CA store, with the
    fix naming clearip.ca_file; accepted, with its TLS version, once ca_file names it."""
    import ssl
    import subprocess
    import threading

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _addr = listener.accept()
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)
                except (ssl.SSLError, OSError):
                    pass

        threading.Thread(target=serve, daemon=True).start()
        uri = f"sip:127.0.0.1:{port};transport=tls"
        config = load_config(str(_with_uri(tmp_path, uri)))
        results = checks.check_clearip(config, timeout=2.0)
        assert [(c.name, c.status) for c in results][-1] == ("clearip tls", "fail")
        assert "clearip.ca_file" in results[-1].fix

        config = load_config(str(_with_uri(tmp_path, uri, f'ca_file = "{cert}"')))
        results = checks.check_clearip(config, timeout=2.0)
        assert [c.status for c in results] == ["ok", "ok", "ok"], results
        assert "TLSv1." in results[-1].detail and "verified" in results[-1].detail


def _with_uri(tmp_path: Path, uri: str, extra: str = "") -> Path:
    path = write_config(tmp_path)
    text = path.read_text().replace(
        'uri = "sip:clearip.invalid:5061;transport=tls"', f'uri = "{uri}"\n{extra}'
    )
    path.write_text(text)
    return path


def test_empty_trust_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, trusted=False)
    code, out, _ = run(capsys, "--config", str(path), "--no-network")
    assert code == 0, out
    warnings = lines_of(out, "[warn]")
    assert len(warnings) == 1 and "trusted sources" in warnings[0]
    assert "clearipctl allow" in out


def test_bad_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[listen]\nudpp = ["127.0.0.1:5060"]\n')
    code, out, _ = run(capsys, "--config", str(path), "--no-network")
    assert code == 1
    assert "config error" in out and "listen.udpp" in out
    assert lines_of(out, "[FAIL]")[0].split()[1] == "config"


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", str(tmp_path / "nope.toml"), "--no-network")
    assert code == 1 and "config error" in out


def test_json_output(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", str(config_file), "--no-network", "--json")
    assert code == 0
    items = json.loads(out)
    assert isinstance(items, list) and items
    assert set(items[0]) == {"name", "ok", "detail", "fix", "warning", "status"}
    assert {i["status"] for i in items} <= {"ok", "warn", "fail"}
    assert items[0]["name"] == "config"


def test_json_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[relay]\nworkers = -1\n")
    code, out, _ = run(capsys, "--config", str(path), "--json")
    assert code == 1
    (item,) = json.loads(out)
    assert item["status"] == "fail" and "relay.workers" in item["detail"] and item["fix"]


def test_tls_certificate_checked(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("not a certificate\n")
    path = write_config(tmp_path)
    path.write_text(
        path.read_text().replace(
            "[clearip]", f'tls_cert = "{cert}"\ntls_key = "{tmp_path}/missing.pem"\n[clearip]'
        )
    )
    result = checks.check_tls_certificate(load_config(str(path)))
    assert result.status == "fail" and "missing.pem" in result.detail and result.fix
    key = tmp_path / "k.pem"
    key.write_text("nor a key\n")
    path.write_text(path.read_text().replace(f"{tmp_path}/missing.pem", str(key)))
    result = checks.check_tls_certificate(load_config(str(path)))
    assert result.status == "fail" and "cannot load" in result.detail


def test_unexpected_exception_becomes_a_failed_check(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(config: object) -> checks.Check:
        raise RuntimeError("surprise")

    monkeypatch.setattr(checks, "check_state_dir", boom)
    results = checks.run_checks(str(config_file), load_config(str(config_file)), network=False)
    bad = checks.failed(results)
    assert [c.name for c in bad] == ["state_dir"]
    assert "RuntimeError: surprise" in bad[0].detail


def test_state_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace(f"{tmp_path}/state", f"{blocker}/state"))
    result = checks.check_state_dir(load_config(str(path)))
    assert result.status == "fail" and result.fix


@pytest.mark.root
def test_fastpath_auto_probes_bcc_headers_and_nft(tmp_path: Path) -> None:
    """As root: the fast-path probes run (a dry run only: no table is left behind)."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("enabled = false", 'enabled = "auto"'))
    results = checks.check_fastpath(load_config(str(path)))
    assert [c.name for c in results] == ["bcc", "kernel headers", "nftables"]
    # in auto mode, a missing piece is a warning, never a failure
    assert not checks.failed(results)


def test_fastpath_on_failure_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clearip.fastpath import bpf
    from clearip.fastpath.errors import FastPathUnavailable

    def no_bcc() -> None:
        raise FastPathUnavailable("bcc is not importable", "apt-get install python3-bpfcc")

    monkeypatch.setattr(bpf, "_import_bcc", no_bcc)
    monkeypatch.setattr(checks, "check_nftables", lambda config: checks.Check("nftables", True, ""))
    path = write_config(tmp_path)
    for mode, status in (('"on"', "fail"), ('"auto"', "warn")):
        path.write_text(path.read_text().replace("enabled = false", f"enabled = {mode}"))
        bcc = checks.check_fastpath(load_config(str(path)))[0]
        assert (bcc.name, bcc.status) == ("bcc", status)
        assert bcc.fix == "apt-get install python3-bpfcc"
        path.write_text(path.read_text().replace(f"enabled = {mode}", "enabled = false"))


def test_hep_collector_checked_when_configured() -> None:
    assert checks.check_hep(Config()).detail == "off (control.hep is empty)"
    on = parse_config('[control]\nhep = "127.0.0.1:9060"\n')
    assert checks.check_hep(on).status == "ok" and "127.0.0.1:9060" in checks.check_hep(on).detail
    bad = parse_config('[control]\nhep = "homer.invalid:9060"\n')
    result = checks.check_hep(bad, timeout=3.0)
    assert result.status == "warn" and "homer.invalid" in result.detail and result.fix
