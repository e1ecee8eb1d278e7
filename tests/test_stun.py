"""STUN keepalives (RFC 5626 §4.4.2): bytes in, bytes out, against RFC 5769's test vectors."""

from __future__ import annotations

import struct
import zlib

from clearip.sip.stun import (
    BINDING_SUCCESS,
    FINGERPRINT_XOR,
    HEADER,
    MAGIC_COOKIE,
    binding_request,
    binding_success,
)

TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 §2.1: a Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
# MESSAGE-INTEGRITY and FINGERPRINT
SAMPLE_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e20746573742063 6c69656e74".replace(" ", "")
    + "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "00080014 9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2".replace(" ", "")
    + "80280004e57a3bcf"
)


def test_rfc5769_request_is_a_binding_request_with_fingerprint() -> None:
    assert binding_request(SAMPLE_REQUEST) == (TXID, True)
    # its FINGERPRINT is what our algorithm computes over the bytes before it
    crc = (zlib.crc32(SAMPLE_REQUEST[:-8]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    assert SAMPLE_REQUEST[-4:] == struct.pack("!I", crc)


def test_bare_keepalive_request() -> None:
    req = HEADER.pack(0x0001, 0, MAGIC_COOKIE, TXID)
    assert binding_request(req) == (TXID, False)


def test_not_binding_requests() -> None:
    bare = HEADER.pack(0x0001, 0, MAGIC_COOKIE, TXID)
    assert binding_request(bare[:19]) is None  # short
    assert binding_request(HEADER.pack(0x0101, 0, MAGIC_COOKIE, TXID)) is None  # a response
    assert binding_request(HEADER.pack(0x0011, 0, MAGIC_COOKIE, TXID)) is None  # indication
    assert binding_request(HEADER.pack(0x0001, 0, 0x2112A443, TXID)) is None  # no cookie
    assert binding_request(HEADER.pack(0x0001, 4, MAGIC_COOKIE, TXID)) is None  # length lies
    assert binding_request(HEADER.pack(0x0001, 2, MAGIC_COOKIE, TXID) + b"ab") is None  # not /4
    overrun = HEADER.pack(0x0001, 4, MAGIC_COOKIE, TXID) + struct.pack("!HH", 0x8022, 64)
    assert binding_request(overrun) is None
    assert binding_request(b"INVITE sip:x@y SIP/2.0\r\n" + bytes(40)) is None
    assert binding_request(HEADER.pack(0x0001, 600, MAGIC_COOKIE, TXID) + bytes(600)) is None


def test_success_carries_the_xor_mapped_ipv4_address() -> None:
    out = binding_success(TXID, ("192.0.2.1", 32853))
    assert out[:20] == HEADER.pack(BINDING_SUCCESS, 12, MAGIC_COOKIE, TXID)
    # RFC 5769 §2.2's XOR-MAPPED-ADDRESS, byte for byte
    assert out[20:] == bytes.fromhex("00200008" "0001a147e112a643")
    assert binding_success(TXID, ("::ffff:192.0.2.1", 32853)) == out


def test_success_carries_the_xor_mapped_ipv6_address() -> None:
    out = binding_success(TXID, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
    # RFC 5769 §2.3
    assert out[20:] == bytes.fromhex("00200014" "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")


def test_success_with_fingerprint_when_asked() -> None:
    out = binding_success(TXID, ("192.0.2.1", 32853), fingerprint=True)
    assert struct.unpack_from("!H", out, 2)[0] == len(out) - 20
    crc = (zlib.crc32(out[:-8]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    assert out[-8:] == struct.pack("!HHI", 0x8028, 4, crc)
