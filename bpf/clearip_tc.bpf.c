// SPDX-License-Identifier: Apache-2.0
/*
 * clearip_tc.bpf.c - the eBPF half of the kernel fast path (SPEC §5), built by bcc at start.
 *
 * A TC ingress classifier (clsact, direct-action). For packets to the SIP ports (sip_ports)
 * on the proxy's own addresses (local_addrs) only:
 *   1. the source must be trusted (LPM tries trusted_v4 / trusted_v6) or hold an open
 *      pinhole (pinholes_v4 / pinholes_v6, until its expiry), else DROP_UNTRUSTED;
 *   2. a UDP payload must look like SIP (a request line's method and a space, "SIP/2.0 ",
 *      exactly a CRLF keepalive, or a STUN Binding request: the keepalives of RFC 5626),
 *      else DROP_NONSIP; TCP/TLS is judged on L3/L4 only (a segment boundary says nothing
 *      about where a SIP message starts);
 *   3. every judged packet is counted per verdict (verdicts) and per source: admitted ones in
 *      admitted_stats (never evicted), the others in src_stats (LRU).
 *
 * What is judged, and what is not ours (TC_ACT_UNSPEC: untouched, later tc filters still run):
 *   - Each packet once. A frame still carrying a VLAN tag with a VLAN ID is not ours on this
 *     (lower) device: its VLAN device judges it after untagging, and without one the stack
 *     drops it. Priority tags (VLAN ID 0) are judged here: the stack strips them and delivers
 *     on this very device, after tc (more of them than CLEARIP_MAX_VLAN_TAGS hide the IP
 *     header: dropped, counted in `verdicts` only). Frames for another host's MAC
 *     (PACKET_OTHERHOST, seen in promiscuous mode) are never delivered here either.
 *   - Destinations: an address in local_addrs, or any broadcast or multicast one (the stack
 *     gives those to sockets bound to the wildcard address). Everything to other hosts
 *     (forwarded, bridged) is not ours. While local_addrs is empty every destination is
 *     judged: a fast path not told its addresses yet fails closed.
 *   - IPv6 extension headers (hop-by-hop, routing, fragment, destination options, AH) are
 *     walked, up to CLEARIP_MAX_EXT_HDRS, to reach UDP/TCP. Fragments are judged as IPv4's
 *     are: a first fragment by its ports; a later one carries no ports and, without its first
 *     fragment (judged, and dropped when untrusted), never reassembles, so it passes alone.
 *   - An IPv6 packet whose UDP/TCP header cannot be reached (a longer chain, or one cut short:
 *     the rest may come in a later fragment) to a local destination is judged without its
 *     ports and dropped: DROP_UNTRUSTED from a stranger, DROP_NONSIP from an admitted source
 *     (nothing shows it is SIP, and no SIP element sends such chains). Other protocols after
 *     a walkable chain (ICMPv6, ESP, no next header) are not ours, as in IPv4.
 *   - Other ports and protocols, non-first IPv4 fragments, non-IP frames: not ours.
 *
 * Compile-time settings (cflags): -DMAX_SOURCES=N (fastpath.max_sources), -I<this dir>.
 * Headers are read at network-header offsets (bpf_skb_load_bytes_relative, BPF_HDR_START_NET),
 * so the program does not care whether the device has an Ethernet header, and works on
 * non-linear skbs.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_packet.h>
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
#define IP6_FRAG_OFFSET_MASK 0xFFF8   /* frag_hdr.frag_off without the flag bits */
#define VLAN_VID_MASK 0x0FFF

/* IPv6 next-header values walked as extension headers (RFC 8200 §4, RFC 4302). */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60

/*
 * Ports are a map, not -D flags: `clearipctl reload` may change the listeners, and a map is
 * refilled in place where a flag would need a new compile and a new filter. A hash of
 * (proto, port) with 64 slots costs one lookup per UDP/TCP packet and stays tiny, where an
 * array indexed by port would need 64K slots.
 */
BPF_TABLE("hash", struct clearip_port_key, __u8, sip_ports, CLEARIP_MAX_SIP_PORTS);

/* The proxy's own addresses, and the `::` marker while it holds any (clearip.h). A map, like
 * the ports: addresses come and go with interfaces, and user space keeps it current. */
BPF_TABLE("hash", struct clearip_addr6, __u8, local_addrs, CLEARIP_MAX_LOCAL_ADDRS + 1);

