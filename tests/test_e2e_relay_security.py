"""Issue 11 end to end, in the shared call lab (two workers, ClearIP over TLS, fast path off so
the relay's own checks are what is tested):

- a 2xx that matches no transaction is never forwarded statelessly to the Via under ours
  (on main it was: a trusted or pinholed host could bounce responses anywhere), only counted;
- a forged 302 from a host that learnt the branch (as any provider sees our Via) is ignored:
  the call goes where ClearIP's own, later 302 says, and the forger gets nothing;
- a 302 whose Identity and P-Asserted-Identity are folded over two lines (legal SIP, and on
  main a call that never ended) completes;
- TLS toward a next hop is verified (on main: CERT_NONE): a provider whose certificate the
  system store does not know gets no call, unless its CA is configured or it is exempted.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.netlab import NetLab
from lab.sippy_runner import TlsFront, make_tls_files, start_sipp

from tests.calllab import FOLDED, PROV_B_IP, PROXY_IP, REPO, ROGUE_IP, SLOW, VIA_TLS, Lab
from tests.helpers import wait_until
from tests.netlab import skip_unless_netns

pytestmark = [pytest.mark.root, pytest.mark.slow]

CTL = str(REPO / ".venv" / "bin" / "clearipctl")

FORGE = r"""
import socket, sys
branch, call_id, proxy, ports = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
forged = (
    "SIP/2.0 302 Moved Temporarily\r\n"
    f"Via: SIP/2.0/UDP {proxy}:5070;branch={branch};rport\r\n"
    "From: <sip:+13035550199@10.77.0.11>;tag=x\r\n"
    f"To: <sip:+18085550000@{proxy}>;tag=forged\r\n"
    f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
    "Contact: <sip:+18005550199@10.77.0.66:5060>\r\n"
    "Identity: forged.passport.sig;info=<https://evil.example/c.pem>;alg=ES256;ppt=shaken\r\n"
    "Content-Length: 0\r\n\r\n"
).encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in ports:
    for _ in range(3):
        s.sendto(forged, (proxy, int(port)))
