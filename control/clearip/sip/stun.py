"""STUN keepalives on the SIP ports (RFC 5626 §4.4.2 over RFC 5389): bytes in, bytes out.

A SIP outbound client keeps its UDP flow (and its NAT binding) alive with STUN Binding requests
sent to the proxy's SIP port; the answer is a Binding success response carrying the address the
request came from (XOR-MAPPED-ADDRESS), which also tells the client when its NAT rebinds.
Nothing else of STUN is served here: other methods and classes are not keepalives.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")  # type, length, cookie, transaction id
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
MAX_REQUEST = 548  # RFC 5389 §7.1: a keepalive is far smaller; anything bigger is not one


def binding_request(data: bytes) -> tuple[bytes, bool] | None:
    """(transaction id, wants a FINGERPRINT) when `data` is a well-formed STUN Binding
    request, else None. The same shape check as the kernel's (bpf/clearip_tc.bpf.c)."""
    if not HEADER.size <= len(data) <= MAX_REQUEST:
        return None
    mtype, length, cookie, txid = HEADER.unpack_from(data)
    if mtype != BINDING_REQUEST or cookie != MAGIC_COOKIE:
        return None
    if length % 4 or length != len(data) - HEADER.size:
        return None
    fingerprint = False
    offset = HEADER.size
    while offset + 4 <= len(data):  # attributes: type, length, value padded to 4 bytes
        atype, alen = struct.unpack_from("!HH", data, offset)
        offset += 4 + alen + (-alen % 4)
        if offset > len(data):
            return None
        fingerprint = atype == ATTR_FINGERPRINT
    return txid, fingerprint


def binding_success(txid: bytes, address: tuple[str, int], fingerprint: bool = False) -> bytes:
    """The Binding success response telling the client the address we saw it at."""
    ip = ipaddress.ip_address(address[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    xport = address[1] ^ (MAGIC_COOKIE >> 16)
    if isinstance(ip, ipaddress.IPv4Address):
        xaddr = (int(ip) ^ MAGIC_COOKIE).to_bytes(4, "big")
        value = struct.pack("!BBH", 0, 0x01, xport) + xaddr
    else:
        mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + txid, "big")
        value = struct.pack("!BBH", 0, 0x02, xport) + (int(ip) ^ mask).to_bytes(16, "big")
    attrs = struct.pack("!HH", ATTR_XOR_MAPPED_ADDRESS, len(value)) + value
    if not fingerprint:
        return HEADER.pack(BINDING_SUCCESS, len(attrs), MAGIC_COOKIE, txid) + attrs
    # RFC 5389 §15.5: CRC-32 of everything before it, the length already counting it
    head = HEADER.pack(BINDING_SUCCESS, len(attrs) + 8, MAGIC_COOKIE, txid) + attrs
    crc = (zlib.crc32(head) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)
