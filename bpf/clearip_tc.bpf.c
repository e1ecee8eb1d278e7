// SPDX-License-Identifier: Apache-2.0
/*
 * clearip_tc.bpf.c - the eBPF half of the kernel fast path (SPEC §5), built by bcc at start.
 *
 * A TC ingress classifier (clsact, direct-action). For packets to the SIP ports only:
 *   1. the source must be trusted (LPM tries trusted_v4 / trusted_v6) or hold an open
 *      pinhole (pinholes_v4 / pinholes_v6, until its expiry), else DROP_UNTRUSTED;
 *   2. a UDP payload must look like SIP (a request line's method and a space, "SIP/2.0 ", or
 *      exactly a CRLF keepalive), else DROP_NONSIP; TCP/TLS is judged on L3/L4 only (a
 *      segment boundary says nothing about where a SIP message starts);
 *   3. every judged packet is counted per source (src_stats, LRU) and per verdict (verdicts).
 * Anything else (other ports, other protocols, non-first IPv4 fragments, IPv6 with extension
 * headers) is not ours: TC_ACT_UNSPEC, i.e. untouched, and later tc filters still run.
 *
 * Compile-time settings (cflags): -DMAX_SOURCES=N (fastpath.max_sources), -I<this dir>.
 * Headers are read at network-header offsets (bpf_skb_load_bytes_relative, BPF_HDR_START_NET),
 * so the program does not care whether the device has an Ethernet header, and works on
 * non-linear skbs.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>

#include "clearip.h"

#ifndef MAX_SOURCES
#error "build with -DMAX_SOURCES=N (fastpath.max_sources): the size of src_stats"
#endif

/* Byte order without libbpf's bpf_endian.h (bcc does not ship it). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define CLEARIP_BE16(x) __builtin_bswap16(x)
#else
#define CLEARIP_BE16(x) (x)
#endif

#define IP_FRAG_OFFSET_MASK 0x1FFF    /* iphdr.frag_off without the flag bits */

/*
 * Ports are a map, not -D flags: `clearipctl reload` may change the listeners, and a map is
 * refilled in place where a flag would need a new compile and a new filter. A hash of
 * (proto, port) with 64 slots costs one lookup per UDP/TCP packet and stays tiny, where an
 * array indexed by port would need 64K slots.
 */
BPF_TABLE("hash", struct clearip_port_key, __u8, sip_ports, CLEARIP_MAX_SIP_PORTS);

/* Trusted prefixes; LPM tries must be created with BPF_F_NO_PREALLOC. */
BPF_F_TABLE("lpm_trie", struct clearip_lpm_v4, __u8, trusted_v4, CLEARIP_MAX_TRUSTED,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct clearip_lpm_v6, __u8, trusted_v6, CLEARIP_MAX_TRUSTED,
	    BPF_F_NO_PREALLOC);

/* Pinholes: address -> expiry (CLOCK_MONOTONIC ns). Plain hashes: only user space writes
 * them, so nothing is evicted behind the relay's back; it also sweeps expired entries. */
BPF_TABLE("hash", __u32, __u64, pinholes_v4, CLEARIP_MAX_PINHOLES);
BPF_TABLE("hash", struct clearip_addr6, __u64, pinholes_v6, CLEARIP_MAX_PINHOLES);

/* Per-source counters. LRU: a flood from millions of spoofed sources evicts the least recently
 * seen entries instead of filling the map; per-CPU: no atomics on the hot path. */
BPF_TABLE("lru_percpu_hash", struct clearip_addr6, struct clearip_src_stats, src_stats,
	  MAX_SOURCES);

/* Totals per verdict, always complete (src_stats may have evicted a source). */
BPF_TABLE("percpu_array", __u32, struct clearip_verdict_stats, verdicts, CLEARIP_NR_VERDICTS);

struct packet {
	struct clearip_addr6 src;     /* v4 as ::ffff:a.b.c.d */
	__u32 l4_off;                 /* from the network header */
	__u32 l3_payload_len;         /* bytes after the IP header(s), from the IP header */
	__u8 proto;
	__u8 v6;
};

