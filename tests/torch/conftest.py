"""Shared by the torch suites: Opacus warns on every PrivacyEngine (secure RNG
off: fine for benchmarking) and torch warns that full backward hooks fire
though the input needs no grad; both are expected here."""
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE not in Path(item.fspath).parents:
            continue
        item.add_marker(pytest.mark.filterwarnings("ignore:Secure RNG turned off"))
        item.add_marker(pytest.mark.filterwarnings("ignore:Full backward hook is firing"))
