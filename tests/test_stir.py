"""STIR/SHAKEN PASSporTs (RFC 8225/8588/8224): exact wire form, round trip, hostile input."""

from __future__ import annotations

import base64
import contextlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clearip.stir import (
    attest_level,
    canonical_tn,
    generate_key,
    identity_header,
    load_key,
    parse_identity,
    save_key,
    sign_passport,
    verify_passport,
)

X5U = "https://cr.example.org/cert.pem"
ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "anchor" / "uas_clearip_302.xml"
# Same value as in the anchor's 302, so the test still runs where shared/ is not laid beside main.
ANCHOR_IDENTITY = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jci5leGFt"
    "cGxlLm9yZy9jZXJ0LnBlbSJ9.eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjAyNTU1MDEyMyJdLCJ1cmkiOlsi"
    "c2lwOisxMjAyNTU1MDEyM0BzYmMuY2Fycmllci1iLmV4YW1wbGUubmV0Il19LCJpYXQiOjE3MzI3ODA4MDAsIm9yaWci"
    "OnsidG4iOiIxMzAzNTU1MDE5OSJ9LCJvcmlnaWQiOiI0NDM3YzdlYi04ZjdhLTRmMGUtYTg2My1mNTNhMGU2MDI1MWEi"
    "fQ.rAzr16LXDK38gMTDoty1ia_JcoSJ3IOtbtodzC7tTqHyJBpuOE73LgrkuEzX23qPUCHdEN7LlealGy9z7h5vhA"
    ";info=<https://cr.example.org/cert.pem>;alg=ES256;ppt=shaken"
)
ORIGID = "4437c7eb-8f7a-4f0e-a863-f53a0e60251a"


def b64json(part: str) -> object:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_sign_produces_canonical_header_and_claims() -> None:
    key = generate_key()
    jws = sign_passport(
        key,
        attest="A",
        orig_tn="13035550199",
        dest_tns=["12025550123"],
        x5u=X5U,
        iat=1732780800,
        origid=ORIGID,
    )
    h64, p64, s64 = jws.split(".")
    assert "=" not in jws
    # RFC 8225 §9: sorted keys, no whitespace; so the header is byte-for-byte the anchor's.
    assert h64 == ANCHOR_IDENTITY.split(".")[0]
    assert base64.urlsafe_b64decode(p64 + "=" * (-len(p64) % 4)) == (
        b'{"attest":"A","dest":{"tn":["12025550123"]},"iat":1732780800,'
        b'"orig":{"tn":"13035550199"},"origid":"' + ORIGID.encode() + b'"}'
    )
    assert len(base64.urlsafe_b64decode(s64 + "=" * (-len(s64) % 4))) == 64  # raw r||s


def test_round_trip_verifies() -> None:
    key = generate_key()
    jws = sign_passport(key, attest="B", orig_tn="13035550199", dest_tns=["1202", "1303"], x5u=X5U)
    value = identity_header(jws, X5U)
    assert value == f"{jws};info=<{X5U}>;alg=ES256;ppt=shaken"
    p = parse_identity(value)
    assert (p.attest, p.orig_tn, p.dest_tns) == ("B", "13035550199", ["1202", "1303"])
    assert (p.info, p.alg, p.ppt) == (X5U, "ES256", "shaken")
    assert p.header == {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U}
    assert isinstance(p.iat, int)
    assert p.origid is not None and re.fullmatch(r"[0-9a-f-]{36}", p.origid)
    assert verify_passport(p, key.public_key())
    assert not verify_passport(p, generate_key().public_key())


def test_tampering_fails_verification() -> None:
    key = generate_key()
    jws = sign_passport(key, attest="A", orig_tn="1303", dest_tns=["1202"], x5u=X5U)
    h64, p64, s64 = jws.split(".")
    sig = bytearray(base64.urlsafe_b64decode(s64 + "=="))
    sig[10] ^= 1
    bad_sig = f"{h64}.{p64}.{base64.urlsafe_b64encode(bytes(sig)).decode().rstrip('=')}"
    assert not verify_passport(parse_identity(bad_sig), key.public_key())
    forged = sign_passport(key, attest="C", orig_tn="1303", dest_tns=["1202"], x5u=X5U)
    # a payload from another PASSporT under this one's signature
    swapped = f"{h64}.{forged.split('.')[1]}.{s64}"
    assert not verify_passport(parse_identity(swapped), key.public_key())
    short = f"{h64}.{p64}.{s64[:20]}"
    assert not verify_passport(parse_identity(short), key.public_key())


def test_padding_tolerated() -> None:
    key = generate_key()
    jws = sign_passport(key, attest="A", orig_tn="1", dest_tns=["2"], x5u=X5U)
    padded = ".".join(p + "=" * (-len(p) % 4) for p in jws.split("."))
    assert verify_passport(parse_identity(padded), key.public_key())


