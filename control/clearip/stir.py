"""STIR/SHAKEN PASSporTs: sign, parse and verify the JWS carried in an Identity header.

RFC 8225 (PASSporT), RFC 8588 (the "shaken" extension: attest, origid) and RFC 8224 (the SIP
Identity header). Only ES256 exists in SHAKEN: ECDSA on P-256 with SHA-256, the JWS signature
being the raw big-endian r||s (64 bytes, RFC 7518 §3.4), not the DER that `cryptography` uses.

The proxy only decodes (for the attestation counters of SPEC §6); signing and verification are
here for the ClearIP emulator and the tests. `parse_identity` raises ValueError and nothing else
for any input, since the header comes from the network.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import string
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from clearip.sip.limits import MAX_LINE_BYTES

__all__ = [
    "ALG",
    "PPT",
    "Passport",
    "canonical_tn",
    "generate_key",
    "identity_header",
    "load_key",
    "parse_identity",
    "save_key",
    "sign_passport",
    "verify_passport",
]

ALG = "ES256"
PPT = "shaken"
ATTESTATIONS = frozenset("ABC")  # RFC 8588 §4: full, partial, gateway
_COORD_BYTES = 32  # P-256 coordinate size: r and s are 32 bytes each in the JWS signature
_B64URL = frozenset(string.ascii_letters + string.digits + "-_")


@dataclass(frozen=True, slots=True)
class Passport:
    """A decoded (not verified) PASSporT and the Identity header parameters around it."""

    header: dict[str, Any]  # JOSE header: alg, ppt, typ, x5u
    claims: dict[str, Any]  # payload as sent
    attest: str | None
    orig_tn: str | None
    dest_tns: list[str]
    iat: int | None
    origid: str | None
    info: str | None  # Identity ;info= (the certificate URL), without its <>
    alg: str | None  # Identity ;alg=
    ppt: str | None  # Identity ;ppt=
    signing_input: bytes  # ASCII "header.payload" exactly as received
    signature: bytes  # raw JWS signature bytes (r||s for ES256)


# --- signing ---------------------------------------------------------------------------------


def canonical_tn(number: str) -> str:
    """RFC 8224 §8.3 canonical telephone number: digits only ("+1 (202) 555-0123" ->
    "12025550123")."""
    return "".join(c for c in number if c in string.digits)


def _json(obj: dict[str, Any]) -> bytes:
    # RFC 8225 §9: keys in lexicographic order, no whitespace, UTF-8.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_passport(
    key: ec.EllipticCurvePrivateKey,
    *,
    attest: str,
    orig_tn: str,
    dest_tns: list[str],
    x5u: str,
    iat: int | None = None,
    origid: str | None = None,
) -> str:
    """A SHAKEN PASSporT in compact JWS form ("header.payload.signature")."""
    if attest not in ATTESTATIONS:
        raise ValueError(f"attest must be A, B or C, not {attest!r}")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("ES256 needs an EC P-256 private key")
    header = {"alg": ALG, "ppt": PPT, "typ": "passport", "x5u": x5u}
    claims = {
        "attest": attest,
        "dest": {"tn": list(dest_tns)},
        "iat": int(time.time()) if iat is None else iat,
        "orig": {"tn": orig_tn},
        "origid": str(uuid.uuid4()) if origid is None else origid,
    }
    signing_input = f"{_b64encode(_json(header))}.{_b64encode(_json(claims))}"
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(_COORD_BYTES, "big") + s.to_bytes(_COORD_BYTES, "big")
    return f"{signing_input}.{_b64encode(raw)}"


def identity_header(jws: str, x5u: str) -> str:
    """The Identity header value of RFC 8224 §4.1 for a SHAKEN PASSporT."""
    return f"{jws};info=<{x5u}>;alg={ALG};ppt={PPT}"


# --- decoding --------------------------------------------------------------------------------


def _b64decode(part: str, what: str) -> bytes:
    """base64url with or without "=" padding (senders differ); anything else is refused."""
    body = part.rstrip("=")
    if len(part) - len(body) > 2 or not _B64URL.issuperset(body):
        raise ValueError(f"PASSporT {what} is not base64url")
    if len(body) % 4 == 1:
        raise ValueError(f"PASSporT {what} has an impossible base64url length")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error:  # unreachable after the checks above; kept as a guard
        raise ValueError(f"PASSporT {what} is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"PASSporT {what} is not UTF-8") from None
    except (ValueError, RecursionError):
        raise ValueError(f"PASSporT {what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ValueError(f"PASSporT {what} is not a JSON object")
    return obj


def _identity_params(text: str) -> dict[str, str]:
    """`;name=value` parameters after the JWS; a value in <> may hold ";" (the info URI)."""
    params: dict[str, str] = {}
    pos, n = 0, len(text)
    while pos < n:
        if text[pos] != ";":
            raise ValueError("unexpected text after the PASSporT in Identity")
        end = pos + 1
        while end < n and text[end] not in "=;":
            end += 1
        name = text[pos + 1 : end].strip(" \t").lower()
        if not name:
            raise ValueError("empty Identity parameter")
        if name in params:
            raise ValueError(f"repeated Identity parameter {name!r}")
        value = ""
        pos = end
        if pos < n and text[pos] == "=":
            pos += 1
            while pos < n and text[pos] in " \t":
                pos += 1
            if pos < n and text[pos] == "<":
                gt = text.find(">", pos)
                if gt < 0:
                    raise ValueError("unterminated <URI> in Identity parameter")
                value = text[pos + 1 : gt]
                pos = gt + 1
                while pos < n and text[pos] in " \t":
                    pos += 1
            else:
                end = text.find(";", pos)
                end = n if end < 0 else end
                value = text[pos:end].strip(" \t")
                pos = end
        params[name] = value
    return params


def _optional(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    # bool is an int subclass: "iat": true is not a time.
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ValueError(f"PASSporT {what} has the wrong type")
    return value


def parse_identity(value: str | bytes) -> Passport:
    """Decode an Identity header value (full-form PASSporT plus parameters), without verifying.

    Raises ValueError with the reason for anything malformed.
    """
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("Identity header is not UTF-8") from None
    elif not isinstance(value, str):
        raise ValueError(f"Identity header must be str or bytes, not {type(value).__name__}")
    if len(value) > MAX_LINE_BYTES:
        raise ValueError(f"Identity header longer than {MAX_LINE_BYTES} characters")
    value = value.strip(" \t")
    jws, semi, rest = value.partition(";")
    jws = jws.strip(" \t")
    params = _identity_params(semi + rest)
    parts = jws.split(".")
    if len(parts) != 3:
        raise ValueError("PASSporT is not a compact JWS (header.payload.signature)")
    h64, p64, s64 = parts
    if not h64 or not s64:
        raise ValueError("PASSporT has an empty header or signature")
    if not p64:
        raise ValueError("compact-form PASSporT (no payload) cannot be decoded on its own")
    header = _json_object(_b64decode(h64, "header"), "header")
    claims = _json_object(_b64decode(p64, "payload"), "payload")
    signature = _b64decode(s64, "signature")

    attest = _optional(claims, "attest", str, "attest")
    orig = _optional(claims, "orig", dict, "orig") or {}
    dest = _optional(claims, "dest", dict, "dest") or {}
    orig_tn = _optional(orig, "tn", str, "orig.tn")
    dest_tns = _optional(dest, "tn", list, "dest.tn") or []
    if not all(isinstance(tn, str) for tn in dest_tns):
        raise ValueError("PASSporT dest.tn holds a non-string")
    return Passport(
        header=header,
        claims=claims,
        attest=attest,
        orig_tn=orig_tn,
        dest_tns=list(dest_tns),
        iat=_optional(claims, "iat", int, "iat"),
        origid=_optional(claims, "origid", str, "origid"),
        info=params.get("info"),
        alg=params.get("alg"),
        ppt=params.get("ppt"),
        signing_input=f"{h64}.{p64}".encode("ascii"),
        signature=signature,
    )


def verify_passport(passport: Passport, public_key: ec.EllipticCurvePublicKey) -> bool:
    """True when the JOSE header says ES256 and the signature is valid for `public_key`.

    Only the signature is checked: not the certificate behind x5u, nor the freshness of iat.
    """
    if passport.header.get("alg") != ALG or len(passport.signature) != 2 * _COORD_BYTES:
        return False
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise TypeError("verify_passport() needs an EC public key")
    r = int.from_bytes(passport.signature[:_COORD_BYTES], "big")
    s = int.from_bytes(passport.signature[_COORD_BYTES:], "big")
    try:
        public_key.verify(
            encode_dss_signature(r, s), passport.signing_input, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        return False
    return True


# --- keys ------------------------------------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def load_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM private key that must be EC P-256."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: not an EC P-256 private key")
    return key


def save_key(key: ec.EllipticCurvePrivateKey, path: str | os.PathLike[str]) -> None:
    """Write `key` as unencrypted PKCS#8 PEM, readable by the owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


_ATTEST = re.compile(rb'"attest"\s*:\s*"([A-Za-z])"')


def attest_level(value: str | bytes) -> str | None:
    """Just the `attest` claim of an Identity header's PASSporT ("A", "B", "C"), or None.

    The relay counts the attestation mix for every call (SPEC §6): this decodes only the
    payload and looks for the one claim, several times cheaper than parse_identity().
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    jws = value.partition(b";")[0].strip(b" \t")
    parts = jws.split(b".")
    if len(parts) != 3 or not parts[1] or len(parts[1]) > MAX_LINE_BYTES:
        return None
    payload = parts[1]
    try:
        claims = base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
    except (ValueError, binascii.Error):
        return None
    m = _ATTEST.search(claims)
    return m.group(1).decode().upper() if m else None
