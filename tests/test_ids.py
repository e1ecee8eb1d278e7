"""The proxy's identifiers (relay/ids.py): the branch format its readers share, and which
worker a raw datagram belongs to."""

from __future__ import annotations

import zlib

from clearip.relay.ids import Ids, call_hash, owner_of


def counting_bytes() -> object:
    """Bytes 0, 1, 2 ... (mod 256) across calls; `take.calls` counts the draws."""
    n = 0

    def take(size: int) -> bytes:
        nonlocal n
        take.calls += 1  # type: ignore[attr-defined]
        out = bytes((n + i) % 256 for i in range(size))
        n += size
        return out

    take.calls = 0  # type: ignore[attr-defined]
    return take


def test_branches_and_tags_have_the_documented_form() -> None:
    ids = Ids(3, "0badcafe", counting_bytes())  # type: ignore[arg-type]
    assert ids.branch() == "z9hG4bK.cip3.0badcafe.0001020304050607"
    assert ids.tag() == "cip08090a0b0c0d0e0f"


def test_random_bytes_are_drawn_in_bulk_and_never_reused() -> None:
    """os.urandom is a syscall: one draw serves 512 identifiers, each byte used once."""
    source = counting_bytes()
    ids = Ids(0, "0badcafe", source)  # type: ignore[arg-type]
    drawn = "".join(ids.branch()[-16:] for _ in range(512))
    assert drawn == bytes(i % 256 for i in range(4096)).hex()  # each byte once, in order
    assert source.calls == 1  # type: ignore[attr-defined]
    ids.tag()
    assert source.calls == 2  # type: ignore[attr-defined]


def test_only_this_instances_branches_are_ours() -> None:
    ids = Ids(0, "0badcafe", counting_bytes())  # type: ignore[arg-type]
    assert ids.is_ours(ids.branch())
    assert ids.is_ours("z9hG4bK.cip1.0badcafe.ffff")  # another worker of this proxy
    assert not ids.is_ours("z9hG4bK.cip0.feedf00d.ffff")  # a twin proxy
    assert not ids.is_ours("z9hG4bK-sw-1") and not ids.is_ours(None)
    assert not ids.is_ours("z9hG4bK.cip0.0badcafe")  # no random part


def test_a_response_goes_to_the_worker_in_our_branch() -> None:
    resp = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5071;branch=z9hG4bK.cip1.0badcafe.ab\r\n"
        b"Call-ID: whatever\r\n\r\n"
    )
    assert owner_of(resp, 2) == 1
    assert owner_of(resp, 4) == 1


def test_anything_else_goes_by_its_call_id_long_or_compact() -> None:
    long = b"BYE sip:a@b SIP/2.0\r\nCall-ID:  abc@host \r\n\r\n"
    compact = b"BYE sip:a@b SIP/2.0\r\ni: abc@host\r\n\r\n"
    assert call_hash(b"abc@host") == zlib.crc32(b"abc@host")  # the same in every process
    assert owner_of(long, 7) == owner_of(compact, 7) == zlib.crc32(b"abc@host") % 7
    assert owner_of(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", 2) is None