/* Fills `p` from the IPv4 header; 0 when the packet may be ours, -1 when it is not. */
static __always_inline int parse_v4(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes_relative(skb, 0, &ip, sizeof(ip), BPF_HDR_START_NET) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;    /* malformed: the IP layer drops it */
	/* A non-first fragment carries no ports. Without its first fragment (judged here, and
	 * dropped if untrusted) it never reassembles into anything, so it is passed alone. */
	if (CLEARIP_BE16(ip.frag_off) & IP_FRAG_OFFSET_MASK)
		return -1;
	__u32 hlen = ip.ihl * 4;
	__u32 tot = CLEARIP_BE16(ip.tot_len);

	if (tot < hlen)
		return -1;
	p->l4_off = hlen;
	p->l3_payload_len = tot - hlen;
	p->proto = ip.protocol;
	p->v6 = 0;
	p->src.addr[10] = 0xff;
	p->src.addr[11] = 0xff;
	__builtin_memcpy(&p->src.addr[12], &ip.saddr, 4);
	return 0;
}

/* Fills `p` from the fixed IPv6 header. A packet with extension headers (fragments too) is
 * not ours: walking them is not worth the verifier budget, SIP senders do not use them, and
 * the nftables set and the relay's own check still stand behind this filter. */
static __always_inline int parse_v6(struct __sk_buff *skb, struct packet *p)
{
	struct ipv6hdr ip6;

	if (bpf_skb_load_bytes_relative(skb, 0, &ip6, sizeof(ip6), BPF_HDR_START_NET) < 0)
		return -1;
	if (ip6.version != 6)
		return -1;
	p->l4_off = sizeof(ip6);
	p->l3_payload_len = CLEARIP_BE16(ip6.payload_len);
	p->proto = ip6.nexthdr;
	p->v6 = 1;
	__builtin_memcpy(p->src.addr, &ip6.saddr, 16);
	return 0;
}

/* Trusted prefix, or an open pinhole (now < expiry). A pinhole admits whatever SIP the next
 * hop sends; refusing a new out-of-dialog INVITE from it is the relay's job (SPEC §5). */
static __always_inline int source_admitted(const struct packet *p)
{
	__u64 *expiry;

	if (p->v6) {
		struct clearip_lpm_v6 key = {.prefixlen = 128};

		__builtin_memcpy(key.addr, p->src.addr, 16);
		if (trusted_v6.lookup(&key))
			return 1;
		expiry = pinholes_v6.lookup((struct clearip_addr6 *)&p->src);
	} else {
		struct clearip_lpm_v4 key = {.prefixlen = 32};
		__u32 addr;

		__builtin_memcpy(&addr, &p->src.addr[12], 4);
		key.addr = addr;
		if (trusted_v4.lookup(&key))
			return 1;
		expiry = pinholes_v4.lookup(&addr);
	}
	return expiry && bpf_ktime_get_ns() < *expiry;
}

/*
 * Is this UDP payload (`len` bytes at `off`) SIP? Exactly "\r\n" or "\r\n\r\n" (keepalive,
 * RFC 5626 §3.5.1), or at least PROBE_LEN bytes starting with "SIP/2.0 " (a response) or with
 * [A-Z]{METHOD_MIN,METHOD_MAX} and a space (a request). Anything shorter than PROBE_LEN that
 * is not a keepalive cannot be SIP: a message needs its start line plus Via, From, To, Call-ID
 * and CSeq (RFC 3261 §8.1.1), far more than 17 bytes. That also keeps every load fixed-size,
 * which the verifier accepts without a range proof for the length.
 */
static __always_inline int looks_like_sip(struct __sk_buff *skb, __u32 off, __u32 len)
{
	__u8 buf[CLEARIP_PROBE_LEN] = {};

	if (len == 2 || len == 4) {
		if (bpf_skb_load_bytes_relative(skb, off, buf, 4, BPF_HDR_START_NET) < 0 &&
		    bpf_skb_load_bytes_relative(skb, off, buf, 2, BPF_HDR_START_NET) < 0)
			return 0;
		if (buf[0] != '\r' || buf[1] != '\n')
			return 0;
		return len == 2 || (buf[2] == '\r' && buf[3] == '\n');
	}
	if (len < CLEARIP_PROBE_LEN)
		return 0;
	if (bpf_skb_load_bytes_relative(skb, off, buf, CLEARIP_PROBE_LEN, BPF_HDR_START_NET) < 0)
		return 0;
	if (buf[0] == 'S' && buf[1] == 'I' && buf[2] == 'P' && buf[3] == '/' && buf[4] == '2' &&
	    buf[5] == '.' && buf[6] == '0' && buf[7] == ' ')
		return 1;
	/* Bounded, unrolled: stops at the first byte that is not [A-Z]. */
#pragma unroll
	for (int i = 0; i < CLEARIP_PROBE_LEN; i++) {
		__u8 c = buf[i];

		if (c == ' ')
			return i >= CLEARIP_METHOD_MIN;
		if (c < 'A' || c > 'Z')
			return 0;
	}
	return 0;    /* a token longer than CLEARIP_METHOD_MAX */
}

