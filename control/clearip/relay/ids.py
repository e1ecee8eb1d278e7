"""The identifiers this proxy makes and reads back: its Via branches and To tags, and which
worker a message belongs to. One place for the branch format, which three readers share: the
core (a response to our request, a loop), the transaction layer (RFC 3261's magic cookie) and
the worker's byte scan that picks a datagram's owner before anything is parsed.

A branch is `z9hG4bK.cip<worker>.<instance>.<16 hex>`: the worker that owns the transaction,
the proxy instance (all its workers: our own Via in a request is a loop, a twin proxy's is
not), and 64 random bits, so that a response cannot be forged by guessing. Sans-IO: the
randomness is injected.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

from clearip.sip.transaction import MAGIC_COOKIE

OURS = MAGIC_COOKIE + ".cip"
_OUR_BRANCH = re.compile(rb"branch=" + re.escape(OURS.encode()) + rb"(\d+)\.")
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+)", re.IGNORECASE)


class Ids:
    def __init__(self, worker: int, instance: str, random_bytes: Callable[[int], bytes]) -> None:
        self.instance = instance
        self._prefix = f"{OURS}{worker}.{instance}."
        self._random = random_bytes

    def branch(self) -> str:
        return self._prefix + self._random(8).hex()

    def tag(self) -> str:
        return "cip" + self._random(8).hex()

    def is_ours(self, branch: str | None) -> bool:
        """A branch this proxy (any of its workers) made."""
        if branch is None or not branch.startswith(OURS):
            return False
        parts = branch.split(".", 3)
        return len(parts) == 4 and parts[2] == self.instance


def call_hash(call_id: bytes) -> int:
    """The Call-ID's hash, the same in every process (unlike hash()): what picks its worker."""
    return zlib.crc32(call_id.strip())


def owner_of(data: bytes, workers: int) -> int | None:
    """Which worker a datagram belongs to, from a cheap scan (None: can't tell, keep it): a
    response by the worker named in our branch, anything else by its Call-ID."""
    if data.startswith(b"SIP/2.0 "):
        m = _OUR_BRANCH.search(data, 0, 2048)
        if m is not None:
            return int(m.group(1)) % workers
    m = _CALL_ID.search(data)
    if m is None:
        return None
    return call_hash(m.group(1)) % workers
