"""SIP requests and responses over their raw bytes.

A message is parsed into its start line, a list of raw header lines (folds kept as written) and
the body. Nothing is re-serialised: `to_bytes()` joins the raw lines back, so every byte the
relay did not edit leaves exactly as it came in. Typed values (Via, CSeq, From ...) are parsed
on first use and cached until the next edit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from clearip.sip import limits
from clearip.sip.errors import SipProtocolError
from clearip.sip.headers import (
    _KEY_CACHE,
    LIST_HEADERS,
    CSeq,
    NameAddr,
    StarContact,
    Via,
    _show,
    ascii_uint,
    first_element_end,
    header_key,
    is_token,
    parse_contact_list,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_list,
    unfold,
)

CRLF = b"\r\n"
SIP_VERSION = b"SIP/2.0"

_SINGLE_HEADERS = ("call-id", "cseq", "from", "to")
# Counted by check(): the mandatory ones must appear once, Max-Forwards at most once (a second,
# larger one would let a loop outlive the first).
_COUNTED_HEADERS = (*_SINGLE_HEADERS, "max-forwards")
# SP, HTAB, the other controls and DEL: never raw in a Call-ID (RFC 3261 §25.1 callid = word
# ["@" word]) or a Request-URI (§19.1.2: such characters are escaped).
_CTL_OR_SPACE = bytes(range(0x21)) + b"\x7f"


class SipMessage:
    """Common part of requests and responses: header lines and body, with edits in place."""

    __slots__ = ("_cache", "_keys", "_lines", "body", "first_line")

    def __init__(self, first_line: bytes, lines: list[bytes], keys: list[str], body: bytes):
        self.first_line = first_line
        self._lines = lines  # raw header lines, without their CRLF; folds kept
        self._keys = keys  # canonical key of each line (compact forms expanded, lower case)
        self.body = body
        self._cache: dict[str, Any] = {}

    # -- reading -------------------------------------------------------------------------------

    is_request = False

    @property
    def header_count(self) -> int:
        return len(self._lines)

    def header_lines(self) -> list[tuple[str, bytes]]:
        """(key, raw line) pairs in wire order."""
        return list(zip(self._keys, self._lines, strict=True))

    def _value_at(self, i: int) -> bytes:
        line = self._lines[i]
        return unfold(line[line.index(b":") + 1 :])

    def has(self, name: str) -> bool:
        return header_key(name) in self._keys

    def get(self, name: str) -> bytes | None:
        """Value of the first header line named `name` (any case, compact form allowed)."""
        key = header_key(name)
        keys = self._keys
        for i in range(len(keys)):  # not keys.index(): a miss would raise, costly compiled
            if keys[i] == key:
                return self._value_at(i)
        return None

    def get_all(self, name: str) -> list[bytes]:
        """Values of every line named `name`, list headers split into their elements."""
        key = header_key(name)
        out: list[bytes] = []
        for i, k in enumerate(self._keys):
            if k == key:
                value = self._value_at(i)
                if key in LIST_HEADERS:
                    out.extend(split_list(value))
                else:
                    out.append(value)
        return out

    def _single(self, key: str) -> bytes:
        value = self.get(key)
        if value is None:
            raise SipProtocolError(f"missing {key.title()} header")
        return value

    @property
    def vias(self) -> list[Via]:
        hit = self._cache.get("via")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        vias = self._cache["via"] = [parse_via(v) for v in self.get_all("via")]
        return vias

    @property
    def top_via(self) -> Via:
        """The first Via only: what transactions and response routing need (cheaper than vias)."""
        cache = self._cache
        hit = cache.get("top-via")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        if "via" in cache:
            vias = cache["via"]
            if not vias:
                raise SipProtocolError("missing Via header")
            top = vias[0]
        else:
            value = self.get("via")
            if value is None:
                raise SipProtocolError("missing Via header")
            if b"," in value:
                first = split_list(value)
                if not first:
                    raise SipProtocolError("missing Via header")
                value = first[0]
            top = parse_via(value)
        cache["top-via"] = top
        return top

    @property
    def cseq(self) -> CSeq:
        hit = self._cache.get("cseq")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        cseq = self._cache["cseq"] = parse_cseq(self._single("cseq"))
        return cseq

    @property
    def call_id(self) -> str:
        hit = self._cache.get("call-id")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        value = self._single("call-id")
        # visible ASCII: `<`, `>` and `"` are word characters too (RFC 4475 §3.1.1.2)
        if not value or not value.isascii() or value.translate(None, _CTL_OR_SPACE) != value:
            raise SipProtocolError("malformed Call-ID")
        call_id = self._cache["call-id"] = value.decode("utf-8", "surrogateescape")
        return call_id

    @property
    def from_(self) -> NameAddr:
        hit = self._cache.get("from")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        addr = self._cache["from"] = parse_name_addr(self._single("from"), "From")
        return addr

    @property
    def to(self) -> NameAddr:
        hit = self._cache.get("to")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        addr = self._cache["to"] = parse_name_addr(self._single("to"), "To")
        return addr

    @property
    def contacts(self) -> list[NameAddr] | StarContact:
        hit = self._cache.get("contact")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        contacts = self._cache["contact"] = parse_contact_list(self.get_all("contact"))
        return contacts

    @property
    def routes(self) -> list[NameAddr]:
        hit = self._cache.get("route")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        routes = [] if "route" not in self._keys else [
            parse_name_addr(v, "Route") for v in self.get_all("route")
        ]
        self._cache["route"] = routes
        return routes

    @property
    def record_routes(self) -> list[NameAddr]:
        hit = self._cache.get("record-route")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        rrs = [parse_name_addr(v, "Record-Route") for v in self.get_all("record-route")]
        self._cache["record-route"] = rrs
        return rrs

    @property
    def max_forwards(self) -> int | None:
        hit = self._cache.get("max-forwards")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        value = self.get("max-forwards")
        hops = None
        if value is not None:
            # RFC 3261 §20.22: "an integer in the range 0-255" (RFC 4475 §3.1.2.4)
            hops = ascii_uint(value, 255)
            if hops is None:
                raise SipProtocolError("malformed Max-Forwards")
        self._cache["max-forwards"] = hops
        return hops

    @property
    def content_length(self) -> int | None:
        """The declared Content-Length (None if absent); `len(body)` is the truth after edits."""
        return _content_length(self)

    def check(self) -> None:
        """Parse the headers every SIP element needs (RFC 3261 §8.1.1), raising on bad ones.

        For a request, the CSeq method must also be the request's method (RFC 3261 §8.1.1.5;
        RFC 4475 §3.1.2.17-18): ACK and CANCEL carry their own method there too.
        """
        counts = dict.fromkeys(_COUNTED_HEADERS, 0)
        for k in self._keys:
            if k in counts:
                counts[k] += 1
        for key, n in counts.items():
            if n != 1 and (n or key in _SINGLE_HEADERS):
                what = "missing" if n == 0 else "duplicate"
                raise SipProtocolError(f"{what} {key.title()} header")
        if not self.vias:  # every Via: a malformed one below ours is still a bad message
            raise SipProtocolError("missing Via header")
        self.call_id  # noqa: B018
        cseq = self.cseq
        if self.is_request and cseq.method != self.method:  # type: ignore[attr-defined]
            raise SipProtocolError("CSeq method does not match the request method")
        self.from_  # noqa: B018
        self.to  # noqa: B018
        self.max_forwards  # noqa: B018

    def seed_top_via(self, via: Via) -> None:
        """Record the parsed form of a Via just put on top (it is exactly str(via))."""
        self._cache["top-via"] = via

    def check_response_routing(self) -> None:
        """What a proxy needs to route a response (RFC 3261 §16.7): top Via, CSeq, Call-ID.

        Lighter than check(): a proxy relays responses; their From/To are the endpoints'.
        """
        self.top_via  # noqa: B018
        self.cseq  # noqa: B018
        self.call_id  # noqa: B018

    # -- editing ------------------------------------------------------------------------------

    def _edited(self, key: str) -> None:
        """Forget what was parsed from header `key` (each cache entry is named by its header)."""
        cache = self._cache
        if cache:
            cache.pop(key, None)
            if key == "via":
                cache.pop("top-via", None)

    def insert_header(self, index: int, name: str, value: bytes | str) -> None:
        """Insert `name: value` as the header line at position `index`."""
        raw = _line(name, value)
        key = header_key(name)
        self._lines.insert(index, raw)
        self._keys.insert(index, key)
        self._edited(key)

    def prepend_header(self, name: str, value: bytes | str) -> None:
        """Insert above the first line of the same header: a new Via, Record-Route, Identity.

        With no such line yet it goes below the Via block (or at the top when there is none).
        """
        key = header_key(name)
        keys = self._keys
        if key in keys:
            index = keys.index(key)
        elif "via" in keys and key != "via":
            index = len(keys) - keys[::-1].index("via")
        else:
            index = 0
        self.insert_header(index, name, value)

    def append_header(self, name: str, value: bytes | str) -> None:
        """Add after the last line of the same header, or at the end of the header section."""
        key = header_key(name)
        index = len(self._keys)
        for i in range(len(self._keys) - 1, -1, -1):
            if self._keys[i] == key:
                index = i + 1
                break
        self.insert_header(index, name, value)

    def remove_header(self, name: str) -> int:
        """Remove every line of header `name`; returns how many were removed."""
        key = header_key(name)
        keep = [i for i, k in enumerate(self._keys) if k != key]
        removed = len(self._keys) - len(keep)
        if removed:
            self._lines = [self._lines[i] for i in keep]
            self._keys = [self._keys[i] for i in keep]
            self._edited(key)
        return removed

    def replace_header(self, name: str, value: bytes | str) -> None:
        """Set header `name` to one line with `value`, in place of its first line (else append)."""
        key = header_key(name)
        try:
            index = self._keys.index(key)
        except ValueError:
            self.append_header(name, value)
            return
        self.remove_header(name)
        self.insert_header(index, name, value)

    def pop_first_value(self, name: str) -> bytes | None:
        """Remove and return the first element of a list header (the top Via, the first Route).

        A line carrying several comma-separated values keeps the others.
        """
        key = header_key(name)
        try:
            index = self._keys.index(key)
        except ValueError:
            return None
        line = self._lines[index]
        colon = line.index(b":")
        values = split_list(unfold(line[colon + 1 :]))
        if len(values) <= 1:
            del self._lines[index]
            del self._keys[index]
        else:
            # keep the other values exactly as written, folds included
            cut = colon + 1 + first_element_end(line[colon + 1 :])
            self._lines[index] = line[: colon + 1] + b" " + line[cut + 1 :].lstrip(b" \t\r\n,")
        self._edited(key)
        return values[0] if values else b""

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        self.body = body
        if content_type is not None:
            self.replace_header("Content-Type", content_type)
        elif not body:
            self.remove_header("content-type")

    def copy(self) -> SipMessage:
        """A copy to edit (the INVITE for each next hop). Parsed values are never mutated, only
        replaced when their header is edited, so the copy keeps them instead of parsing again."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire, with a Content-Length that matches the body.

        A correct Content-Length line is left exactly as it came; a wrong one is rewritten in
        place and a missing one is added (mandatory on stream transports, RFC 3261 §18.3).
        """
        lines = self._lines
        keys = self._keys
        n = len(self.body)
        try:
            declared = _content_length(self)
        except SipProtocolError:
            declared = -1  # an edit left a bad or conflicting value: rewrite it below
        if declared != n:
            lines = list(lines)
            cl_line = b"Content-Length: %d" % n
            if declared is None:
                lines.append(cl_line)
            else:
                first = keys.index("content-length")
                lines = [
                    line
                    for i, line in enumerate(lines)
                    if keys[i] != "content-length" or i == first
                ]
                lines[first] = lines[first][: lines[first].index(b":")] + b": %d" % n
        return b"".join(
            (self.first_line, CRLF, CRLF.join(lines), CRLF, CRLF, self.body)
            if lines
            else (self.first_line, CRLF, CRLF, self.body)
        )

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(SipMessage):
    __slots__ = ("method", "uri")

    is_request = True

    def __init__(
        self, method: str, uri: bytes, first_line: bytes, lines: list[bytes], keys: list[str],
        body: bytes,
    ):
        super().__init__(first_line, lines, keys, body)
        self.method = method
        self.uri = uri  # Request-URI text as on the wire

    def copy(self) -> Request:
        clone = Request(
            self.method, self.uri, self.first_line, list(self._lines), list(self._keys), self.body
        )
        clone._cache = self._cache.copy()
        return clone

    def set_uri(self, uri: bytes | str) -> None:
        """Set the Request-URI (the method and version bytes stay as they came)."""
        raw = uri.encode("utf-8") if isinstance(uri, str) else uri
        if not raw or any(c in raw for c in b" \t\r\n"):
            raise ValueError(f"invalid Request-URI {raw!r}")
        self.uri = raw
        first_sp = self.first_line.index(b" ")
        last_sp = self.first_line.rindex(b" ")
        self.first_line = self.first_line[: first_sp + 1] + raw + self.first_line[last_sp:]

    def decrement_max_forwards(self) -> int:
        """RFC 3261 §16.6 step 3: decrement, or add 70 when absent; returns the new value."""
        current = self.max_forwards
        if current is None:
            self.append_header("Max-Forwards", b"%d" % limits.DEFAULT_MAX_FORWARDS)
            return limits.DEFAULT_MAX_FORWARDS
        new = max(current - 1, 0)
        index = self._keys.index("max-forwards")
        line = self._lines[index]
        self._lines[index] = line[: line.index(b":")] + b": %d" % new
        self._cache["max-forwards"] = new
        return new

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri.decode('utf-8', 'replace')}>"


class Response(SipMessage):
    __slots__ = ("reason", "status")

    def __init__(
        self, status: int, reason: bytes, first_line: bytes, lines: list[bytes], keys: list[str],
        body: bytes,
    ):
        super().__init__(first_line, lines, keys, body)
        self.status = status
        self.reason = reason  # reason phrase bytes as received (relayed unchanged)

    def copy(self) -> Response:
        clone = Response(
            self.status, self.reason, self.first_line, list(self._lines), list(self._keys),
            self.body,
        )
        clone._cache = self._cache.copy()
        return clone

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason.decode('utf-8', 'replace')}>"


def _line(name: str, value: bytes | str) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if b"\r" in raw or b"\n" in raw:
        raise ValueError("header value must not contain CR or LF")
    return name.encode("ascii") + b": " + raw


def _content_length(msg: SipMessage) -> int | None:
    """The declared body length, None without a Content-Length line.

    Several lines with the same value are accepted, as the stream framer does; different
    values are refused (RFC 4475 §3.3.9), since peers would disagree on where the body ends.
    """
    keys = msg._keys
    if "content-length" not in keys:
        return None
    if keys.count("content-length") == 1:
        value = ascii_uint(msg._value_at(keys.index("content-length")), 0xFFFFFFFF)
        if value is None:
            raise SipProtocolError("malformed Content-Length")
        return value
    declared: int | None = None
    for i, key in enumerate(keys):
        if key == "content-length":
            value = ascii_uint(msg._value_at(i), 0xFFFFFFFF)
            if value is None:
                raise SipProtocolError("malformed Content-Length")
            if declared is not None and value != declared:
                raise SipProtocolError("conflicting Content-Length values")
            declared = value
    return declared


# Parsing


def parse_message(
    buf: bytes | bytearray | memoryview,
    *,
    max_bytes: int = limits.MAX_MESSAGE_BYTES,
    max_headers: int = limits.MAX_HEADERS,
    framed: bool = False,
    check_controls: bool = True,
) -> Request | Response:
    """Parse one SIP message.

    `check_controls=False` lets control characters in the header section through: only to
    read the Via of a message already refused, to send it its 400.

    `framed=True` means a stream framer already cut the message at its Content-Length, so the
    body is exactly what follows the blank line. For a datagram (`framed=False`) the body is cut
    at Content-Length when that header is present (RFC 3261 §18.3), and a body shorter than
    declared is an error.

    Raises SipProtocolError for anything malformed; never another exception for any input.
    """
    # a bytearray or memoryview from a buffer becomes bytes: header names get hashed
    data = buf if isinstance(buf, bytes) else bytes(buf)
    if len(data) > max_bytes:
        raise SipProtocolError(f"message larger than {max_bytes} bytes", 513)
    start = 0
    # RFC 3261 §7.5: CRLFs before the start line are ignored
    while data.startswith(CRLF, start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        if data.endswith(CRLF) and len(data) > start:
            # a datagram whose header section runs to the end with no blank line: no body
            end = len(data) - 2
            body = b""
        else:
            raise SipProtocolError("no blank line after the header section")
    else:
        body = data[end + 4 :]
    head = data[start:end]
    if not head:
        raise SipProtocolError("empty message")
    raw_lines = head.split(CRLF)
    first_line = raw_lines[0]
    if len(first_line) > limits.MAX_START_LINE_BYTES:
        raise SipProtocolError("start line too long", 414)
    if b"\r\n " in head or b"\r\n\t" in head:
        lines, keys = _folded_header_lines(raw_lines, max_headers)
    else:
        # no folding (nearly every message): one line per header
        lines = raw_lines[1:]
        if len(lines) > max_headers:
            raise SipProtocolError(f"more than {max_headers} header lines")
        keys = []
        cache = _KEY_CACHE
        for raw in lines:
            colon = raw.find(b":")
            if colon <= 0:
                raise SipProtocolError(f"header line without a name and colon: {_show(raw)}")
            name = raw[:colon]
            key = cache.get(name)
            keys.append(key if key is not None else header_key(name.rstrip(b" \t")))
        if lines and max(map(len, lines)) > limits.MAX_LINE_BYTES:
            raise SipProtocolError("header line too long")
    crlfs = len(raw_lines) - 1
    if head.count(b"\n") != crlfs or head.count(b"\r") != crlfs:
        raise SipProtocolError("bare CR or LF in the header section")
    if check_controls and _CONTROL.search(head) is not None:
        # RFC 3261 §25.1 allows none in a header; a NUL would truncate the value in the C
        # parsers of the elements we pass it to, so they and we would disagree on it
        raise SipProtocolError("control character in the header section")
    msg = _parse_start_line(first_line, lines, keys, body)
    if not framed:
        declared = _content_length(msg)
        if declared is not None:
            if declared > len(body):
                raise SipProtocolError(
                    f"body shorter than Content-Length ({len(body)} < {declared})"
                )
            if declared < len(body):
                msg.body = body[:declared]  # RFC 3261 §18.3: bytes past it are discarded
    elif (declared := _content_length(msg)) is not None and declared != len(body):
        raise SipProtocolError("Content-Length does not match the framed body")
    return msg


# Control characters other than HTAB, CR and LF (bare CR/LF are refused on their own).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _folded_header_lines(raw_lines: list[bytes], max_headers: int) -> tuple[list[bytes], list[str]]:
    """Header lines with continuation lines (RFC 3261 §7.3.1 folding) joined to theirs."""
    lines: list[bytes] = []
    keys: list[str] = []
    for raw in raw_lines[1:]:
        if raw[:1] in (b" ", b"\t"):
            if not lines:
                raise SipProtocolError("continuation line before the first header")
            lines[-1] = lines[-1] + CRLF + raw
            if len(lines[-1]) > limits.MAX_LINE_BYTES:
                raise SipProtocolError("header line too long")
            continue
        if len(raw) > limits.MAX_LINE_BYTES:
            raise SipProtocolError("header line too long")
        colon = raw.find(b":")
        if colon <= 0:
            raise SipProtocolError(f"header line without a name and colon: {_show(raw)}")
        keys.append(header_key(raw[:colon].rstrip(b" \t")))
        lines.append(raw)
        if len(lines) > max_headers:
            raise SipProtocolError(f"more than {max_headers} header lines")
    return lines, keys


def _parse_start_line(
    first_line: bytes, lines: list[bytes], keys: list[str], body: bytes
) -> Request | Response:
    if first_line[:4].upper() == b"SIP/":
        parts = first_line.split(b" ", 2)
        if len(parts) < 2:
            raise SipProtocolError("malformed status line")
        _check_version(parts[0])
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SipProtocolError("malformed status code")
        reason = parts[2] if len(parts) == 3 else b""
        return Response(int(code), reason, first_line, lines, keys, body)
    parts = first_line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise SipProtocolError("malformed request line: expected 'METHOD URI SIP/2.0'")
    method, uri, version = parts
    if not is_token(method):
        raise SipProtocolError("malformed method in request line")
    _check_version(version)
    if uri.translate(None, _CTL_OR_SPACE) != uri:
        raise SipProtocolError("malformed Request-URI: whitespace or control character")
    colon = uri.find(b":")
    if colon <= 0 or not uri[:colon].replace(b"+", b"").replace(b"-", b"").replace(
        b".", b""
    ).isalnum():
        raise SipProtocolError("Request-URI has no scheme")
    return Request(method.decode("ascii"), uri, first_line, lines, keys, body)


def _check_version(version: bytes) -> None:
    if version.upper() != SIP_VERSION:
        # RFC 3261 §25.1: SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT; only a well-formed
        # other version is 505 (§21.5.7), anything else is a malformed start line
        major, dot, minor = version[4:].partition(b".")
        if version[:4].upper() == b"SIP/" and dot and major.isdigit() and minor.isdigit():
            raise SipProtocolError("SIP version not supported", 505)
        raise SipProtocolError("malformed SIP version")


# Building local requests and responses
_RESPONSE_COPIES = frozenset(("via", "from", "to", "call-id", "cseq"))


def new_request(method: str, uri: bytes, lines: list[tuple[str, bytes]]) -> Request:
    """A request this element makes (an ACK, a CANCEL, a BYE), from its header lines as they
    go on the wire, each with its lower-case name: nothing is formatted and parsed again."""
    first = method.encode("ascii") + b" " + uri + b" SIP/2.0"
    return Request(method, uri, first, [line for _, line in lines], [k for k, _ in lines], b"")


def build_response(
    request: Request,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, bytes | str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to `request` per RFC 3261 §8.2.6: Via, From, To, Call-ID, CSeq copied as raw.
    A To tag is added when the request's To has none and `to_tag` is given (every final
    response from a UAS needs one; 100 Trying does not)."""
    lines: list[bytes] = []
    keys: list[str] = []
    for key, line in zip(request._keys, request._lines, strict=True):
        if key in _RESPONSE_COPIES:
            if key == "to" and to_tag is not None and request.to.tag is None:
                line = line + b";tag=" + to_tag.encode("ascii")
            lines.append(line)
            keys.append(key)
    for name, value in headers:
        lines.append(_line(name, value))
        keys.append(header_key(name))
    lines.append(b"Content-Length: %d" % len(body))
    keys.append("content-length")
    phrase = reason.encode("utf-8")
    first = b"SIP/2.0 %d %s" % (status, phrase)
    return Response(status, phrase, first, lines, keys, body)
