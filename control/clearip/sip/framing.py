"""Sans-IO framing of SIP over a byte stream (TCP/TLS), RFC 3261 §18.3 and RFC 5626 keepalives.

``feed()`` only buffers; ``next_event()`` returns one complete message (the exact bytes from
the start line to the end of the body), a keepalive sentinel, or ``None`` for "need more data".
Nothing here parses a message beyond locating the end of its head and its Content-Length; the
message parser sees every byte that was framed and enforces the per-line and per-header limits.

Decisions a reader may want to know:

* Missing Content-Length counts as 0. §18.3 makes it mandatory on streams, but bodiless
  messages without it are common and unambiguous; if a body was in fact sent, its bytes become
  the start of the "next message" and the parser rejects that, so nothing is silently repaired.
* Identical duplicate Content-Length values are tolerated (as RFC 9110 §8.6 does for HTTP);
  differing ones are a 400, because two framers could split the stream differently.
* RFC 5626 §3.5.1: CRLFCRLF is a ping, a single CRLF the pong. A lone CRLF at the end of the
  buffer is held, because the rest of a ping split over two reads may still be in flight.
  A side that sent a ping and waits for the answer calls ``flush_pong()`` to take it.
* MAX_LEADING_CRLF bounds the CRLFs between messages within one burst of input: the count is
  reset when a message is framed or the buffer has been drained. A legitimate client pings once
  per 30-120 s (§4.4.1) forever on an idle flow, so a lifetime count would cut it off; a peer
  streaming CRLFs back to back fills the buffer and trips the bound. A slow trickle of CRLFs
  is no costlier than any other slow traffic and is left to the adapter's rate limits.
"""

from __future__ import annotations

import re
from typing import Final, TypeAlias, final

from clearip.sip.errors import SipProtocolError
from clearip.sip.limits import MAX_LEADING_CRLF, MAX_MESSAGE_BYTES


@final
class KeepalivePing:
    """The peer sent CRLFCRLF (RFC 5626 §4.4.1); a server answers with ``PONG_BYTES``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PING"


@final
class KeepalivePong:
    """The peer sent a lone CRLF: the answer to a ping we sent (RFC 5626 §4.4.1)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PONG"


PING: Final = KeepalivePing()
PONG: Final = KeepalivePong()
PING_BYTES: Final = b"\r\n\r\n"
PONG_BYTES: Final = b"\r\n"

FramingEvent: TypeAlias = bytes | KeepalivePing | KeepalivePong

_CR: Final = 0x0D
_LF: Final = 0x0A
_FOLD: Final = (0x20, 0x09)  # SP / HTAB start a continuation line (RFC 3261 §7.3.1)
_HEAD_END: Final = b"\r\n\r\n"

# Only the name and colon: the value may be folded over several lines, which is easier to
# follow by hand than to express without backtracking. The leading CRLF keeps the start line
# and continuation lines from matching; "l" is the compact form (RFC 3261 §7.3.3, §20.14).
_CONTENT_LENGTH: Final = re.compile(rb"\r\n(?:content-length|l)[ \t]*:", re.IGNORECASE)

# Copying the unconsumed tail costs at most what was consumed since the last copy, so the
# total stays linear; below this size the copy is not worth doing early.
_COMPACT_AT: Final = 4096


