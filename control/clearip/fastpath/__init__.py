"""The kernel fast path (SPEC §5): the eBPF TC classifier lives in `clearip.fastpath.bpf`.

Import the submodule you need; this package imports nothing itself, so `clearipctl` pays for
neither ctypes set-up nor pyroute2 unless it touches the fast path.
"""
