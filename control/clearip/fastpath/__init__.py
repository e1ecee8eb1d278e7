"""The kernel fast path (SPEC §5): the eBPF TC classifier's loader lives in `clearip.fastpath.bpf`,
its maps in `clearip.fastpath.maps` (the layers are listed in `bpf`'s docstring).

Import the submodule you need; this package imports nothing itself, so `clearipctl` pays for
neither ctypes set-up nor pyroute2 unless it touches the fast path.
"""
