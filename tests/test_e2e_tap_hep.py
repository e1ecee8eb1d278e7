"""The relay's tap end to end: HEP3 export to a collector and a `capture --decrypted` socket,
on a real call through the lab (switch over UDP, ClearIP over TLS, provider A over UDP).

The collector is a plain UDP socket in another namespace that keeps every datagram; the test
reads the chunks itself (tests/test_hep.py checks the layout against the HEP3 spec).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.netlab import NetLab

from clearip import hep
from clearip.ctlsock import request
from clearip.relay.tap import TapReader, TapRecord
from tests.calllab import CLEARIP_IP, OUTBOUND, PROV_A_IP, PROXY_IP, ROGUE_IP, SWITCH_IP, Lab
from tests.helpers import wait_until
from tests.netlab import skip_unless_netns

pytestmark = [pytest.mark.root, pytest.mark.slow]

HEP_PORT = 9060
COLLECTOR = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
with open(sys.argv[3], "ab", buffering=0) as out:
    while True:
        d = s.recv(70000)
        out.write(len(d).to_bytes(4, "big") + d)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, Path]]:
    skip_unless_netns()
    with NetLab() as net:
        received = net.workdir / "hep.bin"
        lab = Lab(net, control_extra=f'hep = "{ROGUE_IP}:{HEP_PORT}"')
        proc = lab.rogue.popen(["python3", "-c", COLLECTOR, ROGUE_IP, str(HEP_PORT), str(received)])
        lab.rogue.wait_udp(HEP_PORT, ip=ROGUE_IP, proc=proc)
        yield lab, received


def collected(path: Path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("!I", data, pos)
        out.append(hep.decode(data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return out


def first_lines(packets: list[dict], call_id: bytes) -> list[tuple[str, str, int, str]]:
    return [
        (p["src_ip"], p["dst_ip"], p["ip_proto"], kind(p["payload"]))
        for p in packets
        if b"Call-ID: " + call_id in p["payload"] or b"i: " + call_id in p["payload"]
    ]


def kind(message: bytes) -> str:
    """ "INVITE" for a request, "200" for a response."""
    first = message.split(b"\r\n", 1)[0].decode()
    return first.split(" ")[1] if first.startswith("SIP/2.0 ") else first.split(" ")[0]


def call_id_of(packets: list[dict]) -> bytes:
    for p in packets:
        payload = p["payload"]
        if payload.startswith(b"INVITE sip:+" + OUTBOUND.encode()) and p["src_ip"] == SWITCH_IP:
            for line in payload.split(b"\r\n"):
                if line.lower().startswith(b"call-id:"):
                    return line.split(b":", 1)[1].strip()
    raise AssertionError(f"no INVITE from the switch among {len(packets)} HEP packets")


def test_hep_export_carries_every_message_of_a_call_tls_in_clear(lab: tuple[Lab, Path]) -> None:
    lab_, received = lab
    uas = lab_.provider(lab_.prov_a, "uas_provider_ok.xml")
    res = lab_.call("uac_call.xml", OUTBOUND)
    assert (res.successful, res.failed) == (1, 0), res
    assert uas.wait().successful == 1

    def complete() -> list[tuple[str, str, int, str]]:
        packets = collected(received)
        lines = first_lines(packets, call_id_of(packets))
        return lines if sum(line[3] == "BYE" for line in lines) >= 2 else []

    lines = wait_until(complete, 10.0, lambda: f"the call's BYEs in {collected(received)}", 0.1)
    udp, tcp = 17, 6
    # in from the switch, out to ClearIP over TLS (in clear, as TCP), 302 back, on to A, ...
    expected = [
        (SWITCH_IP, PROXY_IP, udp, "INVITE"),
        (PROXY_IP, SWITCH_IP, udp, "100"),
        (PROXY_IP, CLEARIP_IP, tcp, "INVITE"),
        (CLEARIP_IP, PROXY_IP, tcp, "302"),
        (PROXY_IP, CLEARIP_IP, tcp, "ACK"),
        (PROXY_IP, PROV_A_IP, udp, "INVITE"),
        (PROV_A_IP, PROXY_IP, udp, "200"),
        (PROXY_IP, SWITCH_IP, udp, "200"),
        (SWITCH_IP, PROXY_IP, udp, "ACK"),
        (PROXY_IP, PROV_A_IP, udp, "ACK"),
        (SWITCH_IP, PROXY_IP, udp, "BYE"),
        (PROXY_IP, PROV_A_IP, udp, "BYE"),
    ]
    for item in expected:
        assert item in lines, (item, lines)
    assert all("0.0.0.0" not in (src, dst) for src, dst, _, _ in lines)
    workers = lab_.status()
    assert workers["counters"]["invites"] >= 1


def test_capture_tap_gets_the_clearip_leg_in_clear_and_ends_with_the_capture(
    lab: tuple[Lab, Path],
) -> None:
    lab_, _ = lab
    socket_path = str(lab_.net.workdir / f"capture-{os.getpid()}.sock")
    control = str(lab_.net.workdir / "ctl.sock")
    reader = TapReader(socket_path)
    try:
        assert request(control, "tap", path=socket_path, transports=["tls"]) == {"workers": 2}
        uas = lab_.provider(lab_.prov_a, "uas_provider_ok.xml")
        res = lab_.call("uac_call.xml", OUTBOUND)
        assert (res.successful, res.failed) == (1, 0), res
        uas.wait()
        records: list[TapRecord] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(records) < 3:
            rec = reader.read(timeout=0.5)
            if rec is not None:
                records.append(rec)
        assert all(r.transport == "tls" and r.upstream for r in records), records
        assert [(r.direction, kind(r.data)) for r in records] == [
            ("out", "INVITE"),
            ("in", "302"),
            ("out", "ACK"),
        ]
        assert f"INVITE sip:+{OUTBOUND}@".encode() in records[0].data
        assert records[0].dst == (CLEARIP_IP, 5061)
        assert request(control, "untap", path=socket_path) == {}
        uas = lab_.provider(lab_.prov_a, "uas_provider_ok.xml")
        res = lab_.call("uac_call.xml", OUTBOUND)
        assert (res.successful, res.failed) == (1, 0), res
        uas.wait()
        assert reader.read(timeout=1.0) is None  # no copies after untap
    finally:
        request(control, "untap", path=socket_path)
        reader.close()
