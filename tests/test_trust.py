"""The trusted list: parsing, changes refused with a clear line, the state file, and
`clearipctl allow/deny/trusted` while the proxy is stopped (the running case is end to end,
in tests/test_e2e_flows.py)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from clearip import trust
from clearip.cli import main


def test_parse_cidr_accepts_addresses_and_networks() -> None:
    assert str(trust.parse_cidr("10.0.0.5")) == "10.0.0.5/32"
    assert str(trust.parse_cidr("2001:db8::1")) == "2001:db8::1/128"
    assert str(trust.parse_cidr(" 192.0.2.0/24 ")) == "192.0.2.0/24"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.5/24", "10.0.0.5/24 has host bits set; did you mean 10.0.0.0/24?"),
        ("example.com", "'example.com' is not an IP address or CIDR"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or CIDR"),
        ("", "'' is not an IP address or CIDR"),
    ],
)
def test_parse_cidr_refuses_clearly(text: str, message: str) -> None:
    with pytest.raises(trust.TrustError) as info:
        trust.parse_cidr(text)
    assert str(info.value) == message


def test_add_and_remove_rules(tmp_path: Path) -> None:
    config_net = ipaddress.ip_network("10.1.0.0/16")
    current = trust.entries([config_net], str(tmp_path))
    assert [e.origin for e in current] == ["config"]
    added = trust.with_added(current, trust.parse_cidr("10.2.0.1"), "switch 2")
    with pytest.raises(trust.TrustError, match="already trusted"):
        trust.with_added(added, trust.parse_cidr("10.2.0.1"), "again")
    with pytest.raises(trust.TrustError, match=r"comes from trust\.sources"):
        trust.without(added, config_net)
    with pytest.raises(trust.TrustError, match="is not in the trusted list"):
        trust.without(added, trust.parse_cidr("10.9.9.9"))
    trust.save_state(str(tmp_path), added)
    doc = json.loads((tmp_path / "trusted.json").read_text())
    # only the state file's own entries are written; the config's stay in the config
    assert doc == {"version": 1, "entries": [{"cidr": "10.2.0.1/32", "note": "switch 2"}]}
    assert trust.as_json(trust.entries([config_net], str(tmp_path))) == [
        {"cidr": "10.1.0.0/16", "note": "", "origin": "config"},
        {"cidr": "10.2.0.1/32", "note": "switch 2", "origin": "state"},
    ]


def test_trust_list_membership_and_mapped_v4() -> None:
    tl = trust.TrustList([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")])
    assert "10.1.2.3" in tl and "::ffff:10.1.2.3" in tl and "fd12::1" in tl
    assert "192.0.2.1" not in tl and "garbage" not in tl


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text(
        f'[trust]\nsources = ["10.1.0.0/16"]\n[control]\nsocket = "{tmp_path}/ctl.sock"\n'
        f'state_dir = "{tmp_path}/state"\n'
    )
    return cfg


def test_cli_edits_the_state_file_while_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_config(tmp_path))
    assert main(["allow", "10.2.0.1", "--note", "switch 2", "--config", cfg]) == 0
    assert "trusted: 10.2.0.1/32 (saved; the proxy is stopped" in capsys.readouterr().out
    assert main(["allow", "10.2.0.1", "--config", cfg]) == 1
    assert capsys.readouterr().err.strip() == "10.2.0.1/32 is already trusted (in the list)"
    assert main(["allow", "10.3.0.1/24", "--config", cfg]) == 1
    assert "has host bits set" in capsys.readouterr().err
    assert main(["trusted", "--json", "--config", cfg]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["cidr"], e["origin"], e["note"]) for e in listed] == [
        ("10.1.0.0/16", "config", ""),
        ("10.2.0.1/32", "state", "switch 2"),
    ]
    assert main(["deny", "10.1.0.0/16", "--config", cfg]) == 1
    assert "comes from trust.sources" in capsys.readouterr().err
    assert main(["deny", "10.2.0.1", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["trusted", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "10.1.0.0/16" in out and "10.2.0.1" not in out


def test_state_file_is_private(tmp_path: Path) -> None:
    import stat

    trust.save_state(str(tmp_path), [trust.TrustedEntry(trust.parse_cidr("10.2.0.1"), "", "state")])
    mode = stat.S_IMODE((tmp_path / "trusted.json").stat().st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["trusted.json"]  # no temp file left
