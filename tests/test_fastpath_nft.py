"""The nftables fast path (SPEC §5) against the real kernel, inside a NetLab.

nftables state is per network namespace, so every table here is made in the `proxy` host's
namespace by an agent process started there (never in the root namespace, which the last test
checks). The agents -- one per host, a small JSON-lines RPC over stdin/stdout -- also run the
listeners and the probes, so no test pays a Python start-up per packet.

Lab: proxy 10.77.0.10 / fd77::10, client .11 / ::11 (trusted), rogue .66 / ::66 (not).
Negative probes wait PROBE_NO seconds; a drop is only claimed when `dropped_untrusted` moved.
The unit tests at the end need neither root nor nft: they check the batches we build.
"""

from __future__ import annotations

import json
import secrets
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab.netlab import Host, NetLab

from clearip.fastpath import nft as nftmod
from clearip.fastpath.nft import NftError, NftFastPath
from tests.netlab import skip_unless_netns

UDP_PORTS = [5060, 5070, 5071]
TCP_PORTS = [5060, 5061]
OTHER_UDP = 9999  # not a SIP port: must stay reachable from anyone
OTHER_TCP = 9998
PROBE_YES = 3.0  # s: only spent when something is wrong (first IPv6 packet waits for ND)
PROBE_NO = 0.4  # s: a dropped probe costs this much; the counter is the real evidence
CALL_TIMEOUT = 30.0

# One agent per host. Requests: {"op": ..., **args}; replies: {"ok": result} or
# {"error": class name, "message": str(exc), "nft_error": ..., "batch": ...}.
AGENT_PY = r"""
import json, os, socket, sys, threading, traceback

fp = None

def serve_udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, as ::ffff:a.b.c.d
    s.bind(("::", port))
    def loop():
        while True:
            data, addr = s.recvfrom(2048)
            s.sendto(data, addr)
    threading.Thread(target=loop, daemon=True).start()

def serve_tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(64)
    def loop():
        while True:
            conn, _ = s.accept()
            conn.close()
    threading.Thread(target=loop, daemon=True).start()

def udp_probe(dst, port, timeout):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    token = os.urandom(16)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(token, (dst, port))
        try:
            while True:
                data, _ = s.recvfrom(2048)
                if data == token:
                    return True
        except (socket.timeout, ConnectionRefusedError):
            return False

def tcp_probe(dst, port, timeout):
    try:
        socket.create_connection((dst, port), timeout=timeout).close()
        return True
    except OSError:
        return False

def nft_call(method, args, kwargs):
    if method == "__init__":
        global fp
        from clearip.fastpath.nft import NftFastPath
        fp = NftFastPath(*args, **kwargs)
        return None
    if method == "fail_batch_with":
        # test hook: the first batch whose JSON contains args[1] gets args[0] appended, a
        # command nft must refuse; batches before it go through untouched
        bogus, marker = args
        orig = fp._run_locked
        def failing(commands, what):
            if marker not in json.dumps(commands):
                return orig(commands, what)
            fp._run_locked = orig
            return orig([*commands, bogus], what)
        fp._run_locked = failing
        return None
    if method == "trusted":
        return [str(n) for n in fp.trusted]
    return getattr(fp, method)(*args, **kwargs)

for line in sys.stdin:
    req = json.loads(line)
    op = req.pop("op")
    try:
        if op == "nft":
            result = nft_call(req["method"], req.get("args", []), req.get("kwargs", {}))
        else:
            result = globals()[op](**req)
        reply = {"ok": result}
    except Exception as exc:
        traceback.print_exc()
        reply = {"error": type(exc).__name__, "message": str(exc),
                 "nft_error": getattr(exc, "nft_error", None), "batch": getattr(exc, "batch", None)}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


class AgentError(Exception):
    """An exception raised inside an agent; `kind` is its class name."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply["message"])
        self.kind: str = reply["error"]
        self.nft_error: str | None = reply.get("nft_error")
        self.batch: list[Any] | None = reply.get("batch")


