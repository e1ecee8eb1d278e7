"""The compiled build and its pure-Python fallback (clearip.build, tools/build_compiled.py):
which one a process runs, and that an edited source never runs stale compiled code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clearip import build

REPO = Path(__file__).resolve().parent.parent
WHERE = "import clearip, clearip.relay.core as c; print(clearip.build.BUILD, c.__file__)"

needs_compiled = pytest.mark.skipif(
    build.read_manifest() is None, reason="no compiled build here (make bootstrap builds it)"
)


def run(code: str, env: dict[str, str] | None = None, path: Path | None = None) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k != build.ENV}
    full.update(env or {})
    if path is not None:
        full["PYTHONPATH"] = str(path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True,
        timeout=60,
    )
    return out.stdout.split()


@needs_compiled
def test_a_fresh_build_runs_compiled_and_pure_on_request() -> None:
    assert build.why_not_compiled(build.read_manifest()) is None
    kind, core = run(WHERE)
    assert kind == "compiled" and core.endswith(".so")
    kind, core = run(WHERE, {build.ENV: "pure"})
    assert kind == "pure" and core.endswith("core.py")


@needs_compiled
def test_an_edited_source_falls_back_to_pure_python_whole(tmp_path: Path) -> None:
    """One stale module would run the old code of that module: the whole process goes pure."""
    copy = tmp_path / "clearip"
    shutil.copytree(build.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    message = copy / "sip" / "message.py"
    message.write_text(message.read_text() + "\n# edited after the build\n")
    code = WHERE + "; import clearip.sip.uri as u; print(u.__file__, clearip.build.DETAIL)"
    out = run(code, path=tmp_path)
    assert out[0] == "pure"
    assert out[1] == str(copy / "relay" / "core.py")
    assert out[2] == str(copy / "sip" / "uri.py")  # unchanged, yet pure too: never a mix
    assert "stale: sip.message changed" in " ".join(out[3:])


@needs_compiled
def test_extension_modules_without_their_manifest_never_load(tmp_path: Path) -> None:
    """A build interrupted before its manifest, or a manifest removed: nothing vouches for
    the extension modules, so none of them runs."""
    copy = tmp_path / "clearip"
    shutil.copytree(
        build.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "compiled.json")
    )
    assert list(copy.rglob("*.so"))
    kind, core = run(WHERE, path=tmp_path)
    assert kind == "pure" and core == str(copy / "relay" / "core.py")


def test_without_a_build_every_module_is_pure_python(tmp_path: Path) -> None:
    copy = tmp_path / "clearip"
    shutil.copytree(
        build.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.json")
    )
    kind, core = run(WHERE, path=tmp_path)
    assert kind == "pure" and core == str(copy / "relay" / "core.py")


def test_version_and_the_build_check_say_which_build_runs() -> None:
    ctl = REPO / ".venv" / "bin" / "clearipctl"
    default = "compiled" if build.why_not_compiled(build.read_manifest()) is None else "pure"
    for env, kind in (({}, default), ({build.ENV: "pure"}, "pure")):
        full = {**{k: v for k, v in os.environ.items() if k != build.ENV}, **env}
        out = subprocess.run([str(ctl), "--version"], env=full, capture_output=True, text=True,
                             check=True, timeout=60).stdout
        assert out.startswith("clearipctl ") and f", {kind} build (" in out
        checked = subprocess.run(
            [sys.executable, str(REPO / "tools" / "build_compiled.py"), "--expect", kind],
            env=full, capture_output=True, text=True, timeout=60,
        )
        assert checked.returncode == 0, checked.stderr
    if default == "compiled":
        wrong = subprocess.run(
            [sys.executable, str(REPO / "tools" / "build_compiled.py"), "--expect", "pure"],
            env=full | {build.ENV: ""}, capture_output=True, text=True, timeout=60,
        )
        assert wrong.returncode == 1 and "expected the pure build" in wrong.stderr
