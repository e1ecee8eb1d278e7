"""Next hops named by host: resolved off the hot path, cached briefly and in bounded number.

A 302 may name its Contacts by host (`sip:x@gw.provider.net`). The worker resolves such a name
once, sends to the address it got (which is also what gets pinholed and what its answers must
come from), and keeps the answer for `TTL` seconds: a provider that moves its service address
is followed within a minute, and a redirect naming ever new hosts cannot grow the cache past
`MAX_NAMES` (the oldest entries go first).
"""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict

TTL = 60.0
MAX_NAMES = 4096


class Resolver:
    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def cached(self, name: str) -> str | None:
        """The address of `name` if resolved within TTL, else None (resolve() it)."""
        hit = self._cache.get(name)
        if hit is None:
            return None
        if hit[1] <= asyncio.get_running_loop().time():
            del self._cache[name]
            return None
        return hit[0]

    async def resolve(self, name: str, port: int, kind: int = socket.SOCK_DGRAM) -> str:
        """The first address of `name` (OSError when it does not resolve), cached."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(name, port, type=kind)
        address = str(infos[0][4][0])
        self._cache[name] = (address, loop.time() + TTL)
        self._cache.move_to_end(name)
        while len(self._cache) > MAX_NAMES:
            self._cache.popitem(last=False)
        return address
