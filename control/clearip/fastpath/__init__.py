"""Kernel fast path (SPEC §5): the nftables table and the eBPF TC classifier."""