/* Trusted prefixes; LPM tries must be created with BPF_F_NO_PREALLOC. */
BPF_F_TABLE("lpm_trie", struct clearip_lpm_v4, __u8, trusted_v4, CLEARIP_MAX_TRUSTED,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct clearip_lpm_v6, __u8, trusted_v6, CLEARIP_MAX_TRUSTED,
	    BPF_F_NO_PREALLOC);

/* Pinholes: address -> expiry (CLOCK_MONOTONIC ns). Plain hashes: only user space writes
 * them, so nothing is evicted behind the relay's back; it also sweeps expired entries. */
BPF_TABLE("hash", __u32, __u64, pinholes_v4, CLEARIP_MAX_PINHOLES);
BPF_TABLE("hash", struct clearip_addr6, __u64, pinholes_v6, CLEARIP_MAX_PINHOLES);

/* Counters of sources that are not admitted. LRU: a flood from millions of spoofed sources
 * evicts the least recently seen entries instead of filling the map. One value for all CPUs
 * (atomic adds): these packets are dropped anyway, and user space reads 64K rows, not 64K rows
 * times the CPUs. */
BPF_TABLE("lru_hash", struct clearip_addr6, struct clearip_src_stats, src_stats, MAX_SOURCES);

/* Counters of admitted sources (trusted, pinholed): their own map, so the strangers of the
 * LRU never evict them (Prometheus would see their counters reset). Not LRU: a full map only
 * means no row for a new admitted source, and user space deletes rows of sources no longer
 * admitted (sweep_admitted). Per-CPU: this is the traffic that passes, no atomics for it.
 * Allocated as sources come: a proxy with ten switches holds ten rows, not 32K x the CPUs. */
BPF_F_TABLE("percpu_hash", struct clearip_addr6, struct clearip_src_stats, admitted_stats,
	    CLEARIP_MAX_ADMITTED, BPF_F_NO_PREALLOC);

/* Totals per verdict, always complete (src_stats may have evicted a source). */
BPF_TABLE("percpu_array", __u32, struct clearip_verdict_stats, verdicts, CLEARIP_NR_VERDICTS);

struct packet {
	struct clearip_addr6 src;     /* v4 as ::ffff:a.b.c.d */
	struct clearip_addr6 dst;
	__u32 l4_off;                 /* from the network header */
	__u32 l3_payload_len;         /* bytes after the IP header(s), from the IP header */
	__u8 proto;
	__u8 v6;
};

/* What parsing found. */
#define PARSE_NOT_OURS -1             /* not judged: TC_ACT_UNSPEC */
#define PARSE_OK 0                    /* p->proto and p->l4_off are set */
#define PARSE_BLIND 1                 /* IPv6 whose UDP/TCP header cannot be reached */

/*
 * Priority tags. The kernel moved the frame's first VLAN tag out of the data (skb->vlan_*)
 * before tc runs. A VLAN ID there means the frame belongs to that VLAN's device, which judges
 * it after untagging (or, with no such device, the stack drops it): not ours here. VLAN ID 0
 * (802.1p priority only) stays on this device; so do further priority tags still in the frame,
 * which the stack strips after tc: walk those here, and find the IP header behind them.
 * *proto and *base: the ethertype and network-header offset of what follows the tags.
 * Returns PARSE_NOT_OURS for a frame with a VLAN ID, PARSE_BLIND for more priority tags than
 * CLEARIP_MAX_VLAN_TAGS (no IP header reachable, dropped by the caller).
 */
static __always_inline int skip_priority_tags(struct __sk_buff *skb, __u16 *proto, __u32 *base)
{
	if (skb->vlan_present && (skb->vlan_tci & VLAN_VID_MASK))
		return PARSE_NOT_OURS;
	*proto = skb->protocol;
	*base = 0;
#pragma unroll
	for (int i = 0; i < CLEARIP_MAX_VLAN_TAGS; i++) {
		__be16 tag[2];        /* TCI, then the next ethertype */

		if (*proto != CLEARIP_BE16(ETH_P_8021Q) && *proto != CLEARIP_BE16(ETH_P_8021AD))
			return PARSE_OK;
		if (bpf_skb_load_bytes_relative(skb, *base, tag, sizeof(tag), BPF_HDR_START_NET) < 0)
			return PARSE_NOT_OURS;    /* cut short: nothing the stack can deliver */
		if (CLEARIP_BE16(tag[0]) & VLAN_VID_MASK)
			return PARSE_NOT_OURS;    /* its VLAN device's, as above */
		*proto = tag[1];
		*base += sizeof(tag);
	}
	if (*proto != CLEARIP_BE16(ETH_P_8021Q) && *proto != CLEARIP_BE16(ETH_P_8021AD))
		return PARSE_OK;
	return PARSE_BLIND;
}

