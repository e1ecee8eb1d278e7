"""Two proxies side by side (SPEC §6): a switch routes calls to either; each dialog stays on the
proxy that took it (its Record-Route), and one proxy going away does not touch the other.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from lab.netlab import Host, NetLab
from lab.sippy_runner import run_sipp

from tests.calllab import OUTBOUND, PROXY_IP, REPO, Lab, status_of
from tests.netlab import skip_unless_netns

pytestmark = [pytest.mark.root, pytest.mark.slow]

SECOND_IP = "10.77.0.9"  # inside the switch's trusted /28, like the first proxy
CTL = str(REPO / ".venv" / "bin" / "clearipctl")


class Pair:
    def __init__(self, net: NetLab) -> None:
        self.lab = Lab(net)
        self.second: Host = net.add_host("proxy2", f"{SECOND_IP}/24", None)
        text = self.lab.config.read_text().replace(PROXY_IP, SECOND_IP)
        work = net.workdir / "proxy2"
        work.mkdir()
        text = text.replace(f"{net.workdir}/ctl.sock", f"{work}/ctl.sock")
        text = text.replace(f"{net.workdir}/state", f"{work}/state")
        self.config2 = work / "proxy.toml"
        self.config2.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(REPO / "control")}
        self.proc2 = self.second.popen([CTL, "run", "--config", str(self.config2)], env=env)
        self.second.wait_udp(5060, ip=SECOND_IP, proc=self.proc2)

    def status2(self) -> dict[str, Any]:
        return status_of(self.config2)

    def call_via(self, ip: str) -> Any:
        return run_sipp(
            self.lab.switch, "uac_call.xml", remote=f"{ip}:5060", service=OUTBOUND, timeout=20
        )


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    skip_unless_netns()
    with NetLab() as net:
        yield Pair(net)


def test_each_dialog_stays_on_the_proxy_that_took_it(pair: Pair) -> None:
    lab = pair.lab
    first_before = lab.counters()["invites"]
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml", calls=2)
    for ip in (PROXY_IP, SECOND_IP):
        res = pair.call_via(ip)
        assert (res.successful, res.failed) == (1, 0), (ip, res)
    got = uas.wait()
    assert got.successful == 2, got
    routes = [invite.header("Record-Route")[0] for invite in got.received("INVITE")]
    assert [PROXY_IP in r for r in routes] == [True, False], routes
    assert [SECOND_IP in r for r in routes] == [False, True], routes
    # the BYE of each call came through the proxy that Record-Routed it
    byes = got.received("BYE")
    assert len(byes) == 2
    assert [b.header("Via")[0].split()[1].split(":")[0] for b in byes] == [PROXY_IP, SECOND_IP]
    assert lab.counters()["invites"] - first_before == 1
    second = pair.status2()["counters"]
    assert second["invites"] == 1 and second["calls_active"] == 0


def test_one_proxy_down_leaves_the_other_serving(pair: Pair) -> None:
    lab = pair.lab
    assert lab.proxy.stop(lab.proxy_proc, sig=signal.SIGKILL) is not None
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml")
    res = pair.call_via(SECOND_IP)
    assert (res.successful, res.failed) == (1, 0), res
    assert uas.wait().successful == 1
    assert pair.status2()["upstream"]["state"] == "connected"
