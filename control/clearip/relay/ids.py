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


# Random bytes are drawn this many at a time: os.urandom is a syscall (getrandom), and a call
# makes several branches and tags.
_POOL = 4096


class Ids:
    def __init__(self, worker: int, instance: str, random_bytes: Callable[[int], bytes]) -> None:
        self.instance = instance
        self._prefix = f"{OURS}{worker}.{instance}."
        self._random = random_bytes
        self._pool = b""
        self._used = 0

    def _hex8(self) -> str:
        """8 fresh random bytes as hex, from the pool (each byte is used once)."""
        used = self._used
        if used + 8 > len(self._pool):
            self._pool = self._random(_POOL)
            used = 0
        self._used = used + 8
        return self._pool[used : used + 8].hex()

    def branch(self) -> str:
        return self._prefix + self._hex8()

    def tag(self) -> str:
        return "cip" + self._hex8()

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