"""

UNMATCHED = r"""
import socket, sys
proxy, victim, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
for n, port in enumerate(ports):
    stray = (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP {proxy}:{port};branch=z9hG4bK.cip0.00000000.{n:016x};rport\r\n"
        f"Via: SIP/2.0/UDP {victim}:5060;branch=z9hG4bK-victim{n}\r\n"
        "From: <sip:+13035550199@10.77.0.11>;tag=a\r\n"
        f"To: <sip:+12025550123@{proxy}>;tag=b\r\n"
        f"Call-ID: stray-{n}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:x@{victim}:5060>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(stray, (proxy, int(port)))
"""

LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5060))
s.settimeout(float(sys.argv[2]))
try:
    print(s.recv(65535).split(b"\r\n")[0].decode())
except TimeoutError:
    print("nothing")
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    skip_unless_netns()
    with NetLab() as net:
        yield Lab(net)


def test_a_forged_302_from_a_sniffing_host_is_ignored(lab: Lab) -> None:
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml")
    listener = lab.rogue.popen(["python3", "-c", LISTEN, ROGUE_IP, "6"])
    lab.rogue.wait_udp(5060, ip=ROGUE_IP, proc=listener)
    before = lab.status().get("drops", {}).get("response_forged", 0)
    call = start_sipp(
        lab.switch, "uac_call.xml", remote=f"{PROXY_IP}:5060", service=SLOW, timeout=20
    )
    deadline = time.monotonic() + 5
    asked: list[dict] = []
    while not asked:  # ClearIP answers SLOW after 1 s: the forger has that long
        assert time.monotonic() < deadline, "the INVITE never reached ClearIP"
        asked = [
            r for r in lab.emulator_requests()
            if r.get("number") == f"+{SLOW}" and r["method"] == "INVITE"
        ]  # fmt: skip
        time.sleep(0.02)
    ports = ["5060", *(str(p) for p in range(5070, 5070 + len(lab.status()["workers"])))]
    lab.rogue.run(["python3", "-c", FORGE, asked[-1]["branch"], asked[-1]["call_id"], PROXY_IP,
                   *ports])  # fmt: skip
    res = call.wait()
    assert (res.successful, res.failed) == (1, 0), res.describe()
    assert uas.wait().successful == 1  # the real provider got the call ...
    listener.wait(15)
    log = Path(listener.log_path).read_text().strip()  # type: ignore[attr-defined]
    assert log == "nothing", log  # ... the forger nothing
    drops = lab.status().get("drops", {})
    assert drops.get("response_forged", 0) > before, json.dumps(drops)


def test_an_unmatched_2xx_is_counted_never_forwarded_statelessly(lab: Lab) -> None:
    listener = lab.rogue.popen(["python3", "-c", LISTEN, ROGUE_IP, "3"])
    lab.rogue.wait_udp(5060, ip=ROGUE_IP, proc=listener)
    before = lab.status().get("drops", {}).get("response_unmatched", 0)
    ports = ["5060", *(str(p) for p in range(5070, 5070 + len(lab.status()["workers"])))]
    # from the trusted switch, and from a provider (the fast path is off: it reaches the relay)
    for host in (lab.switch, lab.prov_a):
        host.run(["python3", "-c", UNMATCHED, PROXY_IP, ROGUE_IP, *ports], timeout=10)
    listener.wait(15)
    log = Path(listener.log_path).read_text().strip()  # type: ignore[attr-defined]
    assert log == "nothing", log  # the victim under our Via got nothing
    expected = before + 2 * len(ports)
    wait_until(
        lambda: lab.status().get("drops", {}).get("response_unmatched", 0) >= expected,
        5.0,
        f"{2 * len(ports)} more response_unmatched drops",
    )


def test_a_folded_identity_from_clearip_still_completes_the_call(lab: Lab) -> None:
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml")
    res = lab.call("uac_call.xml", FOLDED)
    assert (res.successful, res.failed) == (1, 0), res.describe()
    got = uas.wait()
    assert got.successful == 1, got.describe()
    (invite,) = got.received("INVITE")
    (pai,) = invite.header("P-Asserted-Identity")
    assert "verstat=TN-Validation-Passed" in pai  # one line, unfolded


def test_tls_to_a_next_hop_is_verified_unless_configured_otherwise(lab: Lab) -> None:
    files = make_tls_files(lab.net.workdir / "tls", "provb", ips=[PROV_B_IP])
    original = lab.config.read_text()

    def routing(extra: str) -> None:
        text = original.replace("provider_timeout = 2.0", f"provider_timeout = 2.0\n{extra}")
        lab.config.write_text(text)
        out = subprocess.run([CTL, "reload", "--config", str(lab.config)], capture_output=True,
                             text=True, timeout=15)  # fmt: skip
        assert out.returncode == 0, out.stderr

    def call_completes() -> bool:
        uas = start_sipp(lab.prov_b, "uas_provider_ok.xml", transport="t1", local_port=5062,
                         timeout=15)  # fmt: skip
        res = lab.call("uac_call.xml", VIA_TLS)
        got = uas.stop() if res.successful == 0 else uas.wait()
        return res.successful == 1 and got.successful == 1

    try:
        with TlsFront.server(lab.prov_b, 5062, cert=files.cert, key=files.key, listen_port=5061):
            # the system store does not know the provider's CA: no call reaches it
            res = lab.call("uac_expect_503.xml", VIA_TLS)
            assert (res.successful, res.failed) == (1, 0), res.describe()
            routing(f'tls_ca_file = "{files.ca}"')
            assert call_completes()
            routing(f'tls_verify_exempt = ["{PROV_B_IP}"]')
            assert call_completes()
    finally:
        lab.config.write_text(original)
        subprocess.run([CTL, "reload", "--config", str(lab.config)], timeout=15)