/* Fills `p` from the IPv4 header at `base`. */
static __always_inline int parse_v4(struct __sk_buff *skb, __u32 base, struct packet *p)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes_relative(skb, base, &ip, sizeof(ip), BPF_HDR_START_NET) < 0)
		return PARSE_NOT_OURS;
	if (ip.version != 4 || ip.ihl < 5)
		return PARSE_NOT_OURS;    /* malformed: the IP layer drops it */
	/* A non-first fragment carries no ports. Without its first fragment (judged here, and
	 * dropped if untrusted) it never reassembles into anything, so it is passed alone. A
	 * first fragment always holds the 8 bytes of ports (offsets count 8-byte units, and the
	 * stack discards an empty fragment). */
	if (CLEARIP_BE16(ip.frag_off) & IP_FRAG_OFFSET_MASK)
		return PARSE_NOT_OURS;
	__u32 hlen = ip.ihl * 4;
	__u32 tot = CLEARIP_BE16(ip.tot_len);

	if (tot < hlen)
		return PARSE_NOT_OURS;
	p->l4_off = base + hlen;
	p->l3_payload_len = tot - hlen;
	p->proto = ip.protocol;
	p->v6 = 0;
	p->src.addr[10] = 0xff;
	p->src.addr[11] = 0xff;
	__builtin_memcpy(&p->src.addr[12], &ip.saddr, 4);
	p->dst.addr[10] = 0xff;
	p->dst.addr[11] = 0xff;
	__builtin_memcpy(&p->dst.addr[12], &ip.daddr, 4);
	return PARSE_OK;
}

static __always_inline int is_ext_header(__u8 nexthdr)
{
	return nexthdr == NEXTHDR_HOP || nexthdr == NEXTHDR_ROUTING ||
	       nexthdr == NEXTHDR_FRAGMENT || nexthdr == NEXTHDR_AUTH || nexthdr == NEXTHDR_DEST;
}

/*
 * Fills `p` from the IPv6 header at `base` and walks the extension headers behind it (at
 * most CLEARIP_MAX_EXT_HDRS, each one fixed-size load) to the upper-layer header. A non-first
 * fragment is not ours, like IPv4's. PARSE_BLIND when the chain is longer than the bound or is
 * cut short, and when a UDP/TCP header announced at its end is not all there: its ports may
 * be in a later fragment (a first fragment must hold the whole chain, RFC 7112, but this
 * filter must not rely on every stack enforcing it).
 */
