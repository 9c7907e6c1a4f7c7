"""Fixtures shared by every test under tests/ (defined in nodetest.py, which
tests import by name: `conftest` itself is not importable unambiguously
once subfolders have their own)."""

from nodetest import node, node_factory, rg1_copies  # noqa: F401
