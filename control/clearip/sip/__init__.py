"""Sans-IO SIP core: messages, URIs, stream framing. Bytes in, bytes out; no sockets, no clock."""