static __always_inline void count(struct __sk_buff *skb, const struct packet *p, __u32 verdict)
{
	/* A GRO aggregate is one skb but several packets on the wire. */
	__u64 pkts = skb->gso_segs > 1 ? skb->gso_segs : 1;
	__u64 bytes = skb->len;
	struct clearip_verdict_stats *total = verdicts.lookup(&verdict);

	if (total) {    /* per-CPU value: plain adds are safe */
		total->pkts += pkts;
		total->bytes += bytes;
	}

	struct clearip_src_stats *s = src_stats.lookup((struct clearip_addr6 *)&p->src);

	if (!s) {
		struct clearip_src_stats zero = {};

		/* NOEXIST: another CPU may have just added it; either way look it up again. May
		 * evict the least recently used source: that is the point of the LRU. */
		src_stats.insert((struct clearip_addr6 *)&p->src, &zero);
		s = src_stats.lookup((struct clearip_addr6 *)&p->src);
		if (!s)
			return;    /* counted in `verdicts` only */
	}
	if (verdict == CLEARIP_VERDICT_PASS) {
		s->passed_pkts += pkts;
		s->passed_bytes += bytes;
	} else if (verdict == CLEARIP_VERDICT_DROP_UNTRUSTED) {
		s->dropped_untrusted_pkts += pkts;
		s->dropped_untrusted_bytes += bytes;
	} else {
		s->dropped_nonsip_pkts += pkts;
		s->dropped_nonsip_bytes += bytes;
	}
}

int clearip_ingress(struct __sk_buff *skb)
{
	struct packet p = {};
	struct clearip_port_key port_key = {};
	struct udphdr udp;
	__u32 verdict;

	if (skb->protocol == CLEARIP_BE16(ETH_P_IP)) {
		if (parse_v4(skb, &p) < 0)
			return TC_ACT_UNSPEC;
	} else if (skb->protocol == CLEARIP_BE16(ETH_P_IPV6)) {
		if (parse_v6(skb, &p) < 0)
			return TC_ACT_UNSPEC;
	} else {
		return TC_ACT_UNSPEC;
	}
	if (p.proto != IPPROTO_UDP && p.proto != IPPROTO_TCP)
		return TC_ACT_UNSPEC;

	/* UDP and TCP both have the destination port at bytes 2-3 of their header; 8 bytes
	 * (a UDP header) are always there for TCP too (its header is at least 20). */
	if (bpf_skb_load_bytes_relative(skb, p.l4_off, &udp, sizeof(udp), BPF_HDR_START_NET) < 0)
		return TC_ACT_UNSPEC;
	port_key.proto = p.proto;
	port_key.port = CLEARIP_BE16(udp.dest);
	if (!sip_ports.lookup(&port_key))
		return TC_ACT_UNSPEC;

	if (!source_admitted(&p)) {
		verdict = CLEARIP_VERDICT_DROP_UNTRUSTED;
	} else if (p.proto == IPPROTO_UDP) {
		/* The smaller of the UDP and IP lengths: a first fragment holds only part of the
		 * datagram UDP announces, and its start is all we need. */
		__u32 ulen = CLEARIP_BE16(udp.len);
		__u32 l3 = p.l3_payload_len;
		__u32 plen = ulen < l3 ? ulen : l3;

		if (plen < sizeof(udp) ||
		    !looks_like_sip(skb, p.l4_off + sizeof(udp), plen - sizeof(udp)))
			verdict = CLEARIP_VERDICT_DROP_NONSIP;
		else
			verdict = CLEARIP_VERDICT_PASS;
	} else {
		verdict = CLEARIP_VERDICT_PASS;
	}

	count(skb, &p, verdict);
	/* PASS is TC_ACT_UNSPEC too, not TC_ACT_OK: OK would end classification and skip the
	 * filters other tools put after ours; UNSPEC lets them run, and accepts when none does. */
	return verdict == CLEARIP_VERDICT_PASS ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}
