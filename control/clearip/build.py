"""Which build of the hot path this process runs: mypyc-compiled or pure Python.

tools/build_compiled.py (run by tools/bootstrap.sh) compiles MODULES, the sans-IO SIP and proxy
core, in place with mypyc and records the SHA-256 of each source in compiled.json. An extension
module next to its .py wins the import, so a source edited after the build would run stale
code: at import time the hashes are compared and, if one differs or CLEARIP_BUILD=pure is set,
a finder that loads only .py files hides every extension module of the package. A process runs
one build, all compiled or all pure, never a mix (the compiled modules call each other natively
inside one shared library). `clearipctl --version` and `status` say which one runs.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "compiled.json"
GROUP = "clearip.compiled"  # the shared library every compiled module's shim loads
ENV = "CLEARIP_BUILD"  # "pure" forces the pure-Python modules

# The hot path: parsing and editing SIP, the transaction machines and the call logic. Not the
# asyncio adapters, the CLI or the kernel loaders (their time is in syscalls and C already).
MODULES = (
    "clearip.sip.errors",
    "clearip.sip.limits",
    "clearip.sip.uri",
    "clearip.sip.headers",
    "clearip.sip.message",
    "clearip.sip.framing",
    "clearip.sip.transaction",
    "clearip.relay.events",
    "clearip.relay.ids",
    "clearip.relay.counters",
    "clearip.relay.refusals",
    "clearip.relay.overload",
    "clearip.relay.conncount",
    "clearip.relay.copies",
    "clearip.relay.routing",
    "clearip.relay.dialog",
    "clearip.relay.call",
    "clearip.relay.core",
)


def source_of(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest() -> dict | None:
    try:
        return json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return None


def why_not_compiled(manifest: dict | None) -> str | None:
    """None when the compiled build matches every source, else why it cannot run."""
    if manifest is None:
        return "not built (make bootstrap builds it)"
    recorded = manifest.get("sources", {})
    changed = [m for m in MODULES if recorded.get(m) != _current_digest(m)]
    if changed:
        names = ", ".join(m.removeprefix("clearip.") for m in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return f"stale: {names}{more} changed since the build (make bootstrap rebuilds it)"
    return None


def _current_digest(module: str) -> str | None:
    try:
        return digest(source_of(module))
    except OSError:
        return None


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds the package's modules as .py files only, so no extension module shadows them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is None or not fullname.startswith("clearip."):
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None  # a subpackage: its __init__.py is never compiled


def _select() -> tuple[str, str]:
    """(build, detail), and the pure finder installed when the build is pure."""
    manifest = read_manifest()
    if os.environ.get(ENV, "").strip().lower() == "pure":
        reason: str | None = f"{ENV}=pure"
    else:
        reason = why_not_compiled(manifest)
    if reason is None and manifest is not None:
        return "compiled", f"mypyc {manifest.get('mypy', '?')}, {len(MODULES)} modules"
    # even with no manifest: extension modules it does not vouch for must not load
    if not any(isinstance(f, _SourceOnly) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceOnly())
    return "pure", str(reason)


BUILD, DETAIL = _select()


def describe() -> str:
    """For --version and logs: "compiled build (mypyc 2.4.1, 18 modules)"."""
    return f"{BUILD} build ({DETAIL})"