static __always_inline int parse_v6(struct __sk_buff *skb, __u32 base, struct packet *p)
{
	struct ipv6hdr ip6;

	if (bpf_skb_load_bytes_relative(skb, base, &ip6, sizeof(ip6), BPF_HDR_START_NET) < 0)
		return PARSE_NOT_OURS;
	if (ip6.version != 6)
		return PARSE_NOT_OURS;
	p->v6 = 1;
	__builtin_memcpy(p->src.addr, &ip6.saddr, 16);
	__builtin_memcpy(p->dst.addr, &ip6.daddr, 16);

	__u32 off = base + sizeof(ip6);
	__u8 nexthdr = ip6.nexthdr;

#pragma unroll
	for (int i = 0; i < CLEARIP_MAX_EXT_HDRS; i++) {
		__u8 hdr[4];          /* next header, length, and the fragment offset's bytes */

		if (!is_ext_header(nexthdr))
			break;
		if (bpf_skb_load_bytes_relative(skb, off, hdr, sizeof(hdr), BPF_HDR_START_NET) < 0)
			return PARSE_BLIND;
		if (nexthdr == NEXTHDR_FRAGMENT) {
			if (((hdr[2] << 8) | hdr[3]) & IP6_FRAG_OFFSET_MASK)
				return PARSE_NOT_OURS;
			off += 8;
		} else if (nexthdr == NEXTHDR_AUTH) {
			off += (hdr[1] + 2) * 4;    /* AH counts 4-byte units, less 2 (RFC 4302) */
		} else {
			off += (hdr[1] + 1) * 8;    /* 8-byte units, less 1 (RFC 8200 §4.3-4.6) */
		}
		nexthdr = hdr[0];
	}
	if (is_ext_header(nexthdr))
		return PARSE_BLIND;

	__u32 ext = off - base - sizeof(ip6);
	__u32 plen = CLEARIP_BE16(ip6.payload_len);
	__u8 l4[8];

	p->l4_off = off;
	p->l3_payload_len = plen > ext ? plen - ext : 0;
	p->proto = nexthdr;
	if ((nexthdr == IPPROTO_UDP || nexthdr == IPPROTO_TCP) &&
	    bpf_skb_load_bytes_relative(skb, off, l4, sizeof(l4), BPF_HDR_START_NET) < 0)
		return PARSE_BLIND;
	return PARSE_OK;
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
 * Is the destination one of the proxy's? In local_addrs; or broadcast / multicast, on the
 * link or in the address (a datagram to 255.255.255.255 or ff02::1 reaches a socket bound to
 * the wildcard address; the proxy's subnet broadcast addresses are in local_addrs); or,
 * while local_addrs holds no marker (no addresses yet), any destination: fail closed.
 */
static __always_inline int to_local(struct __sk_buff *skb, const struct packet *p)
{
	struct clearip_addr6 marker = {};

	if (skb->pkt_type == PACKET_BROADCAST || skb->pkt_type == PACKET_MULTICAST)
		return 1;
	if (p->v6 ? p->dst.addr[0] == 0xff
		  : (p->dst.addr[12] & 0xf0) == 0xe0 ||
		    (p->dst.addr[12] == 0xff && p->dst.addr[13] == 0xff &&
		     p->dst.addr[14] == 0xff && p->dst.addr[15] == 0xff))
		return 1;
	if (local_addrs.lookup((struct clearip_addr6 *)&p->dst))
		return 1;
	return !local_addrs.lookup(&marker);
}

/* A STUN Binding request (clearip.h): the first 8 bytes of the payload, `len` its length. */
static __always_inline int is_stun_binding_request(const __u8 *buf, __u32 len)
{
	__u32 msg_len = (buf[2] << 8) | buf[3];
	__u32 cookie = ((__u32)buf[4] << 24) | (buf[5] << 16) | (buf[6] << 8) | buf[7];

	return len >= CLEARIP_STUN_HEADER_LEN &&
	       ((buf[0] << 8) | buf[1]) == CLEARIP_STUN_BINDING_REQUEST &&
	       cookie == CLEARIP_STUN_MAGIC_COOKIE && (msg_len & 3) == 0 &&
	       msg_len == len - CLEARIP_STUN_HEADER_LEN;
}

/*
 * Is this UDP payload (`len` bytes at `off`) SIP? Exactly "\r\n" or "\r\n\r\n" (keepalive,
 * RFC 5626 §3.5.1), a STUN Binding request (the other keepalive, RFC 5626 §4.4.2), or at
 * least PROBE_LEN bytes starting with "SIP/2.0 " (a response) or with
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
	if (buf[0] == 0)    /* no method starts with NUL: only STUN can be left */
		return is_stun_binding_request(buf, len);
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

static __always_inline void count_total(struct __sk_buff *skb, __u32 verdict, __u64 pkts)
{
	struct clearip_verdict_stats *total = verdicts.lookup(&verdict);

	if (total) {    /* per-CPU value: plain adds are safe */
		total->pkts += pkts;
		total->bytes += skb->len;
	}
}

static __always_inline void count(struct __sk_buff *skb, const struct packet *p, __u32 verdict,
				  int admitted)
{
	/* A GRO aggregate is one skb but several packets on the wire. */
	__u64 pkts = skb->gso_segs > 1 ? skb->gso_segs : 1;
	__u64 bytes = skb->len;
	struct clearip_src_stats zero = {};
	struct clearip_src_stats *s;

	count_total(skb, verdict, pkts);
	if (admitted) {
		s = admitted_stats.lookup((struct clearip_addr6 *)&p->src);
		if (!s) {
			/* NOEXIST: another CPU may have just added it; either way look it up
			 * again. Fails when the map is full: counted in `verdicts` only. */
			admitted_stats.insert((struct clearip_addr6 *)&p->src, &zero);
			s = admitted_stats.lookup((struct clearip_addr6 *)&p->src);
			if (!s)
				return;
		}
		/* per-CPU value: plain adds */
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
		return;
	}
	s = src_stats.lookup((struct clearip_addr6 *)&p->src);
	if (!s) {
		/* May evict the least recently used source: that is the point of the LRU. */
		src_stats.insert((struct clearip_addr6 *)&p->src, &zero);
		s = src_stats.lookup((struct clearip_addr6 *)&p->src);
		if (!s)
			return;
	}
	/* shared by the CPUs: atomic adds */
	if (verdict == CLEARIP_VERDICT_PASS) {
		__sync_fetch_and_add(&s->passed_pkts, pkts);
		__sync_fetch_and_add(&s->passed_bytes, bytes);
	} else if (verdict == CLEARIP_VERDICT_DROP_UNTRUSTED) {
		__sync_fetch_and_add(&s->dropped_untrusted_pkts, pkts);
		__sync_fetch_and_add(&s->dropped_untrusted_bytes, bytes);
	} else {
		__sync_fetch_and_add(&s->dropped_nonsip_pkts, pkts);
		__sync_fetch_and_add(&s->dropped_nonsip_bytes, bytes);
	}
}

int clearip_ingress(struct __sk_buff *skb)
{
	struct packet p = {};
	struct clearip_port_key port_key = {};
	struct udphdr udp;
	__u32 verdict;
	__u32 base;
	__u16 proto;
	int admitted;
	int rc;

	if (skb->pkt_type == PACKET_OTHERHOST)
		return TC_ACT_UNSPEC;    /* another host's frame: the stack drops it */
	rc = skip_priority_tags(skb, &proto, &base);
	if (rc == PARSE_NOT_OURS)
		return TC_ACT_UNSPEC;
	if (rc == PARSE_BLIND) {
		/* Priority tags beyond the bound hide the IP header (and its source) from us,
		 * not from the stack. No real sender stacks them: drop, counted in total only. */
		count_total(skb, CLEARIP_VERDICT_DROP_UNTRUSTED, 1);
		return TC_ACT_SHOT;
	}
	if (proto == CLEARIP_BE16(ETH_P_IP))
		rc = parse_v4(skb, base, &p);
	else if (proto == CLEARIP_BE16(ETH_P_IPV6))
		rc = parse_v6(skb, base, &p);
	else
		return TC_ACT_UNSPEC;
	if (rc == PARSE_NOT_OURS)
		return TC_ACT_UNSPEC;
	if (rc == PARSE_BLIND) {
		/* No ports to go by: judged on the destination and the source alone. */
		if (!to_local(skb, &p))
			return TC_ACT_UNSPEC;
		admitted = source_admitted(&p);
		verdict = admitted ? CLEARIP_VERDICT_DROP_NONSIP : CLEARIP_VERDICT_DROP_UNTRUSTED;
		count(skb, &p, verdict, admitted);
		return TC_ACT_SHOT;
	}
	if (p.proto != IPPROTO_UDP && p.proto != IPPROTO_TCP)
		return TC_ACT_UNSPEC;

	/* UDP and TCP both have the destination port at bytes 2-3 of their header; 8 bytes
	 * (a UDP header) are always there for TCP too (its header is at least 20). A header cut
	 * short is IPv4's only (IPv6 said PARSE_BLIND): the stack drops it. */
	if (bpf_skb_load_bytes_relative(skb, p.l4_off, &udp, sizeof(udp), BPF_HDR_START_NET) < 0)
		return TC_ACT_UNSPEC;
	port_key.proto = p.proto;
	port_key.port = CLEARIP_BE16(udp.dest);
	if (!sip_ports.lookup(&port_key))
		return TC_ACT_UNSPEC;
	if (!to_local(skb, &p))
		return TC_ACT_UNSPEC;

	admitted = source_admitted(&p);
	if (!admitted) {
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

	count(skb, &p, verdict, admitted);
	/* PASS is TC_ACT_UNSPEC too, not TC_ACT_OK: OK would end classification and skip the
	 * filters other tools put after ours; UNSPEC lets them run, and accepts when none does. */
	return verdict == CLEARIP_VERDICT_PASS ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}
