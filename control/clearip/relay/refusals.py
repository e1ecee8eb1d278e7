"""INVITEs refused without a transaction, remembered so their retransmissions and ACKs match.

A refusal that costs no state (503 Overloaded, 503 at the transaction limit, 482, 483) is what
keeps an overloaded relay cheap, but over UDP the switch may retransmit the INVITE before the
503 reaches it. Judged again, that copy could be admitted once the relay caught up: a call the
switch already ended (and route-advanced) would ring at a provider. So a refused INVITE's key is
kept for Timer B (64*T1): its retransmissions get the same answer with the same To tag, and the
ACK of the refusal is absorbed here instead of being taken for a 2xx ACK and forwarded.

Sans-IO; bounded (the oldest refusal goes first), insertion order is expiry order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TTL = 32.0  # Timer B: how long a switch retransmits an unanswered INVITE
LIMIT = 65536


@dataclass(frozen=True, slots=True)
class Refusal:
    expires: float
    to_tag: str
    status: int
    reason: str
    headers: Sequence[tuple[str, bytes | str]]


class Refusals:
    def __init__(self, ttl: float = TTL, limit: int = LIMIT) -> None:
        self.ttl = ttl
        self.limit = limit
        self._by_key: dict[Any, Refusal] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def remember(
        self,
        key: Any,
        now: float,
        to_tag: str,
        status: int,
        reason: str,
        headers: Sequence[tuple[str, bytes | str]],
    ) -> None:
        table = self._by_key
        self._expire(now)
        if len(table) >= self.limit:
            del table[next(iter(table))]
        table.pop(key, None)  # re-inserted last: insertion order stays expiry order
        table[key] = Refusal(now + self.ttl, to_tag, status, reason, headers)

    def get(self, key: Any, now: float) -> Refusal | None:
        refusal = self._by_key.get(key)
        if refusal is None:
            return None
        if refusal.expires <= now:
            self._expire(now)
            return None
        return refusal

    def _expire(self, now: float) -> None:
        table = self._by_key
        for key, refusal in list(_head(table, 64)):  # a few per call: the cost stays flat
            if refusal.expires > now:
                return
            del table[key]


def _head(table: dict[Any, Refusal], n: int) -> list[tuple[Any, Refusal]]:
    out = []
    for item in table.items():
        out.append(item)
        if len(out) >= n:
            break
    return out
