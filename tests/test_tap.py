"""The tap record format and its sinks, over real Unix datagram sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from clearip.relay.tap import SocketSink, TapReader, TapRecord, decode_record, encode_record

MSG = b"SIP/2.0 302 Moved Temporarily\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "rec",
    [
        TapRecord(1.5, "in", "tls", ("10.0.0.1", 5061), ("10.0.0.2", 40000), MSG, True),
        TapRecord(2.0, "out", "udp", ("::1", 5070), ("2001:db8::9", 5060), b""),
    ],
)
def test_record_round_trips(rec: TapRecord) -> None:
    assert decode_record(encode_record(rec)) == rec


def test_garbage_is_not_a_record() -> None:
    with pytest.raises(ValueError):
        decode_record(b"CTAP")
    with pytest.raises(ValueError):
        decode_record(b"XXXX" + bytes(60))


def test_sink_delivers_filters_and_notices_the_capture_has_gone(tmp_path: Path) -> None:
    path = str(tmp_path / "cap.sock")
    reader = TapReader(path)
    sink = SocketSink(path, ["tls"])
    tls = TapRecord(1.0, "in", "tls", ("10.0.0.1", 5061), ("10.0.0.2", 4000), MSG, True)
    try:
        assert sink.wants("tls") and not sink.wants("udp")
        sink.emit(tls)
        assert reader.read(timeout=5) == tls
        assert reader.read(timeout=0.01) is None
    finally:
        reader.close()
    sink.emit(tls)
    assert sink.dead
    sink.close()


def test_sink_drops_rather_than_blocks_when_the_capture_lags(tmp_path: Path) -> None:
    path = str(tmp_path / "cap.sock")
    reader = TapReader(path)
    sink = SocketSink(path)
    big = TapRecord(1.0, "in", "udp", ("10.0.0.1", 1), ("10.0.0.2", 2), b"x" * 60000)
    try:
        for _ in range(2000):  # far more than the socket buffers hold; never blocks
            sink.emit(big)
        assert sink.dropped > 0 and not sink.dead
        assert reader.read(timeout=5) == big
    finally:
        sink.close()
        reader.close()


def test_unknown_transport_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown transport 'sctp'"):
        SocketSink(str(tmp_path / "x.sock"), ["sctp"])


def test_a_record_that_cannot_be_encoded_is_dropped_not_raised(tmp_path: Path) -> None:
    path = str(tmp_path / "cap.sock")
    reader = TapReader(path)
    sink = SocketSink(path)
    try:
        sink.emit(TapRecord(1.0, "in", "udp", ("10.0.0.1", 1), ("::1", 2), MSG))
        assert sink.dropped == 1 and not sink.dead
        assert reader.read(timeout=0.05) is None
    finally:
        sink.close()
        reader.close()
