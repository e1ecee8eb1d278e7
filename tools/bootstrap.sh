#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine for the ClearIP in-line proxy:
# system packages, the kernel-header links bcc needs, and the virtualenv at .venv/.
# A second run on a ready machine only checks and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
    python3-bpfcc python3-nftables python3-venv nftables bpfcc-tools
    linux-headers-amd64 sip-tester tcpdump tshark iproute2 socat tmux
    prometheus gcc python3-dev
)

say() { printf 'bootstrap: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        say "must run as root to install: $*  (run: sudo $0)"
        exit 1
    fi
}

missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root "${missing[*]}"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer once, non-interactively
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles against kernel headers; this kernel ships none, so point the module
# build/source links at Debian's newest -amd64 / -common header trees.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/Makefile" ] || [ ! -e "$kdir/source/Makefile" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
    if [ -n "$hdr" ] && [ -n "$common" ]; then
        need_root "kernel header links in $kdir"
        mkdir -p "$kdir"
        ln -sfn "$hdr" "$kdir/build"
        ln -sfn "$common" "$kdir/source"
        say "linked $kdir/build -> $hdr, source -> $common"
    else
        say "warning: no linux-headers-*-amd64 tree found; the eBPF fast path will stay off"
    fi
fi

# The virtualenv sees Debian's bcc and nftables bindings (system site-packages).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
    say "creating .venv from /usr/bin/python3"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    say "installing the project and its test dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test,compiled]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# The hot path compiled with mypyc, in place; rebuilt when one of its sources changed. A failed
# build leaves the pure-Python modules running (`clearipctl --version` says which build runs).
if ! .venv/bin/python tools/build_compiled.py --check >/dev/null 2>&1; then
    say "compiling the hot path with mypyc (about 30 s)"
    .venv/bin/python tools/build_compiled.py 2>&1 | grep -v -e '^x86_64-linux-gnu-gcc' >&2 \
        || true
    .venv/bin/python tools/build_compiled.py --check >/dev/null 2>&1 \
        || say "warning: the compiled build failed; the pure-Python build runs"
fi
say "ready"
