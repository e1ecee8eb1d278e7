"""The one error type the SIP core raises for bad input, with the response it calls for."""

from __future__ import annotations


class SipProtocolError(Exception):
    """The peer sent something that is not acceptable SIP.

    ``status`` is the response a server should answer with when it can (400, 413, 431, 483,
    505, 513 ...); ``reason`` is a short human-readable explanation, safe to put in a
    Warning/Reason or a log line (it never echoes unbounded peer input).
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return f"SipProtocolError({self.reason!r}, status={self.status})"
