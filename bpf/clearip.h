/* SPDX-License-Identifier: Apache-2.0 */
/*
 * clearip.h - what the kernel side (clearip_tc.bpf.c) and the user side
 * (control/clearip/fastpath/bpf.py) agree on: verdicts, map sizes and map layouts.
 *
 * Python reads every `#define CLEARIP_<NAME> <integer>` line of this file with a tiny parser
 * (bpf.py: header_constants()), so keep those lines in that plain form: one decimal or hex
 * integer, no expressions. The structs are mirrored as ctypes structures in bpf.py; their
 * sizes are pinned here by CLEARIP_*_SIZE and checked on both sides (_Static_assert below,
 * ctypes.sizeof() and the kernel's key/value sizes when Python opens a map).
 */
#ifndef CLEARIP_H
#define CLEARIP_H

#include <linux/types.h>

/* Index of the `verdicts` per-CPU array and the meaning of each src_stats column pair. */
#define CLEARIP_VERDICT_PASS 0
#define CLEARIP_VERDICT_DROP_UNTRUSTED 1
#define CLEARIP_VERDICT_DROP_NONSIP 2
#define CLEARIP_NR_VERDICTS 3

/* struct clearip_port_key.proto: the IP protocol numbers (IPPROTO_TCP / IPPROTO_UDP). */
#define CLEARIP_PROTO_TCP 6
#define CLEARIP_PROTO_UDP 17

/*
 * Map sizes. Every map is sized; the per-source map takes its size from
 * fastpath.max_sources at compile time (-DMAX_SOURCES=N), the others are fixed here.
 */
#define CLEARIP_MAX_SIP_PORTS 64      /* (proto, port) pairs of the configured listeners */
#define CLEARIP_MAX_TRUSTED 16384     /* prefixes per address family */
#define CLEARIP_MAX_PINHOLES 16384    /* open pinholes per address family */

/*
 * UDP payload check: exactly a CRLF keepalive ("\r\n", "\r\n\r\n": RFC 5626 §3.5.1), or at
 * least PROBE_LEN bytes starting with "SIP/2.0 " (a response) or with a method token of
 * MIN..MAX uppercase letters and a space (a request: RFC 3261 methods are tokens; every
 * registered one is uppercase letters, the longest today SUBSCRIBE / 9). No SIP message is
 * shorter than PROBE_LEN: its start line alone nearly is, and Via, From, To, Call-ID and
 * CSeq are mandatory (RFC 3261 §8.1.1).
 */
#define CLEARIP_METHOD_MIN 3
#define CLEARIP_METHOD_MAX 16
#define CLEARIP_PROBE_LEN 17          /* METHOD_MAX + the space */

/* sip_ports: which (protocol, destination port) pairs are judged. Value: __u8, always 1. */
struct clearip_port_key {
	__u8 proto;                   /* CLEARIP_PROTO_UDP or CLEARIP_PROTO_TCP */
	__u8 pad;                     /* always 0: part of the hashed key */
	__u16 port;                   /* host byte order */
};
#define CLEARIP_PORT_KEY_SIZE 4

/* trusted_v4 / trusted_v6 (LPM tries). Value: __u8, always 1. */
struct clearip_lpm_v4 {
	__u32 prefixlen;              /* 0..32 */
	__u32 addr;                   /* network byte order, as on the wire */
};
#define CLEARIP_LPM_V4_SIZE 8

struct clearip_lpm_v6 {
	__u32 prefixlen;              /* 0..128 */
	__u8 addr[16];
};
#define CLEARIP_LPM_V6_SIZE 20

/*
 * pinholes_v4 (key: __u32 address in network byte order) and pinholes_v6 (key: struct
 * clearip_addr6). Value: __u64 expiry in CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns()),
 * the source is admitted while now < expiry. Only user space deletes entries.
 */

/* src_stats key: the source address; IPv4 as the mapped form ::ffff:a.b.c.d. */
struct clearip_addr6 {
	__u8 addr[16];
};
#define CLEARIP_ADDR6_SIZE 16

/* src_stats value (per CPU: user space sums the CPUs). */
struct clearip_src_stats {
	__u64 passed_pkts;
	__u64 passed_bytes;
	__u64 dropped_untrusted_pkts;
	__u64 dropped_untrusted_bytes;
	__u64 dropped_nonsip_pkts;
	__u64 dropped_nonsip_bytes;
};
#define CLEARIP_SRC_STATS_SIZE 48

/* verdicts value (per CPU), indexed by CLEARIP_VERDICT_*. */
struct clearip_verdict_stats {
	__u64 pkts;
	__u64 bytes;
};
#define CLEARIP_VERDICT_STATS_SIZE 16

_Static_assert(sizeof(struct clearip_port_key) == CLEARIP_PORT_KEY_SIZE, "port key");
_Static_assert(sizeof(struct clearip_lpm_v4) == CLEARIP_LPM_V4_SIZE, "lpm v4 key");
_Static_assert(sizeof(struct clearip_lpm_v6) == CLEARIP_LPM_V6_SIZE, "lpm v6 key");
_Static_assert(sizeof(struct clearip_addr6) == CLEARIP_ADDR6_SIZE, "addr6");
_Static_assert(sizeof(struct clearip_src_stats) == CLEARIP_SRC_STATS_SIZE, "src stats");
_Static_assert(sizeof(struct clearip_verdict_stats) == CLEARIP_VERDICT_STATS_SIZE, "verdicts");

#endif /* CLEARIP_H */
