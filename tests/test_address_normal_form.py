"""One address normal form for the three enforcers (issue 10): the relay's TrustList, nftables
and eBPF are fed the same odd inputs and must agree on what each means, or all refuse it.

Before, `allow ::ffff:192.0.2.1` was trusted as IPv4 by eBPF, as IPv6 (never matching) by nft,
and `::ffff:0:0/96` became 0.0.0.0/0 -- every IPv4 address -- in eBPF alone.
"""

from __future__ import annotations

import ipaddress

import pytest

from clearip import trust
from clearip.fastpath import maps, nft

# input -> the network every enforcer must hold (None: every enforcer refuses it)
CASES = {
    "192.0.2.1": "192.0.2.1/32",
    "::ffff:192.0.2.1": "192.0.2.1/32",
    "::ffff:192.0.2.0/120": "192.0.2.0/24",
    "::ffff:10.0.0.0/104": "10.0.0.0/8",
    "2001:db8::/32": "2001:db8::/32",
    "::ffff:0:0/96": None,  # every IPv4 address
    "::ffff:0:0/95": None,  # every IPv4 address and some IPv6 ones
    "0.0.0.0/0": None,
    "::/0": None,
    "192.0.2.1/24": None,  # host bits
    "fe80::1%eth0": None,  # scoped
    "not-an-address": None,
}


def relay_view(text: str) -> str | None:
    try:
        return str(trust.parse_cidr(text))
    except trust.TrustError:
        return None


def nft_view(text: str) -> str | None:
    try:
        v4, v6 = nft.normalise_sources([text])
    except nft.NftError:
        return None
    (net,) = [*v4, *v6]
    return str(net)


def bpf_view(text: str) -> str | None:
    try:
        return str(maps._parse_cidr(text))
    except ValueError:
        return None


@pytest.mark.parametrize(("text", "want"), CASES.items())
def test_every_enforcer_reads_it_the_same(text: str, want: str | None) -> None:
    assert (relay_view(text), nft_view(text), bpf_view(text)) == (want, want, want)


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8::7", "2001:db8::7"),
        ("fe80::1%eth0", None),
        ("bogus", None),
    ],
)
def test_a_source_address_is_the_same_address_everywhere(source: str, want: str | None) -> None:
    got = trust.normal_address(source)
    assert (str(got) if got else None) == want
    try:
        nft_addr: str | None = str(nft.pinhole_address(source))
    except nft.NftError:
        nft_addr = None
    try:
        bpf_addr: str | None = str(maps._parse_ip(source))
    except ValueError:
        bpf_addr = None
    assert (nft_addr, bpf_addr) == (want, want)


def test_trust_list_matches_mapped_sources_against_ipv4_entries() -> None:
    tl = trust.TrustList(["::ffff:192.0.2.0/120", "2001:db8::/32"])
    assert tl.networks == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert "192.0.2.9" in tl and "::ffff:192.0.2.9" in tl and "2001:db8::1" in tl
    assert "198.51.100.1" not in tl and "::ffff:198.51.100.1" not in tl


def test_state_file_and_config_refuse_what_cannot_be_enforced(tmp_path) -> None:
    from clearip.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"trust\.sources.*every address"):
        parse_config('[trust]\nsources = ["::ffff:0:0/96"]\n')
    config = parse_config('[trust]\nsources = ["::ffff:192.0.2.0/120"]\n')
    assert [str(n) for n in config.trust.sources] == ["192.0.2.0/24"]
