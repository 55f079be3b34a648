"""Interop tests: trillium against real peers, each in its own process."""

import pytest

# The peer scripts are programs run in subprocesses, not test modules: keep
# pytest (and --doctest-modules) from importing them.
collect_ignore_glob = ["peers/*", "node/*", "browser/*"]

pytest.register_assert_rewrite("tests.interop._helpers")