class Agent:
    """The RPC end of one host's agent process."""

    def __init__(self, lab: NetLab, host: Host) -> None:
        self.host = host
        self.log_path = lab.workdir / f"agent-{host.name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = host.popen(
                [sys.executable, "-u", "-c", AGENT_PY],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    def call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], CALL_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            log = Path(self.log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"agent in {self.host.name} gave no answer to {op}:\n{log}")
        reply = json.loads(line)
        if "error" in reply:
            raise AgentError(reply)
        return reply["ok"]

    def nft(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.call("nft", method=method, args=list(args), kwargs=kwargs)

    def udp(self, dst: str, port: int, *, expect: bool) -> bool:
        return bool(
            self.call("udp_probe", dst=dst, port=port, timeout=PROBE_YES if expect else PROBE_NO)
        )

    def tcp(self, dst: str, port: int, *, expect: bool) -> bool:
        return bool(
            self.call("tcp_probe", dst=dst, port=port, timeout=PROBE_YES if expect else PROBE_NO)
        )


class Lab:
    """The three hosts, their agents and the table name used in this module."""

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.proxy = lab.add_host("proxy", "10.77.0.10/24", "fd77::10/64")
        self.client = lab.add_host("client", "10.77.0.11/24", "fd77::11/64")
        self.rogue = lab.add_host("rogue", "10.77.0.66/24", "fd77::66/64")
        # a name of this run only, so the root-namespace check below means something
        self.name = f"cliptest{secrets.token_hex(3)}"
        self.p = Agent(lab, self.proxy)
        self.c = Agent(lab, self.client)
        self.r = Agent(lab, self.rogue)

    def trusted_default(self) -> list[str]:
        return [f"{self.client.ip}/32", f"{self.client.ip6}/128"]

    def counters(self) -> dict[str, dict[str, int]]:
        return dict(self.p.nft("counters"))

    def nft_json(self, *args: str) -> list[dict[str, Any]]:
        """`nft -j ARGS` run in the proxy's namespace: the objects listed."""
        out = self.proxy.run(["nft", "-j", *args]).stdout
        return [o for o in json.loads(out)["nftables"] if "metainfo" not in o]

    def set_elems(self, set_name: str) -> list[Any]:
        objs = self.nft_json("list", "set", "inet", self.name, set_name)
        return list(objs[0]["set"].get("elem", []))

    def passes(self, src: Agent, dst: str, port: int, proto: str = "udp") -> bool:
        probe = src.udp if proto == "udp" else src.tcp
        return probe(dst, port, expect=True)

    def dropped(self, src: Agent, dst: str, port: int, proto: str = "udp") -> bool:
        """True when the probe got nothing back AND our drop counter counted it."""
        before = self.counters()["dropped_untrusted"]["packets"]
        probe = src.udp if proto == "udp" else src.tcp
        got_through = probe(dst, port, expect=False)
        after = self.counters()["dropped_untrusted"]["packets"]
        return not got_through and after > before


def _nft_unavailable_reason() -> str | None:
    try:
        import nftables  # noqa: F401
    except ImportError:
        return "needs python3-nftables (Debian package): `import nftables` failed"
    if shutil.which("nft") is None:
        return "needs the nft command (Debian package nftables)"
    return None


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    skip_unless_netns()
    reason = _nft_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with NetLab() as netlab:
        env = Lab(netlab)
        try:
            env.p.nft("__init__", env.name, UDP_PORTS, TCP_PORTS)
            # probe: can this kernel take our table at all (nf_tables in a namespace)?
            env.p.nft("load", env.trusted_default())
        except AgentError as exc:
            pytest.skip(f"nftables does not work in a network namespace here: {exc}")
        for port in [*UDP_PORTS, OTHER_UDP]:
            env.p.call("serve_udp", port=port)
        for port in [*TCP_PORTS, OTHER_TCP]:
            env.p.call("serve_tcp", port=port)
        env.proxy.wait_udp(OTHER_UDP)
        env.proxy.wait_tcp(OTHER_TCP)
        yield env


@pytest.fixture
def env(lab: Lab) -> Lab:
    """The module's lab with a freshly loaded table (client trusted, no pinholes)."""
    lab.p.nft("load", lab.trusted_default())
    return lab


# ---------------------------------------------------------------------- kernel tests


@pytest.mark.root
def test_only_trusted_sources_reach_the_sip_ports_ipv4(env: Lab) -> None:
    proxy = env.proxy.ip
    assert proxy
    assert env.passes(env.c, proxy, 5060)
    assert env.dropped(env.r, proxy, 5060)
    assert env.dropped(env.r, proxy, 5071)  # every port of the UDP list
    counters = env.counters()
    assert counters["passed"]["packets"] > 0
    assert counters["passed"]["bytes"] > 0
    assert counters["dropped_untrusted"]["packets"] > 0
    assert counters["passed_pinhole"]["packets"] == 0
    # TCP: a dropped SYN, so the rogue's connect times out and learns nothing
    assert env.passes(env.c, proxy, 5061, "tcp")
    assert env.dropped(env.r, proxy, 5061, "tcp")
    # the rest of the host is untouched, for anyone
    assert env.passes(env.r, proxy, OTHER_UDP)
    assert env.passes(env.r, proxy, OTHER_TCP, "tcp")


@pytest.mark.root
def test_only_trusted_sources_reach_the_sip_ports_ipv6(env: Lab) -> None:
    proxy6 = env.proxy.ip6
    assert proxy6
    assert env.passes(env.c, proxy6, 5060)
    assert env.dropped(env.r, proxy6, 5060)
    assert env.passes(env.c, proxy6, 5060, "tcp")
    assert env.dropped(env.r, proxy6, 5060, "tcp")
    assert env.passes(env.r, proxy6, OTHER_UDP)
    # the client's IPv4 /32 does not leak into IPv6, nor the reverse
    env.p.nft("set_trusted", [f"{env.client.ip6}/128"])
    assert env.dropped(env.c, env.proxy.ip or "", 5060)
    assert env.passes(env.c, proxy6, 5060)


@pytest.mark.root
def test_set_trusted_applies_live(env: Lab) -> None:
    proxy = env.proxy.ip or ""
    assert env.dropped(env.r, proxy, 5060)
    env.p.nft("set_trusted", [*env.trusted_default(), "10.77.0.66", "fd77::66"])
    assert env.passes(env.r, proxy, 5060)
    assert env.passes(env.r, env.proxy.ip6 or "", 5060)
    assert env.set_elems("trusted4") == ["10.77.0.11", "10.77.0.66"]
    env.p.nft("set_trusted", env.trusted_default())
    assert env.dropped(env.r, proxy, 5060)
    assert env.set_elems("trusted4") == ["10.77.0.11"]
    assert env.set_elems("trusted6") == ["fd77::11"]
    # an empty list empties both sets: then nobody gets in
    env.p.nft("set_trusted", [])
    assert env.set_elems("trusted4") == [] and env.set_elems("trusted6") == []
    assert env.dropped(env.c, proxy, 5060)


@pytest.mark.root
def test_pinhole_admits_then_expires(env: Lab) -> None:
    proxy = env.proxy.ip or ""
    before = env.counters()["passed_pinhole"]["packets"]
    env.p.nft("add_pinhole", env.rogue.ip, 2)
    left = env.p.nft("pinholes")
    assert 1 <= left[env.rogue.ip] <= 2  # it has a timeout: it will go away by itself
    assert env.passes(env.r, proxy, 5060)
    assert env.counters()["passed_pinhole"]["packets"] > before
    deadline = time.monotonic() + 6.0  # 2 s timeout, plus slack for a loaded machine
    while env.r.udp(proxy, 5060, expect=False):
        assert time.monotonic() < deadline, "pinhole still open 6 s after a 2 s timeout"
        time.sleep(0.2)
    assert env.dropped(env.r, proxy, 5060)
    assert env.rogue.ip not in env.p.nft("pinholes")


@pytest.mark.root
def test_pinhole_ipv6_remove_and_refresh(env: Lab) -> None:
    proxy6 = env.proxy.ip6 or ""
    env.p.nft("add_pinhole", env.rogue.ip6, 30)
    assert env.passes(env.r, proxy6, 5060)
    env.p.nft("add_pinhole", env.rogue.ip6, 120)  # again: its clock restarts, no error
    assert 100 < env.p.nft("pinholes")[env.rogue.ip6] <= 120
    env.p.nft("remove_pinhole", env.rogue.ip6)
    assert env.dropped(env.r, proxy6, 5060)
    env.p.nft("remove_pinhole", env.rogue.ip6)  # gone already: still no error
    # an IPv4-mapped address (as a dual-stack socket reports it) opens the IPv4 pinhole
    env.p.nft("add_pinhole", f"::ffff:{env.rogue.ip}", 30)
    assert env.set_elems("pinhole4")[0]["elem"]["val"] == env.rogue.ip
    assert env.passes(env.r, env.proxy.ip or "", 5060)


@pytest.mark.root
def test_load_twice_leaves_one_table_without_duplicates(env: Lab) -> None:
    env.p.nft("add_pinhole", env.rogue.ip, 60)
    env.p.nft("load", [*env.trusted_default(), "192.0.2.0/24"])
    env.p.nft("load", [*env.trusted_default(), "192.0.2.0/24"])
    ours = [t for t in env.nft_json("list", "tables") if t["table"]["name"] == env.name]
    assert len(ours) == 1
    objs = env.nft_json("list", "table", "inet", env.name)
    template = nftmod.read_template()
    for kind in ("set", "counter", "chain", "rule"):
        assert sum(kind in o for o in objs) == sum(kind in o for o in template), kind
    assert env.set_elems("trusted4") == ["10.77.0.11", {"prefix": {"addr": "192.0.2.0", "len": 24}}]
    assert env.set_elems("sip_udp") == UDP_PORTS
    assert env.set_elems("sip_tcp") == TCP_PORTS
    assert env.set_elems("pinhole4") == []  # a load starts from scratch
    chain = next(o["chain"] for o in objs if o.get("chain", {}).get("name") == "input")
    assert (chain["hook"], chain["prio"], chain["policy"]) == ("input", -10, "accept")
    assert env.dropped(env.r, env.proxy.ip or "", 5060)


@pytest.mark.root
def test_unload_removes_the_table_and_is_idempotent(env: Lab) -> None:
    assert env.p.nft("exists") is True
    env.p.nft("unload")
    assert env.p.nft("exists") is False
    assert env.name not in [t["table"]["name"] for t in env.nft_json("list", "tables")]
    env.p.nft("unload")  # absent: no error
    assert env.passes(env.r, env.proxy.ip or "", 5060)  # no filter left behind
    with pytest.raises(AgentError) as err:
        env.p.nft("set_trusted", ["10.77.0.66"])
    assert err.value.kind == "NftError" and "No such file or directory" in str(err.value)


@pytest.mark.root
def test_bad_element_is_refused_and_changes_nothing(env: Lab) -> None:
    before4, before6 = env.set_elems("trusted4"), env.set_elems("trusted6")
    for bad in (["10.77.0.66", "not-an-ip"], ["10.77.0.66/24"], ["fd77::66/129"]):
        with pytest.raises(AgentError) as err:
            env.p.nft("set_trusted", bad)
        assert err.value.kind == "NftError"
        assert repr(bad[-1]) in str(err.value)
        assert err.value.batch is None  # refused before anything went to nft
    with pytest.raises(AgentError, match="not-an-ip"):
        env.p.nft("load", ["not-an-ip"])
    with pytest.raises(AgentError, match="pinhole"):
        env.p.nft("add_pinhole", "not-an-ip", 5)
    with pytest.raises(AgentError, match="lifetime"):
        env.p.nft("add_pinhole", env.rogue.ip, 0)
    assert (env.set_elems("trusted4"), env.set_elems("trusted6")) == (before4, before6)
    assert env.p.nft("trusted") == env.trusted_default()
    assert env.p.nft("pinholes") == {}
    assert env.passes(env.c, env.proxy.ip or "", 5060)
    assert env.dropped(env.r, env.proxy.ip or "", 5060)


@pytest.mark.root
def test_a_batch_nft_refuses_changes_nothing(env: Lab) -> None:
    """The kernel-side atomicity: set_trusted and load are each ONE transaction.

    The agent appends a command nft must refuse to the batch carrying the new elements (the
    one naming fd77::66). Had set_trusted() sent its flushes in a batch of their own, the
    trusted sets would now be empty; had load() deleted the old table apart from making the
    new one (the batch with the hook), there would be no table.
    """
    bogus = {
        "add": {
            "element": {
                "family": "inet",
                "table": env.name,
                "name": "nosuch",
                "elem": ["192.0.2.1"],
            }
        }
    }
    env.p.nft("fail_batch_with", bogus, "fd77::66")
    with pytest.raises(AgentError) as err:
        env.p.nft("set_trusted", ["10.77.0.66", "fd77::66"])
    assert env.set_elems("trusted4") == ["10.77.0.11"]
    assert env.set_elems("trusted6") == ["fd77::11"]
    assert err.value.kind == "NftError"
    assert "No such file or directory" in (err.value.nft_error or "")
    assert (
        err.value.batch
        and {"flush": {"set": {"family": "inet", "table": env.name, "name": "trusted4"}}}
        in err.value.batch
    )
    assert '[1] {"flush"' in str(err.value)  # the operator sees the batch, numbered
    assert env.p.nft("trusted") == env.trusted_default()  # bookkeeping not committed either
    assert env.dropped(env.r, env.proxy.ip or "", 5060)
    assert env.passes(env.c, env.proxy.ip or "", 5060)
    # a failed reload leaves the loaded table, not none: the delete of the old table in the
    # same batch did not happen
    env.p.nft("add_pinhole", env.rogue.ip, 60)
    env.p.nft("fail_batch_with", bogus, '"hook"')
    with pytest.raises(AgentError):
        env.p.nft("load", [])
    assert env.set_elems("trusted4") == ["10.77.0.11"]
    assert env.rogue.ip in env.p.nft("pinholes")


@pytest.mark.root
def test_overlapping_cidrs_are_collapsed(env: Lab) -> None:
    env.p.nft(
        "set_trusted",
        [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.77.0.11",
            "fd77::/65",
            "fd77:0:0:0:8000::/65",
            "fd77::11",
        ],
    )
    assert env.set_elems("trusted4") == [{"prefix": {"addr": "10.0.0.0", "len": 8}}]
    assert env.set_elems("trusted6") == [{"prefix": {"addr": "fd77::", "len": 64}}]
    assert env.p.nft("trusted") == ["10.0.0.0/8", "fd77::/64"]
    assert env.passes(env.r, env.proxy.ip or "", 5060)  # 10.77.0.66 is in 10/8
    env.p.nft("load", ["10.77.0.0/25", "10.77.0.128/25", "10.77.0.66"])  # adjacent + inside
    assert env.set_elems("trusted4") == [{"prefix": {"addr": "10.77.0.0", "len": 24}}]


@pytest.mark.root
def test_check_is_a_dry_run(lab: Lab) -> None:
    lab.p.nft("unload")
    try:
        lab.p.nft("check", lab.trusted_default())
        assert lab.p.nft("exists") is False
    finally:
        lab.p.nft("load", lab.trusted_default())


@pytest.mark.root
def test_root_namespace_untouched(lab: Lab) -> None:
    res = subprocess.run(
        ["nft", "-j", "list", "tables"], capture_output=True, text=True, check=False, timeout=10
    )
    if res.returncode == 0:
        names = [o["table"]["name"] for o in json.loads(res.stdout)["nftables"] if "table" in o]
        assert lab.name not in names


# ---------------------------------------------------------------------- unit tests (no root)


def test_normalise_collapses_and_splits_families() -> None:
    v4, v6 = nftmod.normalise_sources(["10.1.0.0/16", "10.0.0.0/8", "2001:db8::1", "192.0.2.1"])
    assert [str(n) for n in v4] == ["10.0.0.0/8", "192.0.2.1/32"]
    assert [str(n) for n in v6] == ["2001:db8::1/128"]


@pytest.mark.parametrize("bad", ["not-an-ip", "10.0.0.1/8", "", " 10.0.0.1", "fd77::/129"])
def test_normalise_refuses_without_repair(bad: str) -> None:
    with pytest.raises(NftError, match="bad trusted source"):
        nftmod.normalise_sources([bad])


def test_pinhole_seconds_round_up_to_an_integer() -> None:
    # a float timeout is silently ignored by nft's JSON parser: a pinhole that never closes
    assert nftmod.pinhole_seconds(2.0) == 2 and type(nftmod.pinhole_seconds(2.0)) is int
    assert nftmod.pinhole_seconds(0.2) == 1
    assert nftmod.pinhole_seconds(2.01) == 3
    for bad in (0, -1, float("inf"), float("nan"), True, "5"):
        with pytest.raises(NftError):
            nftmod.pinhole_seconds(bad)  # type: ignore[arg-type]


def test_load_batch_shape() -> None:
    fp = NftFastPath("edge1", udp_ports=[5070, 5060, 5060], tcp_ports=[])
    batch = fp.load_batch(["10.0.0.0/8", "fd00::1"])
    table = {"family": "inet", "name": "edge1"}
    assert batch[:3] == [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
    ]
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in batch if "set" in c.get("add", {})}
    assert sets["sip_udp"]["elem"] == [5060, 5070]
    assert "elem" not in sets["sip_tcp"]  # nft refuses "elem": []
    assert sets["trusted4"]["elem"] == [{"prefix": {"addr": "10.0.0.0", "len": 8}}]
    assert sets["trusted6"]["elem"] == ["fd00::1"]
    assert "${" not in json.dumps(batch)
    # every command names our table and nothing else
    for cmd in batch:
        (obj,) = next(iter(cmd.values())).values()
        assert obj.get("table", obj.get("name")) == "edge1"


