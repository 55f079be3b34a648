"""Shared configuration for the sans-I/O core tests."""

import pytest

# Plain ``assert`` in the helper module reports values like in a test module.
pytest.register_assert_rewrite("tests.core._helpers")
