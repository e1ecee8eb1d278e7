"""The SIP relay: a sans-IO proxy core (call flows of SPEC §3) and its asyncio adapters."""
