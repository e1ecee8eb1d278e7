"""The listener's self-signed certificate: made once, never replaced, whoever races for it."""

from __future__ import annotations

import ssl
import stat
import subprocess
import sys
from pathlib import Path

from clearip.tlscert import ensure_self_signed

RACE = """
import sys, ssl
from clearip.tlscert import ensure_self_signed
for _ in range(3):
    path = ensure_self_signed(sys.argv[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(path)  # KEY_VALUES_MISMATCH if the file changed between its two reads
print(open(path, "rb").read().hex())
"""


def test_workers_racing_for_a_fresh_state_dir_all_get_the_same_pair(tmp_path: Path) -> None:
    """Issue 12: with two workers and a fresh state_dir, one in four starts failed with
    KEY_VALUES_MISMATCH. Eight processes race here, and every one must load the same file."""
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(8)
    ]
    outs = {p.communicate(timeout=60)[0] for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1
    path = Path(ensure_self_signed(str(tmp_path)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(path)
