"""ClearIP In-Line Proxy: a secure SIP relay in front of the ClearIP service."""

# First: decides, before any hot-path module is imported, whether the compiled build runs.
from clearip import build as build

__version__ = "0.1.0"
