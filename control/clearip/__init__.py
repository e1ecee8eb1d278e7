"""ClearIP In-Line Proxy: a secure SIP relay in front of the ClearIP service."""

__version__ = "0.1.0"
