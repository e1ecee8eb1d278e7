"""Hypothesis properties of the SIP message core.

- Generated valid messages (random header sets and order, compact and mixed-case names, odd
  whitespace, folding, multi-value lines, any body with its Content-Length) parse to the values
  they were built from and `to_bytes()` gives back exactly the input.
- Edits against a model of the header lines: every untouched line stays byte-identical and
  Content-Length always matches the body.
- Any mutation of a valid message (byte flips, insertions, deletions, truncation, duplicated or
  dropped lines) gives a message or SipProtocolError, and whatever a parsed message is asked
  afterwards also raises nothing else (the same `exercise()` as the atheris target).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearip.sip.errors import SipProtocolError
from clearip.sip.headers import CSeq, NameAddr, header_key
from clearip.sip.message import Request, Response, parse_message
from tests.fuzz_parser import exercise

settings.register_profile(
    "sip", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
SIP_SETTINGS = settings.get_profile("sip")

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
WORD_CHARS = TOKEN_CHARS + '()<>:\\"/[]?{}'  # RFC 3261 callid word
UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=10)
lower_labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
domains = st.lists(lower_labels, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "test"]))
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.sampled_from(["2001:db8::1", "2001:db8::9:255", "::1", "fe80::a:b:c", "::ffff:192.0.2.1"])
ports = st.none() | st.integers(1, 65535)
users = st.text(UNRESERVED + "&=+$;?/", min_size=1, max_size=10)


@st.composite
def host_ports(draw: st.DrawFn) -> tuple[str, str, int | None]:
    """(text as written, host as parsed, port)."""
    kind = draw(st.sampled_from(["dns", "v4", "v6"]))
    host = draw(domains if kind == "dns" else ipv4 if kind == "v4" else ipv6)
    port = draw(ports)
    text = f"[{host}]" if kind == "v6" else host
    if port is not None:
        text += f":{port}"
    return text, host, port


@st.composite
def sip_uris(draw: st.DrawFn) -> str:
    text, _, _ = draw(host_ports())
    user = draw(st.none() | users)
    params = draw(
        st.lists(st.sampled_from([";lr", ";transport=tcp", ";user=phone", ";x=1"]), max_size=2)
    )
    scheme = draw(st.sampled_from(["sip", "sips", "SIP"]))
    return f"{scheme}:{user + '@' if user else ''}{text}{''.join(params)}"


# ---------------------------------------------------------------------------------------------
# Rendering with random but valid formatting


def ws(draw: st.DrawFn, allow_empty: bool = True) -> str:
    return draw(st.sampled_from(["", " ", "\t", "  "] if allow_empty else [" ", "\t", " \t "]))


def name_as_written(draw: st.DrawFn, name: str, compact: str | None = None) -> str:
    if compact is not None and draw(st.booleans()):
        name = compact
    style = draw(st.sampled_from(["as-is", "lower", "upper", "random"]))
    if style == "lower":
        return name.lower()
    if style == "upper":
        return name.upper()
    if style == "random":
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))
    return name


def fold(draw: st.DrawFn, value: str) -> str:
    """Replace some single spaces with a line fold (not one followed by whitespace, which the
    fold would swallow, nor the one already starting a continuation line)."""
    out: list[str] = []
    for i, ch in enumerate(value):
        nxt = value[i + 1] if i + 1 < len(value) else ""
        prev = value[i - 1] if i else "\n"
        if ch == " " and nxt not in " \t" and prev != "\n" and draw(st.integers(0, 3)) == 0:
            out.append("\r\n" + draw(st.sampled_from([" ", "\t", "   "])))
        else:
            out.append(ch)
    return "".join(out)


def header_line(draw: st.DrawFn, name: str, value: str, compact: str | None = None) -> bytes:
    head = name_as_written(draw, name, compact) + ws(draw) + ":"
    lead = draw(st.sampled_from(["", " ", "  ", "\t", "\r\n "]))
    if lead == "" and value[:1] in ("", " "):
        lead = " "
    return (head + lead + fold(draw, value)).encode()


def join_list(draw: st.DrawFn, values: list[str]) -> str:
    out = values[0]
    for v in values[1:]:
        out += draw(st.sampled_from([",", ", ", " ,", " , ", ",\r\n ", ",  "])) + v
    return out


@dataclass
class Expected:
    """What a generated message must parse to."""

    is_request: bool
    method: str = ""
    uri: bytes = b""
    status: int = 0
    reason: bytes = b""
    vias: list[tuple[str, str, int | None, str]] = field(default_factory=list)
    from_: NameAddr | None = None
    to: NameAddr | None = None
    call_id: str = ""
    cseq: CSeq | None = None
    max_forwards: int | None = None
    contacts: list[NameAddr] | str = field(default_factory=list)
    routes: list[NameAddr] = field(default_factory=list)
    record_routes: list[NameAddr] = field(default_factory=list)
    extra: dict[str, list[bytes]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    body: bytes = b""


@dataclass
class Line:
    key: str
    raw: bytes
    # items this line contributes, in order, to a list-valued expectation
    vias: list[tuple[str, str, int | None, str]] = field(default_factory=list)
    contacts: list[NameAddr] = field(default_factory=list)
    routes: list[NameAddr] = field(default_factory=list)
    record_routes: list[NameAddr] = field(default_factory=list)
    extra: bytes | None = None  # the value of an unknown header


@st.composite
def vias(draw: st.DrawFn) -> tuple[str, tuple[str, str, int | None, str]]:
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "wss", "udp"]))
    text, host, port = draw(host_ports())
    branch = "z9hG4bK" + draw(tokens)
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    ";rport",
                    ";rport=5062",
                    ";received=192.0.2.200",
                    ";maddr=239.255.255.1",
                    ";ttl=16",
                    ";x-ext",
                ]
            ),
            max_size=2,
            unique=True,
        )
    )
    sp1, sp2 = ws(draw), ws(draw)
    value = (
        f"SIP{sp1}/{sp2}2.0/{transport}{ws(draw, allow_empty=False)}{text}{ws(draw)};"
        f"branch={branch}{''.join(extra)}"
    )
    return value, (transport.upper(), host, port, branch)


@st.composite
def name_addrs(draw: st.DrawFn, tag: bool = False) -> tuple[str, NameAddr]:
    uri = draw(sip_uris())
    form = draw(st.sampled_from(["bare", "angle", "token", "quoted"]))
    params: dict[str, str | None] = {}
    if tag:
        params["tag"] = draw(tokens)
    for name in draw(st.lists(st.sampled_from(["x-a", "y"]), max_size=2, unique=True)):
        params[name] = draw(st.none() | tokens)
    ptext = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
    if form == "bare" and not any(c in uri for c in ",;?"):
        return uri + ptext, NameAddr(None, uri, params, False)
    if form in ("bare", "angle"):
        return f"<{uri}>{ptext}", NameAddr(None, uri, params, True)
    if form == "token":
        words = draw(st.lists(tokens, min_size=1, max_size=3))
        display = " ".join(words)
        return f"{display}{ws(draw)}<{uri}>{ptext}", NameAddr(display, uri, params, True)
    display = draw(st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12))
    quoted = display.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}"{ws(draw)}<{uri}>{ptext}', NameAddr(display, uri, params, True)


def name_addr_lines(
    draw: st.DrawFn, name: str, compact: str | None, key: str
) -> tuple[list[Line], list[NameAddr]]:
    lines: list[Line] = []
    all_items: list[NameAddr] = []
    for _ in range(draw(st.integers(1, 3))):
        pairs = draw(st.lists(name_addrs(), min_size=1, max_size=3))
        raw = header_line(draw, name, join_list(draw, [p[0] for p in pairs]), compact)
        items = [p[1] for p in pairs]
        line = Line(key, raw)
        setattr(line, key.replace("-", "_") + "s", items)
        lines.append(line)
        all_items.extend(items)
    return lines, all_items


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, Expected]:
    is_request = draw(st.booleans())
    exp = Expected(is_request)
    method = draw(
        st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"]) | tokens
    )
    if is_request:
        exp.method = method
        exp.uri = draw(
            sip_uris() | st.sampled_from(["tel:+12025550123", "urn:service:sos"])
        ).encode()
        version = draw(st.sampled_from(["SIP/2.0", "sip/2.0"]))
        first = method.encode() + b" " + exp.uri + b" " + version.encode()
    else:
        exp.status = draw(st.integers(100, 699))
        exp.reason = draw(
            st.text(
                st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20
            )
        ).encode()
        first = b"SIP/2.0 %d " % exp.status + exp.reason

    lines: list[Line] = []
    for _ in range(draw(st.integers(1, 3))):
        pairs = draw(st.lists(vias(), min_size=1, max_size=3))
        raw = header_line(draw, "Via", join_list(draw, [p[0] for p in pairs]), "v")
        lines.append(Line("via", raw, vias=[p[1] for p in pairs]))

    text, exp.from_ = draw(name_addrs(tag=True))
    lines.append(Line("from", header_line(draw, "From", text, "f")))
    text, exp.to = draw(name_addrs(tag=not is_request or draw(st.booleans())))
    lines.append(Line("to", header_line(draw, "To", text, "t")))
    exp.call_id = draw(st.text(WORD_CHARS, min_size=1, max_size=12)) + draw(
        st.sampled_from(["", "@host.test", "@192.0.2.1"])
    )
    lines.append(Line("call-id", header_line(draw, "Call-ID", exp.call_id, "i")))
    number = draw(st.integers(0, 2**32 - 1))
    cseq_method = method if is_request else draw(tokens)
    exp.cseq = CSeq(number, cseq_method)
    zeros = "0" * draw(st.integers(0, 2))
    lines.append(
        Line(
            "cseq",
            header_line(draw, "CSeq", f"{zeros}{number}{ws(draw, allow_empty=False)}{cseq_method}"),
        )
    )
    if draw(st.booleans()):
        exp.max_forwards = draw(st.integers(0, 255))
        lines.append(
            Line("max-forwards", header_line(draw, "Max-Forwards", f"{zeros}{exp.max_forwards}"))
        )
    contact_kind = draw(st.sampled_from(["none", "star", "list"]))
    if contact_kind == "star":
        exp.contacts = "*"
        lines.append(Line("contact", header_line(draw, "Contact", "*", "m")))
    elif contact_kind == "list":
        new, exp.contacts = name_addr_lines(draw, "Contact", "m", "contact")
        lines.extend(new)
    if draw(st.booleans()):
        new, exp.routes = name_addr_lines(draw, "Route", None, "route")
        lines.extend(new)
    if draw(st.booleans()):
        new, exp.record_routes = name_addr_lines(draw, "Record-Route", None, "record-route")
        lines.extend(new)
    for _ in range(draw(st.integers(0, 4))):
        name = "X-" + draw(tokens)
        value = draw(
            st.text(
                st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20
            )
        ).strip(" \t")
        line = Line(header_key(name), header_line(draw, name, value), extra=value.encode())
        lines.append(line)
    exp.body = draw(st.binary(max_size=80) | st.just(b"v=0\r\n\r\no=x\r\n"))
    if exp.body and draw(st.booleans()):
        lines.append(
            Line("content-type", header_line(draw, "Content-Type", "application/sdp", "c"))
        )
    lines.append(
        Line(
            "content-length",
            header_line(
                draw, "Content-Length", "0" * draw(st.integers(0, 2)) + str(len(exp.body)), "l"
            ),
        )
    )

    order = draw(st.permutations(range(len(lines))))
    lines = [lines[i] for i in order]
    exp.keys = [line.key for line in lines]
    exp.vias = [v for line in lines for v in line.vias]
    if isinstance(exp.contacts, list):
        exp.contacts = [c for line in lines for c in line.contacts]
    exp.routes = [r for line in lines for r in line.routes]
    exp.record_routes = [r for line in lines for r in line.record_routes]
    for line in lines:
        if line.extra is not None:
            exp.extra.setdefault(line.key, []).append(line.extra)
    raw = first + b"\r\n" + b"".join(line.raw + b"\r\n" for line in lines) + b"\r\n" + exp.body
    return raw, exp


# ---------------------------------------------------------------------------------------------
# Round trip


@settings(SIP_SETTINGS, max_examples=300)
@given(messages())
def test_valid_messages_parse_to_their_values_and_round_trip(case: tuple[bytes, Expected]) -> None:
    raw, exp = case
    for framed in (False, True):
        msg = parse_message(raw, framed=framed)
        assert msg.to_bytes() == raw
    msg.check()
    if exp.is_request:
        assert isinstance(msg, Request)
        assert (msg.method, msg.uri) == (exp.method, exp.uri)
    else:
        assert isinstance(msg, Response)
        assert (msg.status, msg.reason) == (exp.status, exp.reason)
    assert [k for k, _ in msg.header_lines()] == exp.keys
    assert [(v.transport, v.host, v.port, v.branch) for v in msg.vias] == exp.vias
    assert msg.from_ == exp.from_
    assert msg.to == exp.to
    assert msg.call_id == exp.call_id
    assert msg.cseq == exp.cseq
    assert msg.max_forwards == exp.max_forwards
    contacts = msg.contacts
    if exp.contacts == "*":
        assert str(contacts) == "*"
    else:
        assert contacts == exp.contacts
    assert msg.routes == exp.routes
    assert msg.record_routes == exp.record_routes
    for key, values in exp.extra.items():
        assert msg.get_all(key) == values
    assert msg.body == exp.body
    assert msg.content_length == len(exp.body)
    # the same message in a datagram with trailing junk and leading CRLFs
    assert parse_message(b"\r\n\r\n" + raw + b"JUNK\r\n\r\n").to_bytes() == raw


# ---------------------------------------------------------------------------------------------
# Edits against a model


class Model:
    """The header lines as the edits are documented to leave them."""

    def __init__(self, msg: Request | Response) -> None:
        self.first = msg.first_line
        self.lines = [(k, line) for k, line in msg.header_lines()]
        self.body = msg.body

    def keys(self) -> list[str]:
        return [k for k, _ in self.lines]

    def insert(self, index: int, name: str, value: bytes) -> None:
        self.lines.insert(index, (header_key(name), name.encode() + b": " + value))

    def prepend(self, name: str, value: bytes) -> None:
        key, keys = header_key(name), self.keys()
        if key in keys:
            index = keys.index(key)
        elif "via" in keys:
            index = max(i for i, k in enumerate(keys) if k == "via") + 1
        else:
            index = 0
        self.insert(index, name, value)

    def append(self, name: str, value: bytes) -> None:
        key, keys = header_key(name), self.keys()
        same = [i for i, k in enumerate(keys) if k == key]
        self.insert(same[-1] + 1 if same else len(keys), name, value)

    def remove(self, name: str) -> None:
        key = header_key(name)
        self.lines = [(k, line) for k, line in self.lines if k != key]

    def replace(self, name: str, value: bytes) -> None:
        key, keys = header_key(name), self.keys()
        if key not in keys:
            self.append(name, value)
            return
        index = keys.index(key)
        self.remove(name)
        self.insert(index, name, value)

    def to_bytes(self) -> bytes:
        lines = [line for _, line in self.lines]
        keys = self.keys()
        n = len(self.body)
        if "content-length" not in keys:
            lines.append(b"Content-Length: %d" % n)
        else:
            first = keys.index("content-length")
            line = lines[first]
            name, _, value = line.partition(b":")
            if (
                int(value.replace(b"\r\n", b"").strip(b" \t")) != n
                or keys.count("content-length") > 1
            ):
                lines = [
                    x for i, x in enumerate(lines) if keys[i] != "content-length" or i == first
                ]
                lines[first] = name + b": %d" % n
        return self.first + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n" + self.body


header_names = st.sampled_from(
    ["Via", "v", "Record-Route", "Route", "X-Edit", "Subject", "Content-Type", "Max-Forwards"]
)
edit_values = st.sampled_from(
    [b"SIP/2.0/UDP edit.test;branch=z9hG4bK-e", b"<sip:rr.test;lr>", b"1", b"a, b", b""]
)
edits = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 30), header_names, edit_values),
    st.tuples(st.just("prepend"), header_names, edit_values),
    st.tuples(st.just("append"), header_names, edit_values),
    st.tuples(st.just("remove"), header_names | st.sampled_from(["contact", "m", "x-nothing"])),
    st.tuples(st.just("replace"), header_names, edit_values),
    st.tuples(st.just("pop"), st.sampled_from(["via", "route", "record-route", "contact"])),
    st.tuples(st.just("decrement")),
    st.tuples(st.just("set_uri"), st.sampled_from([b"sip:new.test", b"tel:+15550100"])),
    st.tuples(
        st.just("set_body"),
        st.binary(max_size=30),
        st.none() | st.sampled_from(["text/plain", "application/sdp"]),
    ),
)


@settings(SIP_SETTINGS, max_examples=200)
@given(messages(), st.lists(edits, min_size=1, max_size=8))
def test_edits_keep_untouched_lines_and_content_length(
    case: tuple[bytes, Expected], ops: list[tuple]
) -> None:
    msg = parse_message(case[0])
    model = Model(msg)
    for op in ops:
        kind = op[0]
        if kind == "insert":
            _, index, name, value = op
            msg.insert_header(index, name, value)
            model.insert(index, name, value)
        elif kind == "prepend":
            msg.prepend_header(op[1], op[2])
            model.prepend(op[1], op[2])
        elif kind == "append":
            msg.append_header(op[1], op[2])
            model.append(op[1], op[2])
        elif kind == "remove":
            assert msg.remove_header(op[1]) == model.keys().count(header_key(op[1]))
            model.remove(op[1])
        elif kind == "replace":
            msg.replace_header(op[1], op[2])
            model.replace(op[1], op[2])
        elif kind == "pop":
            pop_model(model, msg, op[1])
        elif kind == "decrement":
            if not isinstance(msg, Request):
                continue
            try:
                hops = msg.max_forwards
            except SipProtocolError:
                continue  # an earlier edit set it to something that is not a number
            new = msg.decrement_max_forwards()
            if hops is None:
                assert new == 70
                model.append("Max-Forwards", b"70")
            else:
                assert new == max(hops - 1, 0)
                index = model.keys().index("max-forwards")
                name = model.lines[index][1].partition(b":")[0]
                model.lines[index] = ("max-forwards", name + b": %d" % new)
        elif kind == "set_uri":
            if not isinstance(msg, Request):
                continue
            msg.set_uri(op[1])
            method, _, rest = model.first.partition(b" ")
            model.first = method + b" " + op[1] + b" " + rest.rpartition(b" ")[2]
            assert msg.uri == op[1]
        elif kind == "set_body":
            _, body, content_type = op
            msg.set_body(body, content_type)
            model.body = body
            if content_type is not None:
                model.replace("Content-Type", content_type.encode())
            elif not body:
                model.remove("content-type")
        out = msg.to_bytes()
        assert out == model.to_bytes()
        again = parse_message(out)
        assert again.content_length == len(model.body)
        assert again.body == model.body
        assert again.to_bytes() == out


def pop_model(model: Model, msg: Request | Response, key: str) -> None:
    keys = model.keys()
    try:
        before = msg.get_all(key)
    except SipProtocolError:
        before = None
    if key not in keys:
        assert msg.pop_first_value(key) is None
        return
    index = keys.index(key)
    line = model.lines[index][1]
    try:
        popped = msg.pop_first_value(key)
    except SipProtocolError:
        return  # e.g. an edit put an unbalanced value there: nothing changed
    assert popped is not None
    after = msg.get_all(key)
    if before is not None and popped:
        assert before[0] == popped
        assert after == before[1:]
    head, _, rest = line.partition(b":")
    remaining = msg.header_lines()
    if len(remaining) < len(model.lines):
        del model.lines[index]
    else:
        new = remaining[index][1]
        # the line keeps its name and the other values exactly as they were written
        assert new.startswith(head + b": ")
        assert rest.endswith(new[len(head) + 2 :])
        model.lines[index] = (key, new)


# ---------------------------------------------------------------------------------------------
# Mutations: a message or SipProtocolError, never anything else

SPECIAL = [
    b"\r\n",
    b"\r",
    b"\n",
    b"\r\n ",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"=",
    b'"',
    b"\\",
    b"<",
    b">",
    b"[",
    b"]",
    b"@",
    b"%",
    b"*",
    b"/",
    b"\x00",
    b"\x7f",
    b"\xff",
    "²".encode(),
    "٣".encode(),
    b"-1",
    b"4294967296",
    b"256",
    b"SIP/2.0",
    b"v: ",
    b"l: 9\r\n",
    b"Content-Length: 0\r\n",
    b"branch=",
    b"rport=",
    b"ttl=",
    b"q=",
    b"expires=" + b"9" * 5000,
]

mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(
        st.just("insert"),
        st.integers(0, 10**6),
        st.sampled_from(SPECIAL) | st.binary(min_size=1, max_size=4),
    ),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("dup_line"), st.integers(0, 10**6)),
    st.tuples(st.just("drop_line"), st.integers(0, 10**6)),
    st.tuples(st.just("swap_lines"), st.integers(0, 10**6), st.integers(0, 10**6)),
)


def mutate(data: bytes, op: tuple) -> bytes:
    kind = op[0]
    n = max(len(data), 1)
    if kind == "flip":
        i = op[1] % n
        return data[:i] + bytes([op[2]]) + data[i + 1 :]
    if kind == "insert":
        i = op[1] % (len(data) + 1)
        return data[:i] + op[2] + data[i:]
    if kind == "delete":
        i = op[1] % n
        return data[:i] + data[i + op[2] :]
    if kind == "truncate":
        return data[: op[1] % n]
    lines = data.split(b"\r\n")
    i = op[1] % len(lines)
    if kind == "dup_line":
        lines.insert(i, lines[i])
    elif kind == "drop_line":
        del lines[i]
    else:
        j = op[2] % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
    return b"\r\n".join(lines)


@settings(SIP_SETTINGS, max_examples=500)
@given(messages(), st.lists(mutations, min_size=1, max_size=5))
def test_any_mutation_gives_a_message_or_sip_protocol_error(
    case: tuple[bytes, Expected], ops: list[tuple]
) -> None:
    data = case[0]
    for op in ops:
        data = mutate(data, op)
    exercise(data)


@settings(SIP_SETTINGS, max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    exercise(data)
    exercise(b"INVITE sip:a@b SIP/2.0\r\n" + data)
    exercise(b"SIP/2.0 200 OK\r\nVia: " + data + b"\r\n\r\n")


@settings(SIP_SETTINGS, max_examples=200)
@given(
    st.sampled_from(
        [
            "Via",
            "From",
            "To",
            "Contact",
            "Route",
            "CSeq",
            "Call-ID",
            "Max-Forwards",
            "Content-Length",
            "Record-Route",
        ]
    ),
    st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
def test_any_value_of_a_typed_header(name: str, value: str) -> None:
    raw_value = value.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")
    exercise(
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1"
        b"\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
        + name.encode()
        + b": "
        + raw_value
        + b"\r\n\r\n"
    )


def test_fuzz_seeds_and_entry_point() -> None:
    from tests import fuzz_parser

    for seed in fuzz_parser.SEEDS:
        fuzz_parser.TestOneInput(seed)
        assert parse_message(seed).to_bytes() == seed
