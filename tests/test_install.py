"""`make install` puts a systemd unit and a default config in place (checked in a staging root)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from clearip.config import load_config

REPO = Path(__file__).resolve().parent.parent


def test_make_install_into_a_staging_root(tmp_path: Path) -> None:
    out = subprocess.run(
        ["make", "-s", "install", f"DESTDIR={tmp_path}"], cwd=REPO,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    unit = (tmp_path / "etc/systemd/system/clearip.service").read_text()
    assert "Type=notify" in unit and "Restart=on-failure" in unit and "KillMode=mixed" in unit
    assert f"ExecStart={REPO}/.venv/bin/clearipctl run --config /etc/clearip/proxy.toml" in unit
    assert f"ExecReload={REPO}/.venv/bin/clearipctl reload" in unit
    assert "@" not in unit.replace("@.service", "")  # every placeholder filled
    config = load_config(tmp_path / "etc/clearip/proxy.toml")
    assert config.fastpath.enabled == "auto" and config.trust.sources == ()
    # an existing config is never overwritten
    (tmp_path / "etc/clearip/proxy.toml").write_text('[trust]\nsources = ["192.0.2.0/24"]\n')
    subprocess.run(["make", "-s", "install", f"DESTDIR={tmp_path}"], cwd=REPO, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    assert "192.0.2.0/24" in (tmp_path / "etc/clearip/proxy.toml").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "install", f"DESTDIR={tmp_path}"], cwd=REPO, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    unit = tmp_path / "etc/systemd/system/clearip.service"
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    # outside a booted systemd some lines are about the environment, not the unit
    problems = [
        line for line in out.stderr.splitlines()
        if "clearip.service" in line and "Failed to" not in line and "not found" not in line
    ]  # fmt: skip
    assert not problems, out.stderr