def test_anchor_identity() -> None:
    if ANCHOR.exists():
        match = re.search(r"^\s*Identity: (\S+)\s*$", ANCHOR.read_text("latin-1"), re.M)
        assert match is not None
        assert match.group(1) == ANCHOR_IDENTITY
    p = parse_identity(ANCHOR_IDENTITY.encode())
    assert p.attest == "A"
    assert p.orig_tn == "13035550199"
    assert p.dest_tns == ["12025550123"]
    assert p.iat == 1732780800
    assert p.origid == ORIGID
    assert p.info == X5U
    assert p.claims["dest"]["uri"] == ["sip:+12025550123@sbc.carrier-b.example.net"]
    # the anchor's signature is made up: it must not verify with an unrelated key
    assert not verify_passport(p, generate_key().public_key())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "compact JWS"),
        ("abc", "compact JWS"),
        ("a.b", "compact JWS"),
        ("a..c", "compact-form"),
        ("!!.e30.AA", "base64url"),
        ("e30.e30.A", "impossible base64url length"),
        ("W10.e30.AA", "not a JSON object"),  # header is []
        ("e30.eyJ.AA", "not valid JSON"),
        ("e30._w.AA", "not UTF-8"),
        ("e30.eyJpYXQiOnRydWV9.AA", "iat"),  # {"iat":true}
        ("e30.eyJkZXN0Ijp7InRuIjpbMV19fQ.AA", "dest.tn"),  # {"dest":{"tn":[1]}}
        ("e30.e30.AA;info=<https://x", "unterminated"),
        ("e30.e30.AA;alg=ES256;alg=ES256", "repeated"),
        ("e30.e30.AA;;x", "empty Identity parameter"),
        ("e30.e30.AA junk", "base64url"),
        ("e30.e30.AA;info=<u> junk", "unexpected text"),
        ("x" * 20000, "longer than"),
    ],
)
def test_malformed(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_identity(value)


def test_non_utf8_bytes() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        parse_identity(b"\xff.e30.AA")


def test_deeply_nested_json_is_a_value_error() -> None:
    deep = base64.urlsafe_b64encode(b"[" * 10000).decode().rstrip("=")
    with pytest.raises(ValueError, match="JSON"):
        parse_identity(f"e30.{deep}.AA")


@given(st.text(max_size=300))
@example("e30.e30.AA")
@example("e30.e30.AA;info=<;>;alg")
@example("e30.eyJvcmlnIjp7InRuIjpudWxsfX0.AA")
def test_parse_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_identity(text)


@given(st.lists(st.text(alphabet="eyJ0ABC-_=.;<>ab", max_size=40), max_size=4).map(".".join))
def test_parse_jws_shaped_text_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_identity(text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
CLAIM_KEYS = st.sampled_from(["attest", "orig", "dest", "tn", "iat", "origid", "alg"])


@given(
    st.dictionaries(CLAIM_KEYS, JSON | st.dictionaries(CLAIM_KEYS, JSON, max_size=2), max_size=5),
    st.binary(max_size=70),
)
def test_parse_any_json_claims_raises_only_value_error(claims: dict, sig: bytes) -> None:
    def enc(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    value = f"{enc(json.dumps(claims).encode())}.{enc(json.dumps(claims).encode())}.{enc(sig)}"
    try:
        p = parse_identity(value)
    except ValueError:
        return
    assert verify_passport(p, KEY.public_key()) is False


KEY = generate_key()


def test_sign_rejects_bad_attest_and_key() -> None:
    with pytest.raises(ValueError, match="attest"):
        sign_passport(generate_key(), attest="D", orig_tn="1", dest_tns=["2"], x5u=X5U)
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        sign_passport(p384, attest="A", orig_tn="1", dest_tns=["2"], x5u=X5U)


def test_key_save_load(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "signing.pem"
    save_key(key, path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_key(path)
    jws = sign_passport(loaded, attest="A", orig_tn="1", dest_tns=["2"], x5u=X5U)
    assert verify_passport(parse_identity(jws), key.public_key())


def test_canonical_tn() -> None:
    assert canonical_tn("+1 (202) 555-0123") == "12025550123"
    assert canonical_tn("") == ""


def test_attest_level_reads_only_the_claim() -> None:
    key = generate_key()
    for level in ("A", "B", "C"):
        jws = sign_passport(key, attest=level, orig_tn="1303", dest_tns=["1202"], x5u="https://x")
        assert attest_level(identity_header(jws, "https://x")) == level
    assert attest_level("not a passport") is None
    assert attest_level(b"a.!!!.b;info=<x>") is None
