"""Shared pytest fixtures."""

from tests.netlab import netlab, netlab_factory  # noqa: F401  (pytest fixtures)
