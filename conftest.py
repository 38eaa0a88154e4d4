"""Test-wide fixtures: every test and doctest starts with an empty Pyro param store."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def _fresh_param_store():
    pyro.clear_param_store()
    yield