class StreamFramer:
    """Split one connection's inbound byte stream into SIP messages and keepalives.

    After a ``SipProtocolError`` the stream position is lost, so the framer refuses all further
    use with the same error and the connection must be closed.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self._max = max_message_bytes
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed data in _buf
        self._start: int | None = None  # start of the message being framed, once one began
        self._scan = 0  # where the next search for the end of the head resumes
        self._total: int | None = None  # length of head + body, once the head is complete
        self._crlfs = 0  # bare CRLFs seen in the current burst
        self._error: SipProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as an event."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append bytes read from the connection; no parsing happens here."""
        self._check_error()
        self._buf += data

    def next_event(self) -> FramingEvent | None:
        """Return the next message or keepalive, or ``None`` until more data is fed."""
        self._check_error()
        try:
            return self._next_event()
        except SipProtocolError as exc:
            self._error = exc
            # The data can never be used now; do not keep up to a message's worth alive.
            self._buf = bytearray()
            self._pos = 0
            raise

    def flush_pong(self) -> bool:
        """Take a held lone CRLF as the pong to our ping; ``True`` if there was one.

        Only the side that sent a ping should call this: for it, no ping from the peer is
        expected, so a lone CRLF need not wait to see whether a second one follows.
        """
        self._check_error()
        if self._start is None and self._buf[self._pos :] == PONG_BYTES:
            self._consume(2)
            return True
        return False

    def _check_error(self) -> None:
        if self._error is not None:
            # A fresh instance: re-raising the stored one would grow its traceback every time.
            raise SipProtocolError(self._error.reason, self._error.status)

    def _next_event(self) -> FramingEvent | None:
        # test a local, not `self._start`: _keepalive() may set it, and a compiled build (mypyc)
        # trusts the narrowing of an attribute across a call
        start = self._start
        if start is None:
            keepalive = self._keepalive()
            if keepalive is not None or self._start is None:
                return keepalive
        if self._total is None and not self._find_head_end():
            return None
        assert self._start is not None and self._total is not None
        end = self._start + self._total
        if len(self._buf) < end:
            return None
        with memoryview(self._buf) as view, view[self._start : end] as part:
            message = bytes(part)
        self._start = self._total = None
        self._crlfs = 0
        self._consume(end - self._pos)
        return message

    def _keepalive(self) -> FramingEvent | None:
        """Handle bytes at a message boundary: report a keepalive or mark a message start."""
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available == 0:
            self._crlfs = 0  # the burst is over: see the module docstring
            return None
        if buf[pos] != _CR or (available >= 2 and buf[pos + 1] != _LF):
            # A bare CR that is not part of a CRLF is left for the parser to reject.
            self._start = self._scan = pos
            return None
        if available < 4:
            if available == 3 and buf[pos + 2] != _CR:
                return self._keepalive_seen(PONG, 1)
            return None  # "\r", "\r\n" or "\r\n\r": the next byte decides
        if buf[pos + 2] == _CR and buf[pos + 3] == _LF:
            return self._keepalive_seen(PING, 2)
        return self._keepalive_seen(PONG, 1)

    def _keepalive_seen(self, event: FramingEvent, crlfs: int) -> FramingEvent:
        self._crlfs += crlfs
        if self._crlfs > MAX_LEADING_CRLF:
            raise SipProtocolError("too many CRLFs between messages")
        self._consume(2 * crlfs)
        return event

    def _find_head_end(self) -> bool:
        """Look for the end of the head, resuming where the last search stopped."""
        assert self._start is not None
        buf, start = self._buf, self._start
        found = buf.find(_HEAD_END, self._scan)
        if found < 0:
            if len(buf) - start >= self._max:
                # Even if the terminator's last byte came next, head alone would be too big.
                raise SipProtocolError("message head exceeds the size limit", 513)
            # The terminator may straddle the next read: keep its possible first 3 bytes.
            self._scan = max(start, len(buf) - 3)
            return False
        head_end = found + len(_HEAD_END)
        total = head_end - start + self._content_length(start, head_end)
        if total > self._max:
            raise SipProtocolError("message exceeds the size limit", 513)
        self._total = total
        return True

    def _content_length(self, start: int, head_end: int) -> int:
        """Content-Length declared in the head ``buf[start:head_end]``; 0 when absent."""
        buf = self._buf
        values: set[bytes] = set()
        for match in _CONTENT_LENGTH.finditer(buf, start, head_end):
            # The head ends in CRLFCRLF, so these searches never leave it.
            line_end = buf.find(b"\r\n", match.end())
            while buf[line_end + 2] in _FOLD:
                line_end = buf.find(b"\r\n", line_end + 2)
            value = bytes(buf[match.end() : line_end]).replace(b"\r\n", b"").strip(b" \t")
            if not value.isdigit():  # also refuses a sign, "_" and inner spaces that int() takes
                raise SipProtocolError("invalid Content-Length")
            values.add(value.lstrip(b"0") or b"0")
        if not values:
            return 0
        if len(values) > 1:
            raise SipProtocolError("conflicting Content-Length values")
        (value,) = values
        # Compare lengths first: int() of a huge digit string is slow or refused outright.
        if len(value) > len(str(self._max)):
            raise SipProtocolError("declared body exceeds the size limit", 513)
        return int(value)

    def _consume(self, count: int) -> None:
        """Drop ``count`` bytes from the front, compacting only when it pays for itself."""
        self._pos += count
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = self._scan = 0
        elif self._pos >= _COMPACT_AT and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = self._scan = 0
