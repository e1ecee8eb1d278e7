"""Compile the hot path (clearip.build.MODULES) with mypyc, in place next to the sources.

Run by tools/bootstrap.sh whenever a compiled source changed (`--check` fails); about 30 s.
The pure-Python modules stay and are the fallback: a failed build leaves none of its extension
modules behind, and CLEARIP_BUILD=pure runs them even when the compiled build exists.
Needs gcc and the Python headers (Debian: gcc, python3-dev) and mypy (the `compiled` extra).

    .venv/bin/python tools/build_compiled.py [--clean | --check | --expect compiled|pure]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from clearip import build

CONTROL = build.PACKAGE_DIR.parent


def built_files() -> list[Path]:
    """Every extension module in the package, and the manifest: what a build leaves."""
    found = list(build.PACKAGE_DIR.rglob("*.so"))
    return [*found, build.MANIFEST] if build.MANIFEST.exists() else found


def clean() -> None:
    for path in built_files():
        path.unlink()


def compile_modules() -> None:
    import mypy.version
    from mypyc.build import mypycify
    from setuptools import setup

    sources = {m: build.digest(build.source_of(m)) for m in build.MODULES}
    paths = [str(build.source_of(m).relative_to(CONTROL)) for m in build.MODULES]
    with tempfile.TemporaryDirectory(prefix="clearip-mypyc-") as tmp:
        cwd = os.getcwd()
        os.chdir(CONTROL)  # mypyc names modules by their path from here
        try:
            extensions = mypycify(
                paths, opt_level="3", group_name=build.GROUP, target_dir=os.path.join(tmp, "c")
            )
            setup(
                name="clearip-compiled",
                ext_modules=extensions,
                packages=[],
                py_modules=[],
                script_args=[
                    "-q", "build_ext", "--inplace", "--build-temp", tmp,
                    "--build-lib", os.path.join(tmp, "lib"),
                ],
            )
        finally:
            os.chdir(cwd)
    manifest = {"mypy": mypy.version.__version__, "built": int(time.time()), "sources": sources}
    build.MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")


def check(expect: str | None) -> int:
    """Say which build runs; with `expect`, prove it by where the core was loaded from."""
    print(build.describe())
    if expect is None:
        return 0 if build.why_not_compiled(build.read_manifest()) is None else 1
    import clearip.relay.core

    loaded = "compiled" if not str(clearip.relay.core.__file__).endswith(".py") else "pure"
    if {build.BUILD, loaded} != {expect}:
        print(f"build_compiled: expected the {expect} build; the core came from "
              f"{clearip.relay.core.__file__}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--clean", action="store_true", help="remove the compiled build only")
    what.add_argument("--check", action="store_true",
                      help="build nothing; exit 1 unless the compiled build matches every source")
    what.add_argument("--expect", choices=("compiled", "pure"),
                      help="build nothing; exit 1 unless this process runs that build")
    args = parser.parse_args()
    if args.check or args.expect:
        return check(args.expect)
    clean()
    if args.clean:
        return 0
    if shutil.which("gcc") is None:
        print("build_compiled: no C compiler: apt-get install gcc python3-dev", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        compile_modules()
    except BaseException as exc:
        clean()  # never half a build: the pure modules run
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"build_compiled: failed ({exc}); the pure-Python build runs", file=sys.stderr)
        return 1
    print(f"build_compiled: {len(build.MODULES)} modules compiled with mypyc in "
          f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