def test_trusted_batch_flushes_both_families() -> None:
    fp = NftFastPath("edge1", [5060], [5060])
    batch = fp.trusted_batch(["192.0.2.0/24"])
    assert [next(iter(c)) for c in batch] == ["flush", "add", "flush"]


@pytest.mark.parametrize(
    "kw",
    [
        {"name": "1bad"},
        {"name": "x" * 40},
        {"udp_ports": [0]},
        {"tcp_ports": [70000]},
        {"udp_ports": [True]},
    ],
)
def test_constructor_refuses_bad_settings(kw: dict[str, Any]) -> None:
    with pytest.raises(NftError):
        NftFastPath(**kw)


def test_template_errors_are_reported(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    with pytest.raises(NftError, match="unreadable"):
        NftFastPath(template=missing)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"nftables": [{"table": {"family": "ip", "name": "${NAME}"}}]}))
    with pytest.raises(NftError, match="exactly the table"):
        NftFastPath(template=other).load_batch([])
    partial = tmp_path / "partial.json"
    partial.write_text(
        json.dumps({"nftables": [{"table": {"family": "inet", "name": "x-${NAME}"}}]})
    )
    with pytest.raises(NftError, match="inside a string"):
        NftFastPath(template=partial).load_batch([])


def test_error_text_shows_the_numbered_batch() -> None:
    batch = [{"metainfo": {}}, {"add": {"element": {"elem": ["x" * 1000]}}}]
    text = str(NftError("nft load failed: boom", nft_error="Error: boom", batch=batch))
    first, *rest = text.splitlines()
    assert first == "nft load failed: boom"
    assert "  Error: boom" in rest
    assert any(ln.startswith("  [1] {") and "(+" in ln for ln in rest)  # long lines cut
