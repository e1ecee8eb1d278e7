"""Named limits on what the parser accepts, and where each comes from.

RFC 3261 sets few hard numbers; these are the bounds a carrier-facing proxy enforces so that
hostile input costs bounded memory and time. The config's `[limits]` section may lower or raise
the message size and header count; the rest are fixed.
"""

# RFC 3261 §18.1.1 / §18.3: a UDP datagram cannot exceed 65,535 bytes; we apply the same bound to
# a message framed from a stream (TCP/TLS) so one peer cannot make us buffer without limit.
MAX_MESSAGE_BYTES = 65535

# No RFC bound; 256 headers is far beyond any real INVITE (typically 10-25) and caps the work a
# single message can cause. Exceeding it answers 431-like 400 (SIP has no 431; RFC 3261 §21.4.1).
MAX_HEADERS = 256

# Header line length (after unfolding). RFC 3261 §7.3.1 allows any length; 16 KiB admits a
# STIR/SHAKEN Identity header (RFC 8224, typically 500-900 bytes) many times over.
MAX_LINE_BYTES = 16384

# Request-URI / status line: RFC 3261 §25.1 Request-Line. 414 Request-URI Too Long (§21.4.12).
MAX_START_LINE_BYTES = 8192

# RFC 5626 §4.4.1: keepalive pings are CRLFCRLF; a stream peer sending only CRLFs forever must
# not keep us busy, so bound how many bare CRLFs are skipped before a message starts.
MAX_LEADING_CRLF = 1024

# Max-Forwards: RFC 3261 §8.1.1.6 recommends 70; §16.3 step 2 rejects 0 with 483.
DEFAULT_MAX_FORWARDS = 70
