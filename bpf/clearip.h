/* SPDX-License-Identifier: Apache-2.0 */
/*
 * clearip.h - what the kernel side (clearip_tc.bpf.c) and the user side
 * (control/clearip/fastpath/layout.py) agree on: verdicts, map sizes and map layouts.
 *
 * Python reads every `#define CLEARIP_<NAME> <integer>` line of this file with a tiny parser
 * (layout.py: header_constants()), so keep those lines in that plain form: one decimal or hex
 * integer, no expressions. The structs are mirrored as ctypes structures in layout.py; their
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
#define CLEARIP_MAX_LOCAL_ADDRS 1024  /* the proxy's own addresses (local_addrs, + its marker) */
/* Per-source rows of admitted sources (admitted_stats): room for every pinhole of one family
 * and as many trusted hosts again. A full map only means no row for a new source. */
#define CLEARIP_MAX_ADMITTED 32768

/*
 * Bounds of the header walks (each step is one fixed-size load, unrolled for the verifier).
 * IPv6: extension headers before UDP/TCP (RFC 8200 §4: hop-by-hop, routing, fragment,
 * destination options, AH); a chain longer than this is judged without its ports (see the
 * classifier). VLAN: 802.1p priority tags (VLAN ID 0) left in the frame after the kernel took
 * the first one; the stack strips them all and delivers on this same device.
 */
#define CLEARIP_MAX_EXT_HDRS 8
#define CLEARIP_MAX_VLAN_TAGS 4

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

/*
 * ... or a STUN Binding request, the UDP keepalive of SIP outbound (RFC 5626 §4.4.2): a
 * 20-byte header (RFC 5389 §6) of type 0x0001 (so its first two bits are 0), the magic cookie
 * at offset 4, and a message length that is a multiple of 4 and exactly the rest of the
 * datagram. Only from admitted sources, like SIP: the relay answers it.
 */
#define CLEARIP_STUN_HEADER_LEN 20
#define CLEARIP_STUN_BINDING_REQUEST 0x0001
#define CLEARIP_STUN_MAGIC_COOKIE 0x2112A442

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

/*
 * Key of src_stats, admitted_stats and local_addrs: an address, IPv4 as the mapped form
 * ::ffff:a.b.c.d (one map for both families).
 *
 * local_addrs (value: __u8, always 1) holds the proxy's own addresses, plus `::` as a marker
 * whenever it holds any: with no marker nothing is known to be local yet and every
 * destination is judged (fail closed); with it, a packet to an address not in the map is
 * someone else's (forwarded or bridged) and left alone. `::` is never a packet's destination.
 */
struct clearip_addr6 {
	__u8 addr[16];
};
#define CLEARIP_ADDR6_SIZE 16

/*
 * Per-source counters, one row per source in one of two maps (user space adds them up when a
 * source is in both):
 *   admitted_stats  trusted or pinholed sources; per-CPU hash, not LRU, so no flood of
 *                   spoofed strangers can evict them; user space sums the CPUs;
 *   src_stats       every other source; LRU (a flood evicts the least recently seen), one
 *                   value for all CPUs updated with atomic adds, so reading 64K rows costs
 *                   the same on 2 CPUs as on 64.
 */
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
